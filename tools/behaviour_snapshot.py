"""What faceattr does, as one JSON file: to check that a restructure changed no behaviour.

    python tools/behaviour_snapshot.py OUT.json [--work DIR]
    python tools/behaviour_snapshot.py --compare BEFORE.json AFTER.json

Runs the commands a user runs on a small synthetic CelebA set (made by `data fetch
synthetic`, seeded): train (and the same run interrupted after its first epoch, then resumed),
finetune, eval, predict (the default model and a trained one, detected and not), export,
ensemble, index, search (query and --like), tune, data prepare/stats, and the Python API. It
records, for each, the key structure of its ``--json`` output (or return value) and every
value that does not depend on time or the machine: histories, metrics, probabilities, weight
digests. ``--compare`` prints what differs: keys must be equal, values too. Run the old code
and the new one with the same ``--work`` folder (paths are then equal too), e.g.
``PYTHONPATH=OLD/src python tools/behaviour_snapshot.py before.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

# Values that depend on the machine or the clock; their keys are compared, not their values.
VOLATILE = {"seconds", "images_per_second", "created", "time", "started", "finished",
            "elapsed", "exported_at", "onnx_seconds", "torch_seconds", "speedup",
            "datetime_start", "datetime_complete", "mtime_ns", "faceattr_version",
            "bytes", "size_bytes"}  # fmt: skip
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def shape(value: Any) -> Any:
    """The key structure of a JSON value: dicts by key, lists by their first element."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__ if value is not None else "null"


def stable(value: Any) -> Any:
    """``value`` without its volatile entries, floats rounded to 6 significant digits."""
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE else stable(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [stable(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def cli(*args: Any) -> Any:
    """Run ``faceattr ARGS --json`` in this process; its parsed stdout."""
    from typer.testing import CliRunner

    from faceattr.cli.app import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    if r.exit_code != 0:
        raise SystemExit(f"faceattr {' '.join(map(str, args))} failed ({r.exit_code}):\n{r.output}")
    return json.loads(r.stdout)


def history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(fh)]


def weights_digest(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return (f.metadata() or {}).get("faceattr_sha256", "?")


def train_interrupted_then_resumed(cfg: Any) -> None:
    """fit() stopped by Ctrl-C after epoch 1, then continued (old and new resume API)."""
    from faceattr.engine import fit as fit_module
    from faceattr.progress import EpochEnd, Progress

    class StopAfterFirst(Progress):
        def epoch_end(self, event: EpochEnd) -> None:
            if event.epoch == 1:
                raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        fit_module.fit(cfg, progress=StopAfterFirst())
    if hasattr(fit_module, "resume"):
        fit_module.resume(cfg.out)
    else:  # the code before RunDir
        from faceattr.config import TrainConfig

        fit_module.fit(TrainConfig(out=cfg.out), resume=True)


def snapshot(work: Path) -> dict[str, Any]:
    import faceattr
    from faceattr.config import build_config

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, runs = work / "synthetic", work / "runs"
    record: dict[str, Any] = {}

    def keep(name: str, value: Any) -> Any:
        record[name] = {"keys": shape(value), "values": stable(value)}
        return value

    keep("data fetch", cli("data", "fetch", "synthetic", "--root", data, "--n-train", "240",
                           "--n-valid", "60", "--n-test", "60", "--json"))  # fmt: skip
    train = ["--root", data, "--arch", "celebnet", "--img-size", "32", "--epochs", "3",
             "--workers", "0", "--batch-size", "32", "--seed", "3"]  # fmt: skip
    keep("train", cli("train", *train, "--out", runs / "a", "--json"))
    record["train history"] = history(runs / "a")
    record["train weights"] = weights_digest(runs / "a" / "model.safetensors")

    cfg = build_config({"data.root": str(data), "model.arch": "celebnet", "data.img_size": 32,
                        "epochs": 3, "data.workers": 0, "batch_size": 32, "seed": 3,
                        "out": str(runs / "b")})  # fmt: skip
    train_interrupted_then_resumed(cfg)
    record["resumed history"] = history(runs / "b")
    record["resumed weights"] = weights_digest(runs / "b" / "model.safetensors")

    keep("finetune", cli("finetune", runs / "a", "--epochs", "1", "--workers", "0",
                         "--out", runs / "ft", "--json"))  # fmt: skip
    record["finetune history"] = history(runs / "ft")
    keep("eval", cli("eval", runs / "a", "--root", data, "--split", "valid", "--workers", "0",
                     "--json"))  # fmt: skip
    keep("eval test onnx-less", cli("eval", runs / "ft", "--root", data, "--split", "test",
                                    "--json"))  # fmt: skip
    images = sorted((data / "img_align_celeba").glob("*.jpg"))[:6]
    keep("predict run", cli("predict", *images, "--model", runs / "a", "--no-detect", "--json"))
    keep("predict default", cli("predict", EXAMPLES / "astronaut.jpg",
                                EXAMPLES / "two-portraits.jpg", "--json"))  # fmt: skip
    keep("export", cli("export", runs / "a", "--out", work / "a.onnx", "--json"))
    keep("predict onnx", cli("predict", *images, "--model", work / "a.onnx", "--no-detect",
                             "--json"))  # fmt: skip
    keep("ensemble", cli("ensemble", runs / "a", runs / "ft", "--out", work / "e.safetensors",
                         "--root", data, "--workers", "0", "--json"))  # fmt: skip
    keep("index", cli("index", EXAMPLES, "--db", work / "lib.db", "--json"))
    keep("search", cli("search", "Smiling or Eyeglasses", "--db", work / "lib.db", "--json"))
    keep("search like", cli("search", "--like", EXAMPLES / "astronaut.jpg", "--db",
                            work / "lib.db", "--json"))  # fmt: skip
    keep("tune", cli("tune", *train[:-4], "--epochs", "1", "--sample", "64", "--param",
                     "lr=0.001,0.003", "--sampler", "grid", "--study-dir", work / "study",
                     "--json"))  # fmt: skip
    keep("data prepare", cli("data", "prepare", "celeba", "--root", data, "--img-size", "32",
                             "--json"))  # fmt: skip
    keep("data stats", cli("data", "stats", "celeba", "--root", data, "--json"))

    keep("api predict", faceattr.predict(str(EXAMPLES / "astronaut.jpg")))
    keep("api index", faceattr.index([str(EXAMPLES)], db=str(work / "api.db")))
    keep("api search", faceattr.search("Smiling", db=str(work / "api.db")))
    return record


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    problems = []
    for name in sorted(set(before) | set(after)):
        if name not in before or name not in after:
            problems.append(f"{name}: only in {'after' if name in after else 'before'}")
            continue
        a, b = before[name], after[name]
        if isinstance(a, dict) and "keys" in a:
            if a["keys"] != b["keys"]:
                problems.append(f"{name}: keys differ\n  before {a['keys']}\n  after  {b['keys']}")
            elif a["values"] != b["values"]:
                problems.append(f"{name}: values differ")
        elif a != b:
            problems.append(f"{name}: differs\n  before {a}\n  after  {b}")
    return problems


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--work", type=Path, default=Path("/tmp/faceattr-snapshot"))
    p.add_argument("--compare", action="store_true", help="compare two snapshots")
    args = p.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(f).read_text()) for f in args.files)
        problems = compare(before, after)
        print("\n".join(problems) or f"Same behaviour: {len(before)} items compared.")
        sys.exit(1 if problems else 0)
    with contextlib.redirect_stderr(io.StringIO()):
        record = snapshot(args.work)
    Path(args.files[0]).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"Wrote {args.files[0]} ({len(record)} items).")


if __name__ == "__main__":
    main()
