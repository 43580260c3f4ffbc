"""`faceattr index` / `faceattr search` at scale, measured side by side in one run.

1. Indexing throughput on real photos against `faceattr predict --json` on the same images
   (same model, detector, workers): the ratio should be within 10% of 1.
2. A re-run of `index` over the unchanged folder, as a fraction of the first run.
3. Query latency on an index of N synthetic faces (default 1,000,000): first 100 results of
   queries of one to three attributes, median of 5 runs each, cold and warm.

    python benchmarks/bench_search.py [--images 300] [--rerun-images 2000] [--faces 1000000]

Real photos come from ``$FACEATTR_REAL_DATA/celeba-sample`` (or ``--photos DIR``); without
them parts 1 and 2 use copies of the bundled photo, brightened differently.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import child_env, warm_files

FACEATTR = str(Path(sys.executable).with_name("faceattr"))
QUERIES = [
    "Eyeglasses",
    "Smiling and not Male",
    "Eyeglasses and Smiling and not Male",
    "(Blond_Hair or Gray_Hair) and Smiling > 0.9",
    "Wearing_Hat and Young and Bangs",
]


def _photos(arg: str | None, n: int, dest: Path) -> tuple[list[Path], str]:
    dest.mkdir(parents=True)
    real = Path(arg) if arg else None
    if real is None and os.environ.get("FACEATTR_REAL_DATA"):
        real = Path(os.environ["FACEATTR_REAL_DATA"]) / "celeba-sample" / "img_align_celeba"
    if real is not None and real.is_dir():
        files = sorted(real.iterdir())[:n]
        for f in files:
            os.symlink(f, dest / f.name)  # the folder to index: links, not copies
        return sorted(dest.iterdir()), f"{len(files)} real photos from {real}"
    from PIL import Image, ImageEnhance

    base = Image.open(Path(__file__).resolve().parents[1] / "examples" / "astronaut.jpg")
    for i in range(n):
        ImageEnhance.Brightness(base).enhance(0.6 + 0.8 * i / n).save(dest / f"{i:05d}.jpg")
    return sorted(dest.iterdir()), f"{n} variants of the bundled photo"


def _run(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=child_env())  # fmt: skip
    return time.perf_counter() - start


def bench_indexing(args: argparse.Namespace, tmp: Path) -> None:
    files, what = _photos(args.photos, args.images, tmp / "photos")
    warm_files(files)
    print(f"\n## Indexing {what}")
    predict = _run([FACEATTR, "predict", str(tmp / "photos"), "--json"])
    index = _run([FACEATTR, "index", str(tmp / "photos"), "--db", str(tmp / "a.db")])
    n = len(files)
    print(f"predict --json : {predict:6.1f} s  {n / predict:6.1f} img/s")
    print(f"index          : {index:6.1f} s  {n / index:6.1f} img/s")
    print(f"index / predict throughput: {predict / index:.2f}")

    files, what = _photos(args.photos, args.rerun_images, tmp / "rerun")
    warm_files(files)
    print(f"\n## Re-running index over an unchanged folder ({what})")
    first = _run([FACEATTR, "index", str(tmp / "rerun"), "--db", str(tmp / "b.db")])
    again = [_run([FACEATTR, "index", str(tmp / "rerun"), "--db", str(tmp / "b.db")])
             for _ in range(3)]  # fmt: skip
    print(f"first run {first:.1f} s; unchanged re-run (median of 3) {statistics.median(again):.2f}"
          f" s = {100 * statistics.median(again) / first:.2f}% of the first")  # fmt: skip


def _synthetic_index(db: Path, n: int) -> None:
    """An index of ``n`` faces with CelebA-like rates (probabilities drawn around them)."""
    from faceattr.attributes import CELEBA_ATTRIBUTES
    from faceattr.collection.store import open_store
    from faceattr.data.synthetic import draw_synthetic_labels

    store = open_store(db, create=True)
    names = list(CELEBA_ATTRIBUTES)
    store.initialise({"name": "synthetic", "sha256": "0" * 64, "arch": "none",
                      "attributes": names, "thresholds": [0.5] * len(names)})  # fmt: skip
    rng = np.random.default_rng(0)
    cols = ", ".join(f"a{i}" for i in range(len(names)))
    marks = ", ".join("?" * (len(names) + 8))
    conn = store.conn
    chunk = 50_000
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = draw_synthetic_labels(m, rng)
        probs = np.clip(np.where(labels == 1, rng.beta(8, 2, labels.shape),
                                 rng.beta(2, 8, labels.shape)), 0, 1)  # fmt: skip
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO images(id, path, size, mtime_ns, sha256, status, width, height, "
            "indexed_at) VALUES (?, ?, 0, 0, NULL, 'ok', 178, 218, 0)",
            [(start + k + 1, f"/photos/{start + k:07d}.jpg") for k in range(m)],
        )
        conn.executemany(
            f"INSERT INTO faces(image_id, face, x, y, w, h, score, landmarks, {cols}) "
            f"VALUES ({marks})",
            [(start + k + 1, 0, 10.0, 20.0, 80.0, 100.0, 0.99, None, *probs[k].tolist())
             for k in range(m)],
        )  # fmt: skip
        conn.execute("COMMIT")
    with store.transaction():
        store.changed()
    store.close()


def bench_queries(args: argparse.Namespace, tmp: Path) -> None:
    from faceattr.collection.search import search_index

    db = tmp / "big.db"
    start = time.perf_counter()
    _synthetic_index(db, args.faces)
    size = db.stat().st_size / 1e6
    built = time.perf_counter() - start
    start = time.perf_counter()
    search_index(QUERIES[0], db, limit=100)  # builds the column store (index does it too)
    print(f"\n## Queries on {args.faces:,} synthetic faces (database built in {built:.0f} s, "
          f"{size:.0f} MB; column store built by the first query in "
          f"{time.perf_counter() - start:.1f} s)")  # fmt: skip
    print(f"{'query':48} {'first 100 (ms, median of 5)':>28} {'matches':>9}")
    for q in QUERIES:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            found = search_index(q, db, limit=100)
            times.append(1000 * (time.perf_counter() - t0))
        total = len(search_index(q, db, limit=None).results) if args.count else "-"
        print(f"{q:48} {statistics.median(times):28.1f} {total!s:>9}  "
              f"(returned {len(found.results)})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", help="a folder of photos (default: the real sample)")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rerun-images", type=int, default=2000)
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--count", action="store_true", help="also count all matches")
    parser.add_argument("--skip-indexing", action="store_true")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}")
    with tempfile.TemporaryDirectory(prefix="bench-search-") as d:
        tmp = Path(d)
        if not args.skip_indexing:
            bench_indexing(args, tmp)
        bench_queries(args, tmp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
