"""`fetch_celeba` against a real HTTP server on 127.0.0.1 serving a tiny synthetic CelebA.

Nothing here touches the internet: the Google Drive and Hugging Face base URLs are pointed at
the local server (or at a closed port) through their environment variables.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from PIL import Image

from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.data.fetch import FetchResult, fetch_celeba
from faceattr.data.fetch import release as fetch
from faceattr.data.fetch.annotations import convert_kaggle_csv
from faceattr.data.fetch.manifest import MANIFEST_NAME
from faceattr.data.fetch.release import (
    ATTR_FILE,
    BBOX_FILE,
    IDENTITY_FILE,
    IMAGE_DIR,
    IMAGE_ZIP,
    LANDMARKS_FILE,
    PARTITION_FILE,
    read_checksums,
)
from faceattr.errors import DownloadError, UsageError

N_IMAGES = 6
SPLITS = [0, 0, 0, 0, 1, 2]  # 4 train, 1 valid, 1 test
DRIVE_IDS = {f.drive_id: f.name for f in fetch.CELEBA_FILES}
QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
    "<p>Sorry, you can't view or download this file at this time.</p><p>Too many users have "
    "viewed or downloaded this file recently. Please try accessing the file again later.</p>"
    "</body></html>"
)


# ------------------------------------------------------------------------------ synthetic data


def _names() -> list[str]:
    return [f"{i:06d}.jpg" for i in range(1, N_IMAGES + 1)]


def _jpeg(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 10), (40 * i % 256, 90, 160)).save(buf, format="JPEG")
    return buf.getvalue()


def _labels() -> list[list[int]]:
    return [[1 if (i * 7 + j) % 3 == 0 else -1 for j in range(40)] for i in range(N_IMAGES)]


def _official_files() -> dict[str, bytes]:
    """The release's files in their official byte format (CRLF, padded values)."""
    names = _names()
    attr = [str(N_IMAGES), " ".join(CELEBA_ATTRIBUTES) + " "]
    attr += [
        f"{n} {r[0]}" + "".join(f" {v:2d}" for v in r[1:])
        for n, r in zip(names, _labels(), strict=True)
    ]
    landmarks = [str(N_IMAGES), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "]
    landmarks += [f"{n}   69  109  106  113   77" for n in names]
    bbox = [str(N_IMAGES), "image_id x_1 y_1 width height "]
    bbox += [f"{n}    95  71 226 313" for n in names]

    def text(lines: list[str]) -> bytes:
        return "".join(line + "\r\n" for line in lines).encode()

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        for i, n in enumerate(names, start=1):
            z.writestr(f"{IMAGE_DIR}/{n}", _jpeg(i))
    return {
        ATTR_FILE: text(attr),
        PARTITION_FILE: text([f"{n} {s}" for n, s in zip(names, SPLITS, strict=True)]),
        IDENTITY_FILE: text([f"{n} {100 + i // 2}" for i, n in enumerate(names)]),
        LANDMARKS_FILE: text(landmarks),
        BBOX_FILE: text(bbox),
        IMAGE_ZIP: archive.getvalue(),
    }


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _write_checksums(path: Path, files: dict[str, bytes]) -> Path:
    path.write_text("".join(f"{_md5(data)}  {name}\n" for name, data in files.items()))
    return path


@pytest.fixture(scope="module")
def official() -> dict[str, bytes]:
    return _official_files()


@pytest.fixture
def sums(tmp_path: Path, official: dict[str, bytes]) -> Path:
    return _write_checksums(tmp_path / "celeba.md5", official)


def _write_tree(base: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _kaggle_files(official: dict[str, bytes]) -> dict[str, bytes]:
    """Kaggle's archive layout: csv annotations and img_align_celeba/img_align_celeba/."""
    names = _names()
    attr = ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
    attr += [
        n + "," + ",".join(str(v) for v in row) for n, row in zip(names, _labels(), strict=True)
    ]
    part = ["image_id,partition"] + [f"{n},{s}" for n, s in zip(names, SPLITS, strict=True)]
    bbox = ["image_id,x_1,y_1,width,height"] + [f"{n},95,71,226,313" for n in names]
    out = {
        "list_attr_celeba.csv": "\n".join(attr).encode(),
        "list_eval_partition.csv": "\n".join(part).encode(),
        "list_bbox_celeba.csv": "\n".join(bbox).encode(),
    }
    with zipfile.ZipFile(io.BytesIO(official[IMAGE_ZIP])) as z:
        for info in z.infolist():
            name = Path(info.filename).name
            out[f"{IMAGE_DIR}/{IMAGE_DIR}/{name}"] = z.read(info)
    return out


# ------------------------------------------------------------------------------ test server


class _State:
    """What the server serves and what it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.cut_once: dict[str, int] = {}  # file -> bytes sent before the first cut
        self.ignore_range = False
        self.html: dict[str, str] = {}  # file -> HTML page served with 200 instead
        self.drive: dict[str, str] = {}  # file -> "form" | "cookie" | "quota" (default: direct)
        self.base = ""

    def requests_for(self, name: str) -> list[dict[str, str]]:
        return [
            h
            for p, q, h in self.log
            if p.endswith("/" + name) or DRIVE_IDS.get(q.get("id", "")) == name
        ]


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    @property
    def state(self) -> _State:
        return self.server.state  # type: ignore[attr-defined]

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query))
        self.state.log.append((parts.path, query, dict(self.headers)))
        if parts.path == "/drive/uc":
            name = DRIVE_IDS.get(query.get("id", ""))
            if name is None:
                return self._send(404, b"no such id", "text/plain")
            mode = self.state.drive.get(name, "direct")
            if mode == "quota":
                return self._send(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
            if mode == "form":  # drive.usercontent.google.com style virus-scan warning
                page = (
                    "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>"
                    '</head><body><form id="download-form" '
                    f'action="{self.state.base}/drive/download" method="get">'
                    f'<input type="hidden" name="id" value="{query["id"]}">'
                    '<input type="hidden" name="export" value="download">'
                    '<input type="hidden" name="confirm" value="t">'
                    '<input type="hidden" name="uuid" value="a1b2-uuid"></form></body></html>'
                )
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            if mode == "cookie" and query.get("confirm") != "TOK3N":  # older Drive page
                page = (
                    "<html><head><title>Google Drive - Virus scan warning</title></head><body>"
                    f'<a id="uc-download-link" href="/drive/uc?export=download&amp;'
                    f'confirm=TOK3N&amp;id={query["id"]}">Download anyway</a></body></html>'
                )
                return self._send(
                    200, page.encode(), "text/html", {"Set-Cookie": "download_warning_1=TOK3N"}
                )
            return self._serve(name)
        if parts.path == "/drive/download":
            if query.get("uuid") != "a1b2-uuid" or query.get("confirm") != "t":
                return self._send(400, b"bad confirmation", "text/plain")
            return self._serve(DRIVE_IDS[query["id"]])
        return self._serve(parts.path.rsplit("/", 1)[-1])

    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _serve(self, name: str) -> None:
        if name in self.state.html:
            return self._send(200, self.state.html[name].encode(), "text/html")
        data = self.state.files.get(name)
        if data is None:
            return self._send(404, b"not found", "text/plain")
        start = 0
        rng = self.headers.get("Range")
        if rng and not self.state.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if name in self.state.cut_once:  # send part of the body, then drop the connection
            self.wfile.write(data[start : self.state.cut_once.pop(name)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server(official: dict[str, bytes], monkeypatch: pytest.MonkeyPatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = _State()
    state.files = dict(official)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setenv(fetch.DRIVE_URL_ENV, state.base + "/drive/uc")
    monkeypatch.delenv(fetch.HF_URL_ENV, raising=False)
    monkeypatch.setattr("faceattr.data.download.RETRY_WAIT", 0.01)
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


class _Recorder:
    """A faceattr.progress.Progress that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def start(self, description: str, total: int | None = None, unit: str = "img") -> None:
        self.events.append(("start", description, total, unit))

    def advance(self, n: int = 1, **info: object) -> None:
        self.events.append(("advance", n))

    def finish(self) -> None:
        self.events.append(("finish",))

    def log(self, message: str) -> None:
        self.events.append(("log", message))


def _assert_official_layout(root: Path, official: dict[str, bytes], optional: bool = True) -> None:
    names = [ATTR_FILE, PARTITION_FILE] + (
        [IDENTITY_FILE, LANDMARKS_FILE, BBOX_FILE] if optional else []
    )
    for name in names:
        assert (root / name).read_bytes() == official[name], name
    images = sorted(p.name for p in (root / IMAGE_DIR).iterdir())
    assert images == _names()
    assert (root / IMAGE_DIR / "000003.jpg").read_bytes() == _jpeg(3)
    leftovers = [
        p.name for p in root.iterdir() if p.name.endswith(".part") or p.name.startswith(".img")
    ]
    assert leftovers == []


# ------------------------------------------------------------------------------ HTTP sources


def test_mirror_download_with_checksums_then_rerun_is_noop(server, tmp_path, official, sums):
    root = tmp_path / "celeba"
    progress = _Recorder()
    result = fetch_celeba(root, mirror=server.base + "/mirror/", checksums=sums, progress=progress)

    assert isinstance(result, FetchResult)
    assert (result.source, result.location) == ("mirror", server.base + "/mirror/")
    _assert_official_layout(root, official)
    assert not (root / IMAGE_ZIP).exists()  # extracted, then removed (keep_archive=False)
    assert result.n_images == N_IMAGES
    assert result.split_counts == {"train": 4, "valid": 1, "test": 1}
    assert result.verified[ATTR_FILE] == _md5(official[ATTR_FILE])
    assert result.verified[IMAGE_ZIP] == _md5(official[IMAGE_ZIP])
    assert result.skipped_optional == [] and not result.up_to_date
    assert set(result.fetched) == set(official)
    # Download progress: a task per file with its byte total, advanced by exactly that much.
    zip_start = next(e for e in progress.events if e[0] == "start" and e[1] == IMAGE_ZIP)
    assert zip_start[2] == len(official[IMAGE_ZIP]) and zip_start[3] == "bytes"
    i = progress.events.index(zip_start)
    j = progress.events.index(("finish",), i)
    assert sum(e[1] for e in progress.events[i:j] if e[0] == "advance") == len(official[IMAGE_ZIP])
    assert any(e[0] == "start" and e[3] == "files" for e in progress.events)  # extraction
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["files"][ATTR_FILE]["md5"] == _md5(official[ATTR_FILE])
    assert manifest["images"]["count"] == N_IMAGES

    n_requests = len(server.log)
    again = fetch_celeba(root, mirror=server.base + "/mirror/", checksums=sums)
    assert again.up_to_date and again.fetched == {} and again.source is None
    assert len(server.log) == n_requests  # no new request at all
    assert again.verified == result.verified and again.n_images == N_IMAGES
    # Without --checksums: still complete (the file's md5s were recorded), no network.
    progress = _Recorder()
    plain = fetch_celeba(root, mirror=server.base + "/mirror/", progress=progress)
    assert plain.up_to_date and len(server.log) == n_requests
    assert any("checksums an earlier run was given" in str(e) for e in progress.events)


def test_drive_confirmation_pages_are_followed(server, tmp_path, official, sums):
    server.drive[IMAGE_ZIP] = "form"  # new drive.usercontent.google.com form with a uuid
    server.drive[ATTR_FILE] = "cookie"  # older page: download_warning cookie + confirm link
    result = fetch_celeba(tmp_path / "root", source="drive", checksums=sums)

    assert result.source == "drive"
    _assert_official_layout(tmp_path / "root", official)
    confirmed = [q for p, q, _ in server.log if p == "/drive/download"]
    assert confirmed and confirmed[0]["uuid"] == "a1b2-uuid" and confirmed[0]["confirm"] == "t"
    attr_requests = [q for p, q, _ in server.log if DRIVE_IDS.get(q.get("id", "")) == ATTR_FILE]
    assert [q.get("confirm") for q in attr_requests] == [None, "TOK3N"]


def test_drive_quota_page_fails_the_source_and_saves_nothing(server, tmp_path, sums):
    server.drive[ATTR_FILE] = "quota"
    root = tmp_path / "root"
    with pytest.raises(DownloadError) as err:
        fetch_celeba(root, source="drive", checksums=sums)
    message = str(err.value)
    assert "quota exceeded" in message and ATTR_FILE in message
    assert not (root / ATTR_FILE).exists() and not (root / f"{ATTR_FILE}.part").exists()
    for path in root.rglob("*"):  # the quota page must not have been written anywhere
        assert not (path.is_file() and b"Too many users" in path.read_bytes()), path
    # The images were never requested: the small required files come first.
    assert server.requests_for(IMAGE_ZIP) == []


def test_html_page_from_a_mirror_is_refused(server, tmp_path, sums):
    server.html[PARTITION_FILE] = "<html><head><title>Captive portal</title></head></html>"
    with pytest.raises(DownloadError, match="Captive portal"):
        fetch_celeba(tmp_path / "root", mirror=server.base, checksums=sums)
    assert not (tmp_path / "root" / PARTITION_FILE).exists()


def test_cut_connection_is_resumed_with_range(server, tmp_path, official, sums):
    half = len(official[IMAGE_ZIP]) // 2
    server.cut_once[IMAGE_ZIP] = half
    progress = _Recorder()
    result = fetch_celeba(tmp_path / "root", mirror=server.base, checksums=sums, progress=progress)

    _assert_official_layout(tmp_path / "root", official)
    requests = server.requests_for(IMAGE_ZIP)
    assert len(requests) == 2
    assert "Range" not in requests[0] and requests[1]["Range"] == f"bytes={half}-"
    assert result.verified[IMAGE_ZIP] == _md5(official[IMAGE_ZIP])
    assert any(e[0] == "log" and "retrying" in e[1] for e in progress.events)


def test_leftover_part_resumes_and_a_server_ignoring_range_restarts(
    server, tmp_path, official, sums
):
    root = tmp_path / "root"
    root.mkdir()
    data = official[IMAGE_ZIP]
    (root / f"{IMAGE_ZIP}.part").write_bytes(data[:100])
    fetch_celeba(root, mirror=server.base, checksums=sums)
    assert server.requests_for(IMAGE_ZIP)[0]["Range"] == "bytes=100-"
    _assert_official_layout(root, official)

    root2 = tmp_path / "root2"
    root2.mkdir()
    (root2 / f"{IMAGE_ZIP}.part").write_bytes(b"garbage that a restart must overwrite")
    server.ignore_range = True
    fetch_celeba(root2, mirror=server.base, checksums=sums)
    _assert_official_layout(root2, official)


def test_a_bad_file_already_in_root_is_set_aside_and_replaced(server, tmp_path, official, sums):
    root = tmp_path / "root"
    root.mkdir()
    (root / ATTR_FILE).write_text(QUOTA_PAGE)  # what older downloaders saved
    result = fetch_celeba(root, mirror=server.base, checksums=sums)
    assert (root / f"{ATTR_FILE}.corrupt").read_text() == QUOTA_PAGE
    assert any(".corrupt" in w for w in result.warnings)
    _assert_official_layout(root, official)


def test_checksum_mismatch_is_refused_and_the_file_deleted(server, tmp_path, official, sums):
    server.files[ATTR_FILE] = official[ATTR_FILE].replace(b" 1", b"-1", 1)
    bad = _md5(server.files[ATTR_FILE])
    root = tmp_path / "root"
    with pytest.raises(DownloadError) as err:
        fetch_celeba(root, mirror=server.base, checksums=sums)
    message = str(err.value)
    assert ATTR_FILE in message and _md5(official[ATTR_FILE]) in message and bad in message
    assert not (root / ATTR_FILE).exists() and not (root / f"{ATTR_FILE}.part").exists()


def test_optional_404_is_a_warning_and_not_retried(server, tmp_path, official, sums):
    del server.files[IDENTITY_FILE]
    root = tmp_path / "root"
    result = fetch_celeba(root, mirror=server.base, checksums=sums)
    assert result.skipped_optional == [IDENTITY_FILE]
    assert any(IDENTITY_FILE in w and "404" in w for w in result.warnings)
    _assert_official_layout(root, official, optional=False)

    n_requests = len(server.log)
    again = fetch_celeba(root, mirror=server.base, checksums=sums)
    assert again.up_to_date and again.skipped_optional == [IDENTITY_FILE]
    assert len(server.log) == n_requests


def test_required_404_is_an_error(server, tmp_path, sums):
    del server.files[PARTITION_FILE]
    with pytest.raises(DownloadError) as err:
        fetch_celeba(tmp_path / "root", mirror=server.base, checksums=sums)
    assert PARTITION_FILE in str(err.value) and "404" in str(err.value)


def test_hf_source_checks_the_official_counts(server, tmp_path, sums, monkeypatch):
    with pytest.raises(DownloadError, match="no Hugging Face mirror is configured"):
        fetch_celeba(tmp_path / "a", source="hf", checksums=sums)
    monkeypatch.setenv(fetch.HF_URL_ENV, server.base + "/hf")
    with pytest.raises(DownloadError) as err:
        fetch_celeba(tmp_path / "b", source="hf", checksums=sums)
    assert "not the official partition" in str(err.value)
    assert not (tmp_path / "b" / PARTITION_FILE).exists()


def test_no_network_lists_every_source_and_the_manual_route(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(fetch.DRIVE_URL_ENV, f"http://127.0.0.1:{port}/uc")
    monkeypatch.setenv(fetch.HF_URL_ENV, f"http://127.0.0.1:{port}/hf")
    with pytest.raises(DownloadError) as err:
        fetch_celeba(tmp_path / "root")
    message, hint = err.value.message, err.value.hint or ""
    assert f"drive (http://127.0.0.1:{port}/uc): failed" in message
    assert f"hf (http://127.0.0.1:{port}/hf): failed" in message
    assert message.count("cannot connect") == 2
    for needed in (
        "--from",
        IMAGE_ZIP,
        ATTR_FILE,
        PARTITION_FILE,
        "Kaggle",
        "list_attr_celeba.csv",
    ):
        assert needed in hint
    with pytest.raises(DownloadError) as err:
        fetch_celeba(tmp_path / "root", mirror=f"http://127.0.0.1:{port}/m")
    assert "mirror (" in err.value.message
    assert list((tmp_path / "root").glob("*.part")) == []


def test_a_silent_server_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr("faceattr.data.download.RETRY_WAIT", 0.01)
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        with pytest.raises(DownloadError, match="timed out"):
            fetch_celeba(tmp_path / "root", mirror=url, timeout=0.2)


def test_disk_full_gives_a_clear_error_and_removes_the_part(server, tmp_path, sums):
    root = tmp_path / "root"
    root.mkdir()
    # A real ENOSPC from the kernel: the .part is a link to /dev/full.
    os.symlink("/dev/full", root / f"{PARTITION_FILE}.part")
    with pytest.raises(DownloadError, match="No space left") as err:
        fetch_celeba(root, mirror=server.base, checksums=sums)
    assert "partial files were removed" in (err.value.hint or "")
    assert not os.path.lexists(root / f"{PARTITION_FILE}.part")


# ------------------------------------------------------------------------------ --from


@pytest.mark.parametrize("layout", ["flat", "drive-folders"])
def test_from_folder_official_layouts(tmp_path, official, sums, layout):
    src = tmp_path / "download"
    if layout == "flat":
        _write_tree(src, official)
    else:
        _write_tree(
            src / "CelebA",
            {
                f"Img/{IMAGE_ZIP}": official[IMAGE_ZIP],
                f"Eval/{PARTITION_FILE}": official[PARTITION_FILE],
                **{
                    f"Anno/{n}": official[n]
                    for n in (ATTR_FILE, IDENTITY_FILE, LANDMARKS_FILE, BBOX_FILE)
                },
            },
        )
    root = tmp_path / "root"
    result = fetch_celeba(root, from_path=src, checksums=sums)
    assert result.source == "from"
    _assert_official_layout(root, official)
    archive = src / IMAGE_ZIP if layout == "flat" else src / "CelebA" / "Img" / IMAGE_ZIP
    assert archive.read_bytes() == official[IMAGE_ZIP]  # extracted from, left untouched
    assert fetch_celeba(root, from_path=src, checksums=sums).up_to_date


def test_from_kaggle_folder_converts_to_the_official_format(tmp_path, official, sums):
    src = tmp_path / "archive"
    _write_tree(src, _kaggle_files(official))
    root = tmp_path / "root"
    result = fetch_celeba(root, from_path=src, checksums=sums)

    # Attribute and partition files come out byte-identical, so their checksums verify.
    assert (root / ATTR_FILE).read_bytes() == official[ATTR_FILE]
    assert (root / PARTITION_FILE).read_bytes() == official[PARTITION_FILE]
    assert sorted(p.name for p in (root / IMAGE_DIR).iterdir()) == _names()
    assert (root / BBOX_FILE).read_text().split() == official[BBOX_FILE].decode().split()
    assert set(result.skipped_optional) == {IDENTITY_FILE, LANDMARKS_FILE}
    assert any("cannot be checked" in w for w in result.warnings)
    assert (src / IMAGE_DIR / IMAGE_DIR / "000001.jpg").exists()  # linked/copied, not moved
    assert fetch_celeba(root, from_path=src, checksums=sums).up_to_date


@pytest.mark.parametrize("kind", ["kaggle", "official"])
def test_from_single_zip(tmp_path, official, sums, kind):
    files = _kaggle_files(official) if kind == "kaggle" else official
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for rel, data in files.items():
            z.writestr(f"celeba/{rel}", data)
    root = tmp_path / "root"
    fetch_celeba(root, from_path=archive, checksums=sums)
    _assert_official_layout(root, official, optional=kind == "official")
    assert not any(p.name.startswith(".faceattr-from") for p in root.iterdir())


def test_from_root_itself_with_kaggle_layout_and_lf_line_endings(tmp_path, official, sums):
    """Files unpacked straight into root: converted/verified in place, images un-nested."""
    root = tmp_path / "root"
    _write_tree(root, _kaggle_files(official))
    (root / IDENTITY_FILE).write_bytes(official[IDENTITY_FILE].replace(b"\r\n", b"\n"))
    result = fetch_celeba(root, from_path=root, checksums=sums)
    assert (root / IDENTITY_FILE).read_bytes() == official[IDENTITY_FILE]  # CRLF restored
    assert any("CRLF" in w for w in result.warnings)
    assert sorted(p.name for p in (root / IMAGE_DIR).iterdir()) == _names()  # flat now
    assert (root / ATTR_FILE).read_bytes() == official[ATTR_FILE]
    assert fetch_celeba(root, from_path=root, checksums=sums).up_to_date


def test_kept_archive_is_extracted_again_without_network(server, tmp_path, official, sums):
    root = tmp_path / "root"
    fetch_celeba(root, mirror=server.base, checksums=sums, keep_archive=True)
    assert (root / IMAGE_ZIP).read_bytes() == official[IMAGE_ZIP]
    n_requests = len(server.log)
    for image in (root / IMAGE_DIR).iterdir():
        image.unlink()
    (root / IMAGE_DIR).rmdir()
    result = fetch_celeba(root, mirror=server.base, checksums=sums)
    assert result.up_to_date and len(server.log) == n_requests
    _assert_official_layout(root, official)


def test_from_zip_slip_is_refused(tmp_path, official, sums):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(ATTR_FILE, official[ATTR_FILE])
        z.writestr("../escaped.txt", b"nope")
    with pytest.raises(DownloadError, match="Refusing to extract"):
        fetch_celeba(tmp_path / "root", from_path=archive, checksums=sums)
    assert not (tmp_path / "escaped.txt").exists()


def test_damaged_archive_is_refused_and_cleaned_up(tmp_path, official):
    files = dict(official)
    data = bytearray(official[IMAGE_ZIP])
    at = data.index(b"JFIF") + 40  # inside the first stored image: its CRC no longer matches
    data[at] ^= 0xFF
    files[IMAGE_ZIP] = bytes(data)
    src = tmp_path / "src"
    _write_tree(src, files)
    sums = _write_checksums(tmp_path / "sums.md5", files)  # the damage is in the checksums too
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="damaged"):
        fetch_celeba(root, from_path=src, checksums=sums)
    assert not (root / IMAGE_DIR).exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".img")] == []


def test_from_folder_missing_required_files(tmp_path, official, sums):
    src = tmp_path / "partial"
    _write_tree(src, {ATTR_FILE: official[ATTR_FILE]})
    with pytest.raises(DownloadError) as err:
        fetch_celeba(tmp_path / "root", from_path=src, checksums=sums)
    assert PARTITION_FILE in str(err.value) and IMAGE_ZIP in str(err.value)


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_from_a_saved_web_page_is_called_a_web_page(tmp_path, official, sums, where):
    page = b"<!DOCTYPE html><html><head><title>Quota exceeded</title></head></html>"
    src = tmp_path / "download"
    _write_tree(src, {**official, IMAGE_ZIP: page})
    from_path = src if where == "folder" else src / IMAGE_ZIP
    with pytest.raises(DownloadError) as err:
        fetch_celeba(tmp_path / "root", from_path=from_path, checksums=sums)
    text = " ".join(str(err.value).split())
    assert "is a web page (HTML)" in text and "md5" not in text.split("Sources tried:")[1]


def test_official_md5_applies_without_checksums(tmp_path, official):
    src = tmp_path / "src"
    _write_tree(src, official)
    with pytest.raises(DownloadError) as err:
        fetch_celeba(tmp_path / "root", from_path=src)
    assert fetch.OFFICIAL_MD5[PARTITION_FILE] in str(err.value)
    assert "`checksums=FILE`" in (err.value.hint or "")


# ------------------------------------------------------------------------------ small pieces


def test_read_checksums_formats_and_errors(tmp_path):
    path = tmp_path / "sums.md5"
    md5 = "0123456789abcdef0123456789ABCDEF"
    path.write_text(
        f"# comment\n{md5}  ./Anno/{ATTR_FILE}\n{md5} *Img/{IMAGE_DIR}/000001.jpg\n"
        f"MD5 (list_eval_partition.txt) = {md5}\n"
    )
    assert read_checksums(path) == {
        ATTR_FILE: md5.lower(),
        f"{IMAGE_DIR}/000001.jpg": md5.lower(),
        PARTITION_FILE: md5.lower(),
    }
    path.write_text("not a checksum line\n")
    with pytest.raises(UsageError, match="line 1"):
        read_checksums(path)


def test_bad_arguments_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="Unknown source"):
        fetch_celeba(tmp_path, source="dropbox")
    with pytest.raises(UsageError, match="needs a mirror URL") as err:
        fetch_celeba(tmp_path, source="mirror")
    assert "`mirror=URL`" in (err.value.hint or "")
    with pytest.raises(UsageError, match="does not exist"):
        fetch_celeba(tmp_path, from_path=tmp_path / "nope")


@pytest.mark.realdata
def test_kaggle_conversion_reproduces_the_official_bytes(tmp_path):
    """Round trip the real annotation files through Kaggle's csv: the official md5 comes back."""
    base = os.environ.get("FACEATTR_REAL_DATA")
    if not base:
        pytest.skip("FACEATTR_REAL_DATA is not set")
    annotations = next(
        (p for p in (Path(base), Path(base).parent) if (p / "celeba-annotations").is_dir()),
        None,
    )
    if annotations is None:
        pytest.skip("no celeba-annotations/ next to FACEATTR_REAL_DATA")
    annotations = annotations / "celeba-annotations"
    for name in (ATTR_FILE, PARTITION_FILE):
        with zipfile.ZipFile(annotations / name.replace(".txt", ".zip")) as z:
            text = z.read(name).decode()
        lines = text.splitlines()
        if name == ATTR_FILE:
            rows = ["image_id," + ",".join(lines[1].split())]
            rows += [",".join(line.split()) for line in lines[2:]]
        else:
            rows = ["image_id,partition"] + [",".join(line.split()) for line in lines]
        csv_path = tmp_path / fetch.KAGGLE_CSV[name]
        csv_path.write_text("\n".join(rows) + "\n")
        convert_kaggle_csv(csv_path, tmp_path / name)
        assert _md5((tmp_path / name).read_bytes()) == fetch.OFFICIAL_MD5[name]
