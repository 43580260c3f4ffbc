"""load_image on every awkward kind of file, and list_images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faceattr.data.images import BACKGROUND_RGB, IMAGE_EXTENSIONS, list_images, load_image
from faceattr.errors import DataError, ImageReadError


def _pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in img.getpixel(xy))


def test_rgb_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "face.jpg"
    Image.new("RGB", (30, 40), (200, 50, 20)).save(path, quality=95)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (30, 40)
    assert np.allclose(_pixel(img, (15, 20)), (200, 50, 20), atol=6)
    img.load()  # usable after the file was closed


def test_rgba_is_composited_on_grey(tmp_path: Path) -> None:
    arr = np.zeros((10, 20, 4), dtype=np.uint8)
    arr[:, :10] = (255, 0, 0, 255)  # opaque red
    arr[:, 10:] = (0, 255, 0, 0)  # fully transparent green
    path = tmp_path / "cutout.png"
    Image.fromarray(arr, mode="RGBA").save(path)
    img = load_image(path)
    assert img.mode == "RGB"
    assert _pixel(img, (2, 5)) == (255, 0, 0)
    assert _pixel(img, (15, 5)) == BACKGROUND_RGB


def test_la_and_palette_transparency(tmp_path: Path) -> None:
    la = Image.new("LA", (8, 8), (50, 0))
    la.putpixel((0, 0), (50, 255))
    la.save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert _pixel(img, (0, 0)) == (50, 50, 50)
    assert _pixel(img, (4, 4)) == BACKGROUND_RGB

    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 255, 255, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.save(tmp_path / "pal.png", transparency=1)  # palette entry 1 (yellow) is transparent
    img = load_image(tmp_path / "pal.png")
    assert _pixel(img, (0, 0)) == (0, 0, 255)
    assert _pixel(img, (5, 5)) == BACKGROUND_RGB


def test_greyscale_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "grey.jpg"
    Image.new("L", (16, 16), 90).save(path)
    img = load_image(path)
    r, g, b = _pixel(img, (8, 8))
    assert img.mode == "RGB" and r == g == b and abs(r - 90) <= 2


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # pure red in CMYK
    img = load_image(path)
    r, g, b = _pixel(img, (8, 8))
    assert img.mode == "RGB" and r > 230 and g < 30 and b < 30


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    img = load_image(path)
    got = [_pixel(img, (x, 1))[0] for x in range(4)]
    assert got == [0, 64, 128, 255]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # Stored landscape: left half red, right half blue. Orientation 6 = "rotate 90 degrees
    # clockwise to display", so the upright image is portrait with red on top.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    stored = Image.fromarray(arr)
    exif = stored.getexif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.size == (20, 40)
    top, bottom = _pixel(img, (10, 5)), _pixel(img, (10, 35))
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50


def test_truncated_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "cut.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert "cut.jpg" in info.value.message and "truncated" in info.value.message


def test_text_file_renamed_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert "notes.jpg" in info.value.message and "not an image" in info.value.message


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)


def test_max_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageReadError) as info:
        load_image(path, max_pixels=1000)
    msg = str(info.value)
    assert "10,000 pixels" in msg and "1,000" in msg and "`max_pixels=N`" in msg
    assert load_image(path, max_pixels=10_000).size == (100, 100)


def test_pillow_bomb_limit_becomes_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    path = tmp_path / "bomb.png"
    Image.new("RGB", (100, 100)).save(path)  # 10,000 px: > 2x the limit -> Pillow's error
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert "10,000 pixels" in info.value.message and "4,000" in info.value.message
    assert "max_pixels" in info.value.hint
    Image.new("RGB", (60, 100)).save(path)  # 6,000 px: between 1x and 2x -> Pillow's warning
    with pytest.raises(ImageReadError, match="6,000 pixels"):
        load_image(path)
    # raising the limit above Pillow's own works, and leaves Pillow's global as it was
    assert load_image(path, max_pixels=20_000).size == (60, 100)
    assert Image.MAX_IMAGE_PIXELS == 4000


def test_list_images(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "c.jpeg", "notes.txt", ".hidden.jpg", "._a.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.webp").write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()  # a folder named like an image is not an image
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.jpeg"]
    deep = list_images(tmp_path, recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in deep] == [
        "a.png", "b.JPG", "c.jpeg", "sub/d.webp",
    ]  # fmt: skip
    assert ".tiff" in IMAGE_EXTENSIONS and ".webp" in IMAGE_EXTENSIONS
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
