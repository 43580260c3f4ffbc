"""predict's pipeline (worker threads ahead of the model), the light default path, malloc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faceattr.utils import ordered_map

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_ordered_map_keeps_order_and_runs_in_threads():
    seen: set[str] = set()

    def slow(i: int) -> int:
        seen.add(threading.current_thread().name)
        time.sleep(0.002 * (i % 3))  # finish out of order
        return i * i

    assert list(ordered_map(slow, range(40), workers=3, ahead=8)) == [i * i for i in range(40)]
    assert len(seen) > 1 and all(n.startswith("faceattr-prepare") for n in seen)
    assert list(ordered_map(slow, range(5), workers=0, ahead=1)) == [0, 1, 4, 9, 16]


def test_ordered_map_stops_early_and_raises_in_order():
    def fail_at_5(i: int) -> int:
        if i == 5:
            raise ValueError("five")
        return i

    got = []
    with pytest.raises(ValueError, match="five"):
        for v in ordered_map(fail_at_5, range(100), workers=2, ahead=4):
            got.append(v)
    assert got == [0, 1, 2, 3, 4]


def test_workers_do_not_change_results(trained_run, synthetic_root, tmp_path):
    """Threads or none, the same results in the same order, errors in their place."""
    from faceattr.inference.detect import available_detectors, create_detector
    from faceattr.inference.predictor import Predictor, iter_predictions

    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    images = sorted((synthetic_root / "img_align_celeba").glob("*.jpg"))[:30]
    sources = [*images[:10], tmp_path / "broken.jpg", *images[10:]]
    predictor = Predictor(trained_run, batch_size=8)
    plain = list(iter_predictions(sources, predictor, workers=0))
    threaded = list(iter_predictions(sources, predictor, workers=3))
    assert plain == threaded
    assert [r.image for r in plain] == [str(s) for s in sources]
    assert plain[10].error and not plain[11].error
    if available_detectors():
        photos = [EXAMPLES / "astronaut.jpg", EXAMPLES / "two-portraits.jpg"] * 3
        detector = create_detector(None)
        a = list(iter_predictions(photos, predictor, detector=detector, workers=0))
        b = list(iter_predictions(photos, predictor, detector=detector, workers=3))
        assert a == b and [len(r.faces) for r in a] == [1, 2] * 3


NO_TORCH_RUN = """
import json, sys
from faceattr.cli.app import main
sys.argv = ["faceattr", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
heavy = sorted(m for m in ("torch", "torchvision", "timm") if m in sys.modules)
print(json.dumps({"heavy": heavy, "code": code}), file=sys.stderr)
"""


def _run_without_torch_check(*args: str) -> tuple[dict, str]:
    r = subprocess.run([sys.executable, "-c", NO_TORCH_RUN, *args], capture_output=True,
                       text=True, timeout=180)  # fmt: skip
    return json.loads(r.stderr.strip().splitlines()[-1]), r.stdout


def test_default_model_predicts_and_evaluates_without_torch(synthetic_root):
    """The path most users run (the bundled ONNX model) imports no torch, torchvision or
    timm: predict on a photo, and eval (the CI gate) on a dataset."""
    from faceattr.models.file import default_model_path

    if not default_model_path("onnx").exists():
        pytest.skip("no bundled default.onnx in this checkout")
    status, stdout = _run_without_torch_check("predict", str(EXAMPLES / "astronaut.jpg"), "--json")
    assert status == {"heavy": [], "code": 0}
    [entry] = json.loads(stdout)
    assert len(entry["faces"]) == 1 and "Smiling" in entry["faces"][0]["attributes"]
    status, stdout = _run_without_torch_check(
        "eval", "default", "--root", str(synthetic_root), "--split", "test", "--json"
    )
    assert status == {"heavy": [], "code": 0}
    metrics = json.loads(stdout)
    assert metrics["backend"] == "onnx" and metrics["n_images"] == 150


def test_allocator_tuning_and_its_opt_out():
    code = "from faceattr.malloc import tune_allocator; print(tune_allocator())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "FACEATTR_MALLOC": "default"})  # fmt: skip
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")
    assert on.stdout.strip() == ("True" if glibc else "False")
    assert off.stdout.strip() == "False"


def test_prefetch_keeps_order_raises_and_stops():
    from faceattr.utils import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for v in prefetch(failing()):
            got.append(v)
    assert got == [1, 2]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for v in prefetch(endless(), depth=2):
        if v == 5:
            break
    time.sleep(0.3)
    assert len(produced) <= 5 + 4  # the producer stopped a few items ahead
    assert not any(t.name == "faceattr-prefetch" for t in threading.enumerate())


def test_importing_the_engine_changes_nothing():
    """faceattr.engine has no import-time side effect; training tunes the allocator itself."""
    code = (
        "import faceattr.engine, faceattr.engine.fit, faceattr.malloc as m; print(sorted(m._state))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[]", r.stderr
