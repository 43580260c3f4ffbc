"""Fetch CelebA (aligned and cropped) into the official layout, every file verified.

:func:`fetch_celeba` writes, under ``root``::

    img_align_celeba/                   extracted from img_align_celeba.zip   (required)
    list_attr_celeba.txt                40 attributes, official format        (required)
    list_eval_partition.txt             official train/valid/test partition   (required)
    identity_CelebA.txt                 identities                            (optional)
    list_landmarks_align_celeba.txt     5 landmarks of the aligned images     (optional)
    list_bbox_celeba.txt                face boxes in the in-the-wild images  (optional)
    .faceattr-fetch.json                what was verified (size, mtime, md5) and where from

from the first source that works: the official Google Drive files, a Hugging Face mirror, any
mirror URL serving the official file names, or files downloaded by hand (official names, the
Drive folders ``Anno/ Eval/ Img/``, Kaggle's csv archive, or a zip of any of these).

Every file is checked against the official md5 (or a user's md5sum file). Downloads go to
``<name>.part``, resume with HTTP Range, and only a verified file gets its final name; a file
that fails its checksum is deleted. A second run trusts files whose size and mtime match the
manifest, so it costs no network and no re-hashing. Progress goes to a callback and the outcome
is returned as a :class:`FetchResult`: nothing is printed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qsl, quote, urlencode, urljoin, urlsplit, urlunsplit

from faceattr.attributes import CELEBA_ATTRIBUTES
from faceattr.data.archives import (
    IMAGE_SUFFIXES,
    ArchiveError,
    copy_file,
    extract_zip,
    is_within,
    link_or_copy_tree,
    open_zip,
)
from faceattr.data.download import (
    DEFAULT_TIMEOUT,
    HtmlPageError,
    HttpStatusError,
    TransferError,
    disk_error,
    download_to_part,
    looks_like_html,
    make_opener,
    md5_file,
)
from faceattr.errors import DataError, DownloadError, UsageError, unknown_name_error
from faceattr.progress import NullProgress, Progress

# ---------------------------------------------------------------------------------------------
# Where the files live. Base URLs are read at call time: environment variable first, then the
# module constant, so tests (and users behind a proxy or with their own copy) can redirect them.

DRIVE_URL = "https://drive.google.com/uc"  # official files: "<DRIVE_URL>?id=<id>&export=download"
DRIVE_URL_ENV = "FACEATTR_DRIVE_URL"
# No public Hugging Face repository holding the official files (img_align_celeba.zip plus the
# official .txt annotations) could be confirmed, so this source is generic: set it to a base
# URL serving the official names, e.g. "https://huggingface.co/datasets/OWNER/REPO/resolve/main".
# See docs/data-fetch.md.
HF_URL = ""
HF_URL_ENV = "FACEATTR_HF_URL"
DRIVE_FOLDER_URL = "https://drive.google.com/drive/folders/0B7EVK8r0v71pWEZsZE9oNnFzTm8"
KAGGLE_DATASET = "jessicali9530/celeba-dataset"

SOURCES: tuple[str, ...] = ("drive", "hf", "mirror", "from")
MANIFEST_NAME = ".faceattr-fetch.json"
MANIFEST_VERSION = 1
MAX_DRIVE_HOPS = 4  # confirmation pages followed per file before giving up

IMAGE_DIR = "img_align_celeba"
IMAGE_ZIP = "img_align_celeba.zip"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IDENTITY_FILE = "identity_CelebA.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
BBOX_FILE = "list_bbox_celeba.txt"

# Counts of the complete release (the official partition: 0 train, 1 valid, 2 test).
OFFICIAL_COUNTS: dict[str, int] = {
    "images": 202_599,
    "train": 162_770,
    "valid": 19_867,
    "test": 19_962,
}
_SPLIT_CODES = {"0": "train", "1": "valid", "2": "test"}


@dataclass(frozen=True)
class CelebaFile:
    """One file of the release: its Google Drive id and md5 (as listed by torchvision)."""

    name: str
    drive_id: str
    md5: str
    required: bool


# Small required files first, so a source that lacks them fails before the 1.4 GB archive.
CELEBA_FILES: tuple[CelebaFile, ...] = (
    #          name            Google Drive file id                 md5
    CelebaFile(PARTITION_FILE, "0B7EVK8r0v71pY0NSMzRuSXJEVkk",
               "d32c9cbf5e040fd4025c592c306e6668", required=True),
    CelebaFile(ATTR_FILE,      "0B7EVK8r0v71pblRyaVFSWGxPY0U",
               "75e246fa4810816ffd6ee81facbd244c", required=True),
    CelebaFile(IDENTITY_FILE,  "1_ee_0u7vcNLOfNLegJRHmolfH5ICW-XS",
               "32bd1bd63d3c78cd57e08160ec5ed1e2", required=False),
    CelebaFile(LANDMARKS_FILE, "0B7EVK8r0v71pd0FJY3Blby1HUTQ",
               "cc24ecafdb5b50baae59b03474781f8c", required=False),
    CelebaFile(BBOX_FILE,      "0B7EVK8r0v71pbThiMVRxWXZ4dU0",
               "00566efa6fedff7a56946cd1c10f1c16", required=False),
    CelebaFile(IMAGE_ZIP,      "0B7EVK8r0v71pZjFTYXZWM3FlRnM",
               "00d2c5bc6d35e252742224ab0c1e8fcb", required=True),
)  # fmt: skip
FILES_BY_NAME: dict[str, CelebaFile] = {f.name: f for f in CELEBA_FILES}
OFFICIAL_MD5: dict[str, str] = {f.name: f.md5 for f in CELEBA_FILES}
REQUIRED_FILES: tuple[str, ...] = tuple(f.name for f in CELEBA_FILES if f.required)
OPTIONAL_FILES: tuple[str, ...] = tuple(f.name for f in CELEBA_FILES if not f.required)
# Kaggle's archive (jessicali9530/celeba-dataset) has these csv versions of the annotations.
KAGGLE_CSV: dict[str, str] = {
    ATTR_FILE: "list_attr_celeba.csv",
    PARTITION_FILE: "list_eval_partition.csv",
    LANDMARKS_FILE: "list_landmarks_align_celeba.csv",
    BBOX_FILE: "list_bbox_celeba.csv",
}
_ANNOTATION_NAMES = {f.name for f in CELEBA_FILES if f.name != IMAGE_ZIP} | set(KAGGLE_CSV.values())


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class SourceAttempt:
    """One source tried: ``error`` is None when it supplied what it was asked for."""

    source: str
    location: str
    error: str | None = None


@dataclass
class FetchResult:
    """What :func:`fetch_celeba` did.

    ``verified`` maps each file now under ``root`` to its md5 (``img_align_celeba.zip`` stands
    for the extracted images when they came from the archive); ``fetched`` maps the files
    obtained in this run to where they came from; ``source``/``location`` name the source that
    completed the required files (None when everything was already there: ``up_to_date``).
    """

    root: Path
    source: str | None
    location: str | None
    verified: dict[str, str]
    fetched: dict[str, str]
    skipped_optional: list[str]
    warnings: list[str]
    attempts: list[SourceAttempt]
    n_images: int
    split_counts: dict[str, int]
    up_to_date: bool = False


class ChecksumError(DownloadError):
    """A file's md5 differs from the expected one (the file has been deleted or set aside)."""

    def __init__(self, name: str, expected: str, actual: str, origin: str, fate: str) -> None:
        super().__init__(
            f"{name} from {origin} failed verification: expected md5 {expected}, "
            f"got {actual}. {fate}",
            "The copy is damaged or is not the official file. Download it again or use another "
            "source; for a deliberate subset or another release, pass --checksums FILE with "
            "its md5 (md5sum format).",
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class _SourceError(Exception):
    """One source cannot provide the required files; the next one is tried."""


# ---------------------------------------------------------------------------------------------
# Public entry point


def fetch_celeba(
    root: str | Path,
    *,
    source: str | None = None,
    mirror: str | None = None,
    from_path: str | Path | None = None,
    checksums: str | Path | None = None,
    progress: Progress | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    keep_archive: bool = False,
) -> FetchResult:
    """Fetch and verify CelebA (aligned and cropped) into the official layout under ``root``.

    ``source`` picks one of ``"drive"``, ``"hf"``, ``"mirror"`` (needs ``mirror``, a base URL
    serving the official file names) or ``"from"`` (needs ``from_path``: a folder or a zip of
    files downloaded by hand). Without it, ``from_path`` then ``mirror`` are used when given,
    otherwise Google Drive then the Hugging Face mirror. ``checksums`` is an md5sum-format file
    whose entries replace the official md5s (for a mirror or a hand-made subset). The
    downloaded ``img_align_celeba.zip`` is deleted once extracted unless ``keep_archive``.

    Raises :class:`~faceattr.errors.DownloadError` listing every source tried and how to
    download by hand when the required files cannot be had, :class:`ChecksumError` details in
    that listing for a file that failed verification, and
    :class:`~faceattr.errors.UsageError` for bad arguments.
    """
    root = Path(root).expanduser()
    progress = progress or NullProgress()
    user_md5 = read_checksums(checksums) if checksums is not None else {}
    plan = _plan_sources(source, mirror, from_path)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(root / MANIFEST_NAME, exc) from None
    if not root.is_dir():
        raise UsageError(f"--root {root} is a file, not a folder.", "Pass a folder for the data.")

    fx = _Fetcher(root, user_md5, progress, timeout, keep_archive)
    fx.adopt_local_files()
    locations = [src.location for src in plan]
    if not fx.needed(locations):
        return fx.result(None, None, [], up_to_date=True)

    attempts: list[SourceAttempt] = []
    hints: list[str] = []
    used: tuple[str, str] | None = None
    for src in plan:
        needed = fx.needed([src.location])
        if not needed:
            continue
        only_optional = not any(FILES_BY_NAME[n].required for n in needed)
        progress.log(f"Trying {src.title} ({src.location})")
        try:
            src.run(fx, needed)
        except (_SourceError, ArchiveError, ChecksumError) as exc:
            text = str(exc) if isinstance(exc, _SourceError) else exc.message
            if isinstance(exc, DownloadError) and exc.hint and exc.hint not in hints:
                hints.append(exc.hint)
            attempts.append(SourceAttempt(src.kind, src.location, text))
            progress.log(f"{src.title} failed: {text}")
            if only_optional:
                fx.warnings.append(f"Optional files not fetched from {src.title}: {text}")
            continue
        attempts.append(SourceAttempt(src.kind, src.location))
        if used is None:
            used = (src.kind, src.location)
        if not fx.missing_required():
            break

    if fx.missing_required():
        raise _all_failed(attempts, fx.missing_required(), hints)
    fx.finish_checks()
    kind, location = used if used is not None else (None, None)
    return fx.result(kind, location, attempts)


def read_checksums(path: str | Path) -> dict[str, str]:
    """Parse an md5sum file (``<md5>  <name>``, ``<md5> *<name>`` or BSD ``MD5 (name) = md5``).

    Returns name -> lower-case md5. Names of the release's files are reduced to their base
    name (``Anno/list_attr_celeba.txt`` -> ``list_attr_celeba.txt``); image entries become
    ``img_align_celeba/<file>``. Raises :class:`~faceattr.errors.UsageError` on a bad line.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(
            f"Checksums file {path} does not exist.", "Pass an md5sum-format file to --checksums."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"Cannot read checksums file {path}: {exc}.") from None
    out: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{32}) [ *](.+)", line)
        if match:
            md5, name = match.group(1), match.group(2)
        else:
            match = re.fullmatch(r"MD5 \((.+)\) = ([0-9a-fA-F]{32})", line)
            if not match:
                raise UsageError(
                    f"{path}, line {lineno}: not an md5sum line: {raw!r}.",
                    "Each line must be '<32 hex digits>  <file name>', as written by "
                    "`md5sum FILE...`.",
                )
            name, md5 = match.group(1), match.group(2)
        out[_checksum_key(name.strip())] = md5.lower()
    if not out:
        raise UsageError(
            f"Checksums file {path} lists no files.", "Write it with `md5sum FILE...`."
        )
    return out


def _checksum_key(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return name
    if parts[-1] in FILES_BY_NAME or parts[-1] in KAGGLE_CSV.values():
        return parts[-1]
    if IMAGE_DIR in parts[:-1]:
        return f"{IMAGE_DIR}/{parts[-1]}"
    return "/".join(parts)


# ---------------------------------------------------------------------------------------------
# Sources


def _base_url(env: str, constant: str) -> str:
    return (os.environ.get(env) or constant).strip()


def _plan_sources(
    source: str | None, mirror: str | None, from_path: str | Path | None
) -> list[_HttpSource | _FromSource]:
    if mirror is not None:
        scheme = urlsplit(mirror).scheme.lower()
        if scheme not in ("http", "https"):
            raise UsageError(
                f"--mirror {mirror!r} is not an http(s) URL.",
                "Pass the base URL under which the official file names are served, e.g. "
                "https://example.org/celeba/ (use --from for files on this machine)",
            )
    if from_path is not None and not Path(from_path).expanduser().exists():
        raise UsageError(
            f"--from {from_path} does not exist.",
            "Pass the folder (or zip) holding the files you downloaded by hand.",
        )

    def make(kind: str) -> _HttpSource | _FromSource:
        if kind == "drive":
            return _DriveSource(_base_url(DRIVE_URL_ENV, DRIVE_URL))
        if kind == "hf":
            return _HttpSource("hf", _base_url(HF_URL_ENV, HF_URL), strict=True)
        if kind == "mirror":
            if not mirror:
                raise UsageError("--source mirror needs --mirror URL.", "Pass --mirror URL.")
            return _HttpSource("mirror", mirror)
        if not from_path:
            raise UsageError("--source from needs --from PATH.", "Pass --from PATH.")
        return _FromSource(Path(from_path).expanduser())

    if source is not None:
        kind = source.strip().lower()
        if kind not in SOURCES:
            raise unknown_name_error("source", source, SOURCES)
        return [make(kind)]
    # Files given by hand are used first (local, free); the default network sources are only
    # tried when the user named no source of their own.
    kinds = [k for k, given in (("from", from_path), ("mirror", mirror)) if given]
    return [make(k) for k in (kinds or ["drive", "hf"])]


class _HttpSource:
    """A base URL serving the official file names (Hugging Face mirror or ``--mirror``)."""

    titles = {"hf": "the Hugging Face mirror", "mirror": "the mirror", "drive": "Google Drive"}

    def __init__(self, kind: str, base: str, *, strict: bool = False) -> None:
        self.kind = kind
        self.location = base or "(not configured)"
        self.base = base
        self.strict = strict  # demand the complete release (counts of the official partition)
        self.opener: urllib.request.OpenerDirector
        self.jar: CookieJar
        self.opener, self.jar = make_opener()

    @property
    def title(self) -> str:
        return self.titles.get(self.kind, self.kind)

    def url(self, f: CelebaFile) -> str:
        return self.base.rstrip("/") + "/" + quote(f.name)

    def download(self, f: CelebaFile, part: Path, fx: _Fetcher) -> str:
        return download_to_part(
            self.url(f), part, opener=self.opener, timeout=fx.timeout, progress=fx.progress
        )

    def run(self, fx: _Fetcher, needed: list[str]) -> None:
        if not self.base:
            raise _SourceError(
                f"no Hugging Face mirror is configured (set {HF_URL_ENV} to a base URL serving "
                "the official file names)"
            )
        for name in needed:
            f = FILES_BY_NAME[name]
            part = fx.root / f"{name}.part"
            url = self.url(f)
            try:
                md5 = self.download(f, part, fx)
            except HttpStatusError as exc:
                if exc.status in (404, 410) and not f.required:
                    fx.skip_optional(
                        name, self.location, f"not found on {self.title} (HTTP {exc.status})"
                    )
                    continue
                raise _SourceError(f"{name}: {exc}") from None
            except HtmlPageError as exc:
                raise _SourceError(
                    f"{name}: {exc.url} answered with a web page ({exc.title!r}) instead of the "
                    "file; nothing was saved"
                ) from None
            except TransferError as exc:
                kept = (
                    " (the partial download is kept: run again to resume)" if part.exists() else ""
                )
                raise _SourceError(f"{name}: {exc}{kept}") from None
            fx.install(name, part, md5, origin=url)
            fx.fetched[name] = url
            if name in (ATTR_FILE, PARTITION_FILE):
                fx.check_annotation(name, strict=self.strict)
            if name == IMAGE_ZIP:
                fx.extract_images(fx.root / IMAGE_ZIP, origin=url, strict=self.strict)
                if not fx.keep_archive:
                    fx.forget_file(IMAGE_ZIP, delete=True)


class _DriveSource(_HttpSource):
    """The official Google Drive files, through Drive's large-file confirmation pages."""

    def __init__(self, base: str) -> None:
        # Not strict: the official md5s already pin the complete release's content.
        super().__init__("drive", base)

    def url(self, f: CelebaFile) -> str:
        return f"{self.base}?{urlencode({'id': f.drive_id, 'export': 'download'})}"

    def run(self, fx: _Fetcher, needed: list[str]) -> None:
        if not self.base:
            raise _SourceError(f"no Google Drive URL (set {DRIVE_URL_ENV})")
        super().run(fx, needed)

    def download(self, f: CelebaFile, part: Path, fx: _Fetcher) -> str:
        url = self.url(f)
        for _ in range(MAX_DRIVE_HOPS):
            try:
                return download_to_part(
                    url, part, opener=self.opener, timeout=fx.timeout, progress=fx.progress,
                    task=f.name,
                )  # fmt: skip
            except HtmlPageError as page:
                url = self._next_url(page, f)
        raise _SourceError(f"{f.name}: Google Drive kept answering with confirmation pages")

    def _next_url(self, page: HtmlPageError, f: CelebaFile) -> str:
        """The URL a browser would follow from a Drive page, or a :class:`_SourceError`."""
        text = page.text
        if (
            "too many users have viewed or downloaded this file recently" in text.lower()
            or "quota exceeded" in page.title.lower()
        ):
            raise _SourceError(
                f'{f.name}: Google Drive refused the download: quota exceeded ("Too many users '
                'have viewed or downloaded this file recently"); this usually clears within '
                "24 hours. Nothing was saved"
            )
        parser = _PageParser()
        with contextlib.suppress(Exception):  # a broken page only means "no link found"
            parser.feed(text)
            parser.close()
        # Newer page (drive.usercontent.google.com): a GET form with id, export, confirm, uuid.
        for form in parser.forms:
            fields = form["fields"]
            if "confirm" in fields or form["id"] == "download-form":
                action = urljoin(page.url, form["action"] or page.url)
                return _with_query(action, fields)
        # Older page: a link carrying confirm=<token> ...
        for href in parser.links:
            if "confirm=" in href:
                return urljoin(page.url, href)
        # ... or only a download_warning cookie holding the token.
        for cookie in self.jar:
            if cookie.name.startswith("download_warning") and cookie.value:
                return _with_query(page.url, {"confirm": cookie.value})
        raise _SourceError(
            f"{f.name}: Google Drive answered with a web page ({page.title!r}) instead of the "
            "file and no download link was on it (the file may be private, moved, or need a "
            "sign-in). Nothing was saved"
        )


def _with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` set in its query string (replacing the same keys)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


class _PageParser(HTMLParser):
    """Collects forms (action, id, named inputs) and link targets from an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "id": a.get("id", ""), "fields": {}})
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["fields"][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])


@dataclass
class _Layout:
    """Where the pieces are in a folder of hand-downloaded files."""

    files: dict[str, Path] = field(default_factory=dict)  # official name -> .txt or Kaggle .csv
    image_zip: Path | None = None
    image_dir: Path | None = None


class _FromSource:
    """Files downloaded by hand: a folder (official, Drive folders, Kaggle) or one zip."""

    kind = "from"
    title = "the local files"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def run(self, fx: _Fetcher, needed: list[str]) -> None:
        path = self.path
        temp: Path | None = None
        try:
            if path.is_file():
                if not zipfile.is_zipfile(path):
                    raise _SourceError(f"{path} is neither a folder nor a zip archive")
                with open_zip(path) as archive:
                    names = {PurePosixPath(n).name for n in archive.namelist()}
                if names & _ANNOTATION_NAMES:  # an archive of a whole layout: unpack it first
                    temp = fx.root / f".faceattr-from-{os.getpid()}"
                    extract_zip(path, temp, fx.progress)
                    layout = _find_layout(temp)
                else:  # only images: the annotations are looked for beside the zip
                    layout = _find_layout(path.parent)
                    layout.image_zip, layout.image_dir = path, None
            elif path.is_dir():
                layout = _find_layout(path)
            else:
                raise _SourceError(f"{path} does not exist")
            fx.take_from_layout(layout, needed, self.location, owned=temp)
        finally:
            if temp is not None:
                shutil.rmtree(temp, ignore_errors=True)


def _find_layout(base: Path, max_depth: int = 3) -> _Layout:
    """Locate the release's files under ``base`` (official names, Anno/Eval/Img, Kaggle csv).

    The shallowest match wins; an official ``.txt`` beats a Kaggle ``.csv``. Image folders are
    not descended into (they may hold 200k files), except to step into Kaggle's doubled
    ``img_align_celeba/img_align_celeba/``.
    """
    found: dict[str, tuple[int, int, Path]] = {}  # name -> (is_csv, depth, path)
    zips: list[tuple[int, Path]] = []
    dirs: list[tuple[int, Path]] = []
    csv_to_name = {v: k for k, v in KAGGLE_CSV.items()}
    base_depth = len(base.parts)
    for folder, subdirs, filenames in os.walk(base):
        here = Path(folder)
        depth = len(here.parts) - base_depth
        keep = []
        for d in subdirs:
            if d.startswith(".") or d == "__MACOSX":
                continue
            if d == IMAGE_DIR:
                dirs.append((depth + 1, here / d))
                continue
            if depth + 1 <= max_depth:
                keep.append(d)
        subdirs[:] = sorted(keep)
        for name in filenames:
            if name in FILES_BY_NAME and name != IMAGE_ZIP:
                key = (0, depth, here / name)
                official = name
            elif name in csv_to_name:
                key = (1, depth, here / name)
                official = csv_to_name[name]
            elif name == IMAGE_ZIP:
                zips.append((depth, here / name))
                continue
            else:
                continue
            if official not in found or key[:2] < found[official][:2]:
                found[official] = key
    layout = _Layout(files={name: entry[2] for name, entry in found.items()})
    if zips:
        layout.image_zip = min(zips)[1]
    for _, folder in sorted(dirs):
        folder = _step_into_nested(folder)
        if _count_images(folder):
            layout.image_dir = folder
            break
    return layout


def _step_into_nested(folder: Path) -> Path:
    """Kaggle's archive doubles the folder: ``img_align_celeba/img_align_celeba/*.jpg``."""
    nested = folder / folder.name
    if nested.is_dir() and not _count_images(folder, stop_at=1):
        return nested
    return folder


def _count_images(folder: Path, stop_at: int | None = None) -> int:
    n = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                    n += 1
                    if stop_at is not None and n >= stop_at:
                        break
    except OSError:
        return 0
    return n


# ---------------------------------------------------------------------------------------------
# The run: verification, installation, manifest


class _Fetcher:
    """State of one :func:`fetch_celeba` call (root, expected digests, manifest, outcome)."""

    def __init__(
        self,
        root: Path,
        user_md5: dict[str, str],
        progress: Progress,
        timeout: float,
        keep_archive: bool,
    ) -> None:
        self.root = root
        self.user_md5 = user_md5
        self.expected = {**OFFICIAL_MD5, **{k: v for k, v in user_md5.items() if k in OFFICIAL_MD5}}
        self.progress = progress
        self.timeout = timeout
        self.keep_archive = keep_archive
        self.manifest = self._load_manifest()
        self.fetched: dict[str, str] = {}
        self.warnings: list[str] = []
        self._trusted: set[str] = set()  # files checked in this run (no second hashing)

    # ---- manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    def _load_manifest(self) -> dict:
        empty = {"version": MANIFEST_VERSION, "files": {}, "images": None, "skipped": {}}
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return empty
        if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
            return empty
        for key, value in empty.items():
            data.setdefault(key, value)
        return data

    def _save_manifest(self) -> None:
        tmp = self.manifest_path.with_name(MANIFEST_NAME + ".tmp")
        try:
            tmp.write_text(json.dumps(self.manifest, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.manifest_path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise disk_error(self.manifest_path, exc) from None

    def _record(self, name: str, md5: str, origin: str, *, unverified: bool = False) -> None:
        st = (self.root / name).stat()
        self.manifest["files"][name] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "md5": md5,
            "source": origin,
            "unverified": unverified,  # accepted without a checksum to compare with
        }
        self.manifest["skipped"].pop(name, None)
        self._trusted.add(name)
        self._save_manifest()

    def forget_file(self, name: str, *, delete: bool) -> None:
        self.manifest["files"].pop(name, None)
        self._trusted.discard(name)
        if delete:
            with contextlib.suppress(FileNotFoundError):
                (self.root / name).unlink()
        self._save_manifest()

    # ---- what is there

    def file_ok(self, name: str) -> bool:
        """True when ``root/name`` is verified: recorded with this size, mtime and md5."""
        entry = self.manifest["files"].get(name)
        path = self.root / name
        if entry is None or not path.is_file():
            return False
        st = path.stat()
        if entry.get("size") != st.st_size or entry.get("mtime_ns") != st.st_mtime_ns:
            return False
        if entry.get("unverified"):  # a converted file: only a checksum given now can refute it
            return name not in self.user_md5 or entry.get("md5") == self.user_md5[name]
        return entry.get("md5") == self.expected[name]

    def images_ok(self) -> bool:
        entry = self.manifest.get("images")
        folder = self.root / IMAGE_DIR
        if not entry or not folder.is_dir():
            return False
        if entry.get("archive_md5") not in (None, self.expected[IMAGE_ZIP]):
            return False
        return _count_images(folder) == entry.get("count")

    def missing_required(self) -> list[str]:
        out = []
        for name in REQUIRED_FILES:
            ok = self.images_ok() if name == IMAGE_ZIP else self.file_ok(name)
            if not ok:
                out.append(name)
        return out

    def needed(self, locations: list[str]) -> list[str]:
        """Files still to fetch, in download order. An optional file that one of
        ``locations`` already lacked is not asked for again from there."""
        out = []
        for f in CELEBA_FILES:
            ok = self.images_ok() if f.name == IMAGE_ZIP else self.file_ok(f.name)
            if ok:
                continue
            skipped_at = self.manifest["skipped"].get(f.name, [])
            if not f.required and any(loc in skipped_at for loc in locations):
                continue
            out.append(f.name)
        return out

    def adopt_local_files(self) -> None:
        """Verify files already in ``root`` but not in the manifest (placed by hand, or a kept
        archive), so that they are not downloaded again; extract a verified archive."""
        for f in CELEBA_FILES:
            path = self.root / f.name
            if not path.is_file() or (f.name == IMAGE_ZIP and self.images_ok()):
                continue
            if self.file_ok(f.name):
                if f.name == IMAGE_ZIP:  # a kept archive whose folder went missing
                    self._extract_local_archive(path)
                continue
            md5 = md5_file(path, self.progress, f"verify {f.name}")
            if md5 == self.expected[f.name] or self._normalise_line_ends(f.name, path):
                self._record(f.name, self.expected[f.name], f"found in {self.root}")
                if f.name == IMAGE_ZIP:
                    self._extract_local_archive(path)
            elif _is_html_file(path):  # a quota page an older downloader saved as data
                bad = path.with_name(path.name + ".corrupt")
                os.replace(path, bad)
                self.warnings.append(f"{path} was a web page, not data; renamed to {bad.name}.")
            else:  # perhaps a deliberate subset: leave it unless a verified copy replaces it
                self.warnings.append(
                    f"{path} does not match its expected md5 ({md5} instead of "
                    f"{self.expected[f.name]}); it is replaced if a verified copy can be "
                    "fetched (pass --checksums if it is a deliberate subset)."
                )

    def _extract_local_archive(self, path: Path) -> None:
        try:
            self.extract_images(path, origin=str(path), strict=False)
        except (_SourceError, ArchiveError) as exc:
            self.warnings.append(f"{path} could not be extracted ({exc}); fetching it again.")
            self.forget_file(IMAGE_ZIP, delete=False)

    # ---- installing files

    def _normalise_line_ends(self, name: str, path: Path) -> bool:
        """Accept an annotation file that only differs from the expected one by LF line ends
        (some re-uploads strip the CRs): rewrite it with CRLF if that gives the right md5."""
        if not name.endswith(".txt") or path.stat().st_size > (256 << 20):
            return False
        data = path.read_bytes()
        if b"\r\n" in data:
            return False
        converted = data.replace(b"\n", b"\r\n")
        if hashlib.md5(converted).hexdigest() != self.expected[name]:
            return False
        tmp = path.with_name(path.name + ".crlf")
        try:
            tmp.write_bytes(converted)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise disk_error(path, exc) from None
        self.warnings.append(f"{name}: converted LF line endings to CRLF (the official bytes).")
        return True

    def install(self, name: str, part: Path, md5: str, origin: str) -> None:
        """Verify ``part`` and move it to ``root/name``; a mismatch deletes it."""
        expected = self.expected[name]
        if md5 != expected and not self._normalise_line_ends(name, part):
            with contextlib.suppress(OSError):
                part.unlink()
            raise ChecksumError(name, expected, md5, origin, "The file was deleted.")
        try:
            os.replace(part, self.root / name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                part.unlink()
            raise disk_error(self.root / name, exc) from None
        self._record(name, expected, origin)

    def skip_optional(self, name: str, location: str, why: str) -> None:
        self.warnings.append(f"{name} (optional) was skipped: {why}.")
        self.progress.log(f"{name} (optional) skipped: {why}")
        places = self.manifest["skipped"].setdefault(name, [])
        if location not in places:
            places.append(location)
        self._save_manifest()

    def check_annotation(self, name: str, *, strict: bool) -> None:
        """Refuse an attribute/partition file that is not CelebA's (or, when ``strict``, not
        the complete release); the refused file is removed."""
        try:
            if name == ATTR_FILE:
                n, names = _scan_attr_file(self.root / name)
                problem = None
                if names != list(CELEBA_ATTRIBUTES):
                    problem = "its header does not list the 40 CelebA attributes in order"
                elif strict and n != OFFICIAL_COUNTS["images"]:
                    problem = (
                        f"it lists {n:,} images, not the release's {OFFICIAL_COUNTS['images']:,}"
                    )
            else:
                counts = _scan_partition_file(self.root / name)
                official = {k: OFFICIAL_COUNTS[k] for k in ("train", "valid", "test")}
                problem = None
                if strict and counts != official:
                    problem = (
                        f"its split counts {counts} are not the official partition's {official}"
                    )
        except DataError as exc:
            problem = exc.message
        if problem:
            self.forget_file(name, delete=True)
            raise _SourceError(f"{name}: {problem}; the file was removed")

    def extract_images(self, archive: Path, *, origin: str, strict: bool) -> None:
        """Extract the image archive into ``root/img_align_celeba`` (via a temporary folder)."""
        temp = self.root / f".{IMAGE_DIR}.extract-{os.getpid()}"
        try:
            extract_zip(archive, temp, self.progress)
            source_dir = _largest_image_dir(temp)
            if source_dir is None:
                raise _SourceError(f"{archive.name} holds no images")
            if strict and _count_images(source_dir) != OFFICIAL_COUNTS["images"]:
                raise _SourceError(
                    f"{archive.name} holds {_count_images(source_dir):,} images, not the "
                    f"release's {OFFICIAL_COUNTS['images']:,}; nothing was extracted"
                )
            count = self._place_image_dir(source_dir, move=True)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
        self.manifest["images"] = {
            "count": count,
            "archive_md5": self.expected[IMAGE_ZIP],
            "source": origin,
        }
        self._save_manifest()

    def _place_image_dir(self, source_dir: Path, *, move: bool) -> int:
        """Make ``source_dir`` the image folder ``root/img_align_celeba``; the number of images.

        Images listed in the checksums file are checked first. ``move`` renames the folder (our
        own temporary files, or files already under root); otherwise each image is hard-linked,
        or copied where links are impossible. The old folder is replaced once the new one is
        complete.
        """
        final = self.root / IMAGE_DIR
        pid = os.getpid()
        in_place = source_dir.resolve() == final.resolve()
        self._verify_listed_images(source_dir, quarantine=in_place)
        if in_place:
            return _count_images(final)
        staging = self.root / f".{IMAGE_DIR}.new-{pid}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            if move:
                os.rename(source_dir, staging)
            else:
                link_or_copy_tree(source_dir, staging, self.progress, recursive=False)
            if final.exists() or final.is_symlink():
                old = self.root / f".{IMAGE_DIR}.old-{pid}"
                os.rename(final, old)
                os.rename(staging, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(staging, final)
        except BaseException as exc:
            if move and staging.exists():  # put a moved folder back where it came from
                with contextlib.suppress(OSError):
                    os.rename(staging, source_dir)
            shutil.rmtree(staging, ignore_errors=True)  # a half-made copy
            if isinstance(exc, OSError):
                raise disk_error(final, exc) from None
            raise
        return _count_images(final)

    def _verify_listed_images(self, folder: Path, *, quarantine: bool) -> None:
        """Check the images that the user's checksums file lists, before they are placed.

        A mismatch fails the source; with ``quarantine`` (images already in root) each bad
        image is renamed to ``<name>.corrupt`` so that no reader takes it for data.
        """
        listed = {
            k[len(IMAGE_DIR) + 1 :]: v
            for k, v in self.user_md5.items()
            if k.startswith(IMAGE_DIR + "/")
        }
        bad, absent = [], []
        for name, expected in sorted(listed.items()):
            path = folder / name
            if not path.is_file():
                absent.append(name)
                continue
            actual = hashlib.md5(path.read_bytes()).hexdigest()
            if actual != expected:
                if quarantine:
                    os.replace(path, path.with_name(path.name + ".corrupt"))
                bad.append(f"{name} (expected md5 {expected}, got {actual})")
        if absent:
            self.warnings.append(
                f"{len(absent)} image(s) listed in the checksums file are absent: "
                + ", ".join(absent[:5])
                + (" ..." if len(absent) > 5 else "")
            )
        if bad:
            fate = "renamed to *.corrupt" if quarantine else "not used"
            raise _SourceError(
                f"{len(bad)} image(s) failed verification ({fate}): " + "; ".join(bad[:5])
            )

    # ---- hand-downloaded files

    def take_from_layout(
        self, layout: _Layout, needed: list[str], location: str, owned: Path | None
    ) -> None:
        """Copy (or convert, or extract) what ``needed`` lists from a hand-made layout."""
        has_images = layout.image_zip is not None or layout.image_dir is not None
        missing = [
            n
            for n in needed
            if FILES_BY_NAME[n].required
            and (not has_images if n == IMAGE_ZIP else n not in layout.files)
        ]
        if missing:
            want = [
                f"{IMAGE_ZIP} (or its extracted {IMAGE_DIR}/)" if n == IMAGE_ZIP else n
                for n in missing
            ]
            raise _SourceError(
                f"{location} has no {', '.join(want)} (looked for the official names, the "
                "Google Drive folders Anno/ Eval/ Img/, and Kaggle's .csv files with "
                f"{IMAGE_DIR}/{IMAGE_DIR}/)"
            )
        for name in needed:
            if name == IMAGE_ZIP:
                continue
            src = layout.files.get(name)
            if src is None:
                self.skip_optional(name, location, f"not in {location}")
                continue
            if src.suffix == ".csv":
                self._take_kaggle_csv(name, src)
            else:
                self._take_text_file(name, src)
            self.fetched[name] = str(src)
            if name in (ATTR_FILE, PARTITION_FILE):
                self.check_annotation(name, strict=False)
        if IMAGE_ZIP in needed:
            if layout.image_zip is not None:
                self._take_image_zip(layout.image_zip)
                self.fetched[IMAGE_ZIP] = str(layout.image_zip)
            else:
                assert layout.image_dir is not None
                self._take_image_dir(layout.image_dir, owned)
                self.fetched[IMAGE_DIR] = str(layout.image_dir)

    def _take_text_file(self, name: str, src: Path) -> None:
        dest = self.root / name
        if src.resolve() == dest.resolve():  # already in place: verify, set aside if bad
            md5 = md5_file(src)
            if md5 != self.expected[name] and not self._normalise_line_ends(name, src):
                bad = dest.with_name(dest.name + ".corrupt")
                os.replace(dest, bad)
                raise ChecksumError(
                    name, self.expected[name], md5, str(src), f"It was renamed to {bad.name}."
                )
            self._record(name, self.expected[name], str(src))
            return
        part = self.root / f"{name}.part"
        copy_file(src, part)
        self.install(name, part, md5_file(part), str(src))

    def _take_kaggle_csv(self, name: str, src: Path) -> None:
        """Convert Kaggle's csv to the official text file, then verify the result.

        The attribute and partition files come out byte-identical to the official ones, so the
        official md5 applies. The landmark/box files follow the official column widths as far
        as they are known; when their md5 does not match they are accepted unverified, with a
        warning (their values are what the csv holds).
        """
        csv_verified = False
        if src.name in self.user_md5:
            md5 = md5_file(src)
            if md5 != self.user_md5[src.name]:
                raise ChecksumError(
                    src.name, self.user_md5[src.name], md5, str(src), "Nothing was converted."
                )
            csv_verified = True
        part = self.root / f"{name}.part"
        try:
            convert_kaggle_csv(src, part)
        except DataError as exc:
            with contextlib.suppress(OSError):
                part.unlink()
            raise _SourceError(exc.message) from None
        md5 = md5_file(part)
        exact = name in (ATTR_FILE, PARTITION_FILE)  # conversions that give the official bytes
        if md5 == self.expected[name] or (exact and not csv_verified):
            self.install(name, part, md5, f"{src} (converted)")  # or ChecksumError
            return
        why = (
            f"the csv matched {src.name}'s checksum"
            if csv_verified
            else "its spacing may differ from the official file's, so no checksum applies"
        )
        self.warnings.append(f"{name}: converted from {src.name}, accepted because {why}.")
        try:
            os.replace(part, self.root / name)
        except OSError as exc:
            raise disk_error(self.root / name, exc) from None
        self._record(name, md5, f"{src} (converted)", unverified=True)

    def _take_image_zip(self, archive: Path) -> None:
        md5 = md5_file(archive, self.progress, f"verify {archive.name}")
        if md5 != self.expected[IMAGE_ZIP]:
            raise ChecksumError(
                IMAGE_ZIP, self.expected[IMAGE_ZIP], md5, str(archive),
                "Nothing was extracted; your file was left untouched.",
            )  # fmt: skip
        self.extract_images(archive, origin=str(archive), strict=False)

    def _take_image_dir(self, folder: Path, owned: Path | None) -> None:
        inside_root = is_within(folder, self.root)
        move = owned is not None or inside_root
        count = self._place_image_dir(folder, move=move)
        self.warnings.append(
            f"{IMAGE_DIR}/ was taken from the extracted folder {folder} ({count:,} images): "
            f"individual images cannot be checked against the md5 of {IMAGE_ZIP}"
            + (" (those listed in the checksums file were)." if self._lists_images() else ".")
        )
        self.manifest["images"] = {"count": count, "archive_md5": None, "source": str(folder)}
        self._save_manifest()

    def _lists_images(self) -> bool:
        return any(k.startswith(IMAGE_DIR + "/") for k in self.user_md5)

    # ---- summary

    def finish_checks(self) -> None:
        """Warn about counts that do not add up (a subset may be deliberate)."""
        n_attr, _ = _scan_attr_file(self.root / ATTR_FILE)
        splits = _scan_partition_file(self.root / PARTITION_FILE)
        n_part = sum(splits.values())
        n_images = (self.manifest.get("images") or {}).get("count", 0)
        if n_attr != n_part:
            self.warnings.append(
                f"{ATTR_FILE} lists {n_attr:,} images but {PARTITION_FILE} lists {n_part:,}."
            )
        if n_images != n_part:
            self.warnings.append(
                f"{IMAGE_DIR}/ holds {n_images:,} images but {PARTITION_FILE} lists {n_part:,}."
            )

    def result(
        self,
        source: str | None,
        location: str | None,
        attempts: list[SourceAttempt],
        up_to_date: bool = False,
    ) -> FetchResult:
        verified = {
            name: entry["md5"]
            for name, entry in self.manifest["files"].items()
            if name != IMAGE_ZIP and self.file_ok(name)
        }
        images = self.manifest.get("images") or {}
        if images.get("archive_md5"):
            verified[IMAGE_ZIP] = images["archive_md5"]
        skipped = [n for n in OPTIONAL_FILES if not self.file_ok(n)]
        splits = _scan_partition_file(self.root / PARTITION_FILE)
        return FetchResult(
            root=self.root,
            source=source,
            location=location,
            verified=verified,
            fetched=dict(self.fetched),
            skipped_optional=skipped,
            warnings=list(self.warnings),
            attempts=attempts,
            n_images=int(images.get("count", 0)),
            split_counts=splits,
            up_to_date=up_to_date,
        )


# ---------------------------------------------------------------------------------------------
# Failure message


def _all_failed(
    attempts: list[SourceAttempt], missing: list[str], hints: list[str]
) -> DownloadError:
    lines = [f"Could not fetch CelebA: still missing {', '.join(missing)}. Sources tried:"]
    for a in attempts:
        status = f"failed: {a.error}" if a.error else "ok, but did not have everything"
        lines.append(f"  - {a.source} ({a.location}): {status}")
    if not attempts:
        lines.append("  (none)")
    return DownloadError("\n".join(lines), "\n".join([*hints, manual_download_hint()]))


def manual_download_hint() -> str:
    """How to download CelebA by hand and hand it to ``faceattr data fetch celeba --from``."""
    required = f"Img/{IMAGE_ZIP}, Anno/{ATTR_FILE}, Eval/{PARTITION_FILE}"
    optional = f"Anno/{IDENTITY_FILE}, Anno/{LANDMARKS_FILE}, Anno/{BBOX_FILE}"
    return (
        "Download the files by hand, then run "
        "`faceattr data fetch celeba --root DIR --from FOLDER_OR_ZIP`:\n"
        f"  - from the official Google Drive folder ({DRIVE_FOLDER_URL}, linked from "
        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html): "
        f"{required} (required) and {optional} (optional);\n"
        f"  - or Kaggle's copy (`kaggle datasets download -d {KAGGLE_DATASET}`): its zip holds "
        f"list_attr_celeba.csv, list_eval_partition.csv and {IMAGE_DIR}/{IMAGE_DIR}/; pass "
        "the zip or the extracted folder to --from.\n"
        "Or serve the official file names from any web server and use --mirror URL "
        "(with --checksums FILE for a copy that is not the official one)."
    )


# ---------------------------------------------------------------------------------------------
# Annotation files


def _scan_attr_file(path: Path) -> tuple[int, list[str]]:
    """``(number of image lines, attribute names)`` of an official-format attribute file."""
    try:
        with open(path, "rb") as f:
            first = f.readline().decode("ascii", "replace").strip()
            names = f.readline().decode("ascii", "replace").split()
            rows = sum(1 for line in f if line.strip())
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror}.") from None
    if not first.isdigit():
        raise DataError(
            f"{path.name} does not start with the image count line (found {first[:40]!r})."
        )
    if int(first) != rows:
        raise DataError(f"{path.name} announces {int(first):,} images but holds {rows:,} lines.")
    return rows, names


def _scan_partition_file(path: Path) -> dict[str, int]:
    """Images per split of an official-format partition file (``NNNNNN.jpg 0|1|2``)."""
    counts = {"train": 0, "valid": 0, "test": 0}
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                fields = raw.split()
                if not fields:
                    continue
                split = _SPLIT_CODES.get(fields[-1].decode("ascii", "replace"))
                if len(fields) != 2 or split is None:
                    raise DataError(
                        f"{path.name}, line {lineno}: expected 'NNNNNN.jpg 0|1|2', found "
                        f"{raw.decode('utf-8', 'replace').strip()[:60]!r}."
                    )
                counts[split] += 1
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror}.") from None
    return counts


def convert_kaggle_csv(csv_path: Path, txt_path: Path) -> None:
    """Write Kaggle's ``list_*.csv`` as the official whitespace-separated ``.txt`` (CRLF).

    The kind is taken from the csv's file name. Attribute values become ``-1``/`` 1`` (a ``0``
    is read as ``-1``); the attribute and partition files reproduce the official bytes.
    Raises :class:`~faceattr.errors.DataError` for a malformed csv.
    """
    kind = csv_path.name
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"Cannot read {csv_path}: {exc}.") from None
    rows = [r for r in rows if r]
    if not rows:
        raise DataError(f"{csv_path} is empty.")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{csv_path}, line {i}: {len(row)} columns where the header has {len(header)}."
            )
    lines: list[str] = []
    try:
        if kind == KAGGLE_CSV[ATTR_FILE]:
            if header[1:] != list(CELEBA_ATTRIBUTES):
                raise DataError(
                    f"{csv_path} does not have the 40 CelebA attribute columns in official order "
                    f"(found {', '.join(header[1:6])}, ...)."
                )
            lines.append(str(len(body)))
            lines.append(" ".join(CELEBA_ATTRIBUTES) + " ")
            for row in body:
                # Official spacing: "000007.jpg 1 -1  1 ...": the first value unpadded, the
                # others right-aligned in two characters.
                values = [1 if int(v) > 0 else -1 for v in row[1:]]
                lines.append(
                    f"{row[0].strip()} {values[0]}" + "".join(f" {v:2d}" for v in values[1:])
                )
        elif kind == KAGGLE_CSV[PARTITION_FILE]:
            for row in body:
                lines.append(f"{row[0].strip()} {int(row[1])}")
        elif kind in (KAGGLE_CSV[LANDMARKS_FILE], KAGGLE_CSV[BBOX_FILE]):
            lines.append(str(len(body)))
            # The official landmark header omits the image column; the box header names it.
            # Column widths as in the official files: "000001.jpg    95  71 226 313" and
            # "000001.jpg 69  109  106  113   77  142   73  152  108  154".
            landmarks = kind == KAGGLE_CSV[LANDMARKS_FILE]
            lines.append(" ".join(header[1:] if landmarks else header) + " ")
            first, rest = (3, 5) if landmarks else (6, 4)
            for row in body:
                values = [int(v) for v in row[1:]]
                text = f"{values[0]:{first}d}" + "".join(f"{v:{rest}d}" for v in values[1:])
                lines.append(row[0].strip() + text)
        else:
            raise DataError(f"{csv_path.name} is not one of Kaggle's CelebA csv files.")
    except ValueError as exc:
        raise DataError(f"{csv_path} holds a value that is not an integer ({exc}).") from None
    try:
        with open(txt_path, "w", encoding="ascii", newline="") as out:
            out.write("".join(line + "\r\n" for line in lines))
    except OSError as exc:
        with contextlib.suppress(OSError):
            txt_path.unlink()
        raise disk_error(txt_path, exc) from None


# ---------------------------------------------------------------------------------------------
# Extracted files


def _largest_image_dir(base: Path) -> Path | None:
    """The folder under ``base`` holding the most image files."""
    best: tuple[int, Path] | None = None
    for folder, _, filenames in os.walk(base):
        n = sum(1 for f in filenames if f.lower().endswith(IMAGE_SUFFIXES))
        if n and (best is None or n > best[0]):
            best = (n, Path(folder))
    return best[1] if best else None


def _is_html_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return looks_like_html(f.read(512), "")
