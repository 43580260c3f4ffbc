"""Face detection and alignment speed on typical photo sizes (no network, no dataset needed).

    python benchmarks/bench_detect.py [--repeat 10] [--detectors retinaface,yunet] [--max-side N]

Test photos are built here: a textured background with the bundled public-domain astronaut
portrait pasted twice (a large and a small face), at 640x480 and 1920x1080. For each installed
detector it prints the median milliseconds per image and the faces found, then the cost of
aligning one face (``align_face`` to 178x218) from the 1920x1080 photo.
"""

from __future__ import annotations

import argparse
import statistics
import time
from importlib import resources

import numpy as np
from PIL import Image, ImageFilter

from faceattr.inference.align import align_face, template_for
from faceattr.inference.detect import available_detectors, create_detector


def astronaut() -> Image.Image:
    with resources.files("faceattr.assets").joinpath("astronaut.jpg").open("rb") as fh:
        return Image.open(fh).convert("RGB")


def make_photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A ``size`` photo with two faces: one filling ~1/3 of the height, one ~1/8."""
    w, h = size
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    bg = Image.fromarray(noise).resize(size, Image.Resampling.BICUBIC)
    bg = bg.filter(ImageFilter.GaussianBlur(3))
    # The portrait's face spans ~1/4 of its side: size the pastes by the face we want.
    face = astronaut().crop((128, 0, 384, 256))  # head and shoulders, 256x256
    big = face.resize((h * 2 // 3, h * 2 // 3), Image.Resampling.BILINEAR)
    small = face.resize((h // 4, h // 4), Image.Resampling.BILINEAR)
    bg.paste(big, (w // 10, h // 6))
    bg.paste(small, (w * 2 // 3, h // 3))
    return bg


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median milliseconds of ``repeat`` calls (after one warm-up) and the last result."""
    out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--detectors", default=",".join(available_detectors()))
    p.add_argument("--max-side", type=int, default=None, help="override the detectors' own")
    args = p.parse_args(argv)
    names = [n for n in args.detectors.split(",") if n]
    if not names:
        raise SystemExit('No face detector installed: pip install "faceattr[detect]"')
    sizes = [(640, 480), (1920, 1080)]
    photos = {s: make_photo(s) for s in sizes}
    print("| detector | " + " | ".join(f"{w}x{h} ms/image (faces)" for w, h in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    found = {}
    for name in names:
        det = create_detector(name, max_side=args.max_side)
        cells = []
        for s in sizes:
            ms, faces = timed(lambda det=det, s=s: det.detect(photos[s]), args.repeat)
            cells.append(f"{ms:.1f} ({len(faces)})")
            found[name, s] = faces
        print(f"| {name} | " + " | ".join(cells) + " |")

    print("\n| step | ms/face |")
    print("|---|---|")
    photo = photos[sizes[-1]]
    for name in names:
        faces = found[name, sizes[-1]]
        if not faces:
            continue
        tpl = template_for(name)
        for label, face in (("large face", faces[0]), ("small face", faces[-1])):
            ms, _ = timed(
                lambda f=face, t=tpl: align_face(photo, f.landmarks, template=t), 5 * args.repeat
            )
            print(f"| align_face to 178x218, {label} in 1920x1080 ({name} landmarks) | {ms:.2f} |")
        break


if __name__ == "__main__":
    main()
