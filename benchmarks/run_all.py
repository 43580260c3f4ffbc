"""Run every ``benchmarks/bench_*.py`` in turn (with ``--quick`` where a benchmark has it).

    python benchmarks/run_all.py [--full]

Each benchmark runs in its own process with this Python; the exit status is 1 when any of
them failed. ``--full`` runs them without ``--quick`` (minutes, not seconds).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="run without --quick")
    args = p.parse_args(argv)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        cmd = [sys.executable, str(script)]
        # Only pass --quick to benchmarks that define it (argparse rejects unknown flags).
        if not args.full and "--quick" in script.read_text(encoding="utf-8"):
            cmd.append("--quick")
        print(f"\n=== {script.name} {' '.join(cmd[2:])}".rstrip(), flush=True)
        start = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {script.name}: exit {rc} in {time.perf_counter() - start:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if failed:
        print(f"\nFailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
