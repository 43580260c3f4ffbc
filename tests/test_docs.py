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
