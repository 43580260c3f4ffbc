"""Documentation that is generated from the code stays in step with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_commands_doc_matches_the_cli_help():
    """docs/commands.md is the CLI's --help rendered: after changing an option, run
    tools/gen_cli_docs.sh."""
    result = subprocess.run(
        ["bash", str(ROOT / "tools" / "gen_cli_docs.sh"), "--check"],
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_ci_runs_the_readme_test_command_in_its_own_venv():
    """The README's two commands use two venvs (the test install would otherwise upgrade the
    light one), and .ci/run runs the test command as the README writes it."""
    import re

    readme = (ROOT / "README.md").read_text()
    commands = [b.strip() for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
                if b.startswith("python3 -m venv ")]  # fmt: skip
    assert len(commands) == 2
    venvs = [c.split()[3] for c in commands]
    assert len(set(venvs)) == 2, venvs
    [tests] = [c for c in commands if "pytest" in c]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    steps = [s.strip() for s in tests.split("&&")]
    venv = steps[0].split()[3]
    assert f'"$PY" -m venv {venv}' in ci
    assert steps[1].replace(" install ", " install -q ") in ci and steps[2] in ci
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert all(f"{v}/" in ignored for v in venvs)
