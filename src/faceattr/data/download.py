"""Generic HTTP download: resumable ``.part`` files (HTTP Range), hashed while streaming.

Standard library only (``urllib``), so fetching data adds no dependency. Nothing here knows
about CelebA: :mod:`faceattr.data.fetch` decides which URLs to fetch, verifies the digests this
module returns and moves a verified ``.part`` to its final name.

Errors split in two families:

* the exceptions defined here (:class:`HttpStatusError`, :class:`HtmlPageError`,
  :class:`TransferError`) describe a failure *of one source*; the caller may try another;
* :class:`~faceattr.errors.DownloadError` is raised for local problems (disk full, no
  permission), where trying another source would not help.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import shutil
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlsplit

from faceattr import __version__
from faceattr.errors import DownloadError
from faceattr.progress import NullProgress, Progress

CHUNK_SIZE = 1 << 20  # bytes read and written at a time (also the progress granularity)
DEFAULT_TIMEOUT = 30.0  # seconds to connect, and to wait for each chunk, before giving up
RETRIES = 3  # extra attempts after a cut connection, a timeout or a 5xx answer
RETRY_WAIT = 0.25  # seconds before the first retry; doubles each time
USER_AGENT = f"faceattr/{__version__} (python urllib)"
HTML_LIMIT = 1 << 20  # at most this much of an HTML page is kept to explain a failure


class SourceFailure(Exception):
    """A URL could not give us its file; another source may still work."""


class HttpStatusError(SourceFailure):
    """The server answered with an HTTP error status (404, 403, 500, ...)."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason} for {url}")
        self.url = url
        self.status = status
        self.reason = reason


class HtmlPageError(SourceFailure):
    """The server answered with an HTML page where a data file was expected.

    Raised before anything is written, so a quota or login page never lands in a data file.
    ``body`` holds the start of the page (for Google Drive's confirmation forms), ``url`` the
    address after redirects.
    """

    def __init__(self, url: str, content_type: str, body: bytes) -> None:
        self.url = url
        self.content_type = content_type
        self.body = body
        super().__init__(f"{url} answered with a web page ({self.title!r}) instead of the file")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def title(self) -> str:
        match = re.search(r"<title[^>]*>(.*?)</title>", self.text, re.I | re.S)
        return " ".join(match.group(1).split()) if match else "untitled page"


class TransferError(SourceFailure):
    """The connection failed (refused, timed out, cut). A partial ``.part`` is kept."""


def make_opener() -> tuple[urllib.request.OpenerDirector, CookieJar]:
    """A urllib opener that keeps cookies (Google Drive's ``download_warning`` needs them)."""
    jar = CookieJar()
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar)), jar


def md5_file(path: Path, progress: Progress | None = None, task: str | None = None) -> str:
    """Hex md5 of a file, read in chunks (reporting bytes to ``progress`` when given)."""
    digest = hashlib.md5()
    size = path.stat().st_size
    if progress is not None:
        progress.start(task or f"verify {path.name}", size, unit="bytes")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
                if progress is not None:
                    progress.advance(len(chunk))
    finally:
        if progress is not None:
            progress.finish()
    return digest.hexdigest()


def looks_like_html(head: bytes, content_type: str) -> bool:
    """True when the first bytes of a response are a web page rather than data.

    Data files in this project (zip, jpg, whitespace-separated text, csv) never start with
    ``<``; a server's ``text/html`` type alone is not trusted because some serve ``.txt``
    files that way.
    """
    start = head.lstrip()[:64].lower()
    if start.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")):
        return True
    return "text/html" in content_type.lower() and start.startswith(b"<")


def disk_error(path: Path, exc: OSError, needed: int | None = None) -> DownloadError:
    """A clear :class:`DownloadError` for a local write failure (disk full, no permission)."""
    where = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        try:
            free = shutil.disk_usage(where).free
            room = f" ({format_bytes(free)} free"
            room += f", about {format_bytes(needed)} needed)" if needed else ")"
        except OSError:
            room = ""
        return DownloadError(
            f"No space left on the disk while writing {path}{room}.",
            f"Free some space on the disk holding {where}, or choose another dataset folder "
            "(`root=DIR`); partial files were removed.",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DownloadError(
            f"No permission to write {path} ({exc.strerror}).",
            "Choose a dataset folder (`root=DIR`) you can write to, or fix the permissions of "
            f"{where}.",
        )
    return DownloadError(
        f"Cannot write {path}: {exc.strerror or exc}.", f"Check the disk at {where}."
    )


def format_bytes(n: int | None) -> str:
    """``1536 -> '1.5 KiB'``; ``None -> 'unknown size'``."""
    if n is None:
        return "unknown size"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - loop always returns


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise a :class:`DownloadError` now, rather than half-way, if ``needed`` bytes won't fit."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # cannot tell: let the writes find out
    if needed > free:
        raise DownloadError(
            f"Not enough disk space for {what}: {format_bytes(needed)} needed, "
            f"{format_bytes(free)} free at {folder}.",
            "Free some space or choose another dataset folder (`root=DIR`); nothing was written.",
        )


def _host(url: str) -> str:
    return urlsplit(url).netloc or url


def _reason(exc: BaseException) -> str:
    """A short human text for a network exception (``URLError`` wraps the real one)."""
    inner = getattr(exc, "reason", None)
    if isinstance(inner, BaseException):
        exc = inner
    elif isinstance(inner, str) and inner:
        return inner
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _no_route(exc: BaseException) -> bool:
    """True for failures that retrying will not fix: nobody listens, no such host, no route,
    or a TLS problem."""
    inner = getattr(exc, "reason", None)
    if isinstance(inner, BaseException):
        exc = inner
    if isinstance(exc, (socket.gaierror, ssl.SSLError, ssl.CertificateError)):
        return True
    return isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.EADDRNOTAVAIL,
    )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``'bytes 100-199/1000' -> (100, 1000)``; ``'bytes */1000' -> (None, 1000)``."""
    if not value:
        return None, None
    match = re.match(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value)
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


@contextlib.contextmanager
def _task(progress: Progress, name: str, total: int | None, completed: int) -> Iterator[None]:
    """A byte-counting progress task; a resumed download starts at ``completed``."""
    progress.start(name, total, unit="bytes")
    if completed:
        progress.advance(completed)
    try:
        yield
    finally:
        progress.finish()


def download_to_part(
    url: str,
    part: Path,
    *,
    opener: urllib.request.OpenerDirector | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Progress | None = None,
    task: str | None = None,
    retries: int = RETRIES,
) -> str:
    """Download ``url`` into ``part``, resuming what is already there; return the file's md5.

    An existing ``part`` is continued with ``Range: bytes=N-``; a server that ignores Range
    (answers 200) makes the download start over. A cut connection, timeout or 5xx answer is
    retried ``retries`` times, resuming each time; if it still fails, ``part`` is kept so the
    next run resumes, and :class:`TransferError` is raised. The caller verifies the digest
    and moves ``part`` to its final name.

    Raises :class:`HttpStatusError` (404 ...), :class:`HtmlPageError` (a web page instead of
    data: nothing is written) and :class:`TransferError`; a local write failure deletes
    ``part`` and raises :class:`~faceattr.errors.DownloadError`.
    """
    opener = opener or make_opener()[0]
    progress = progress or NullProgress()
    task = task or part.name.removesuffix(".part")
    attempt = 0

    def retry_or_raise(message: str) -> None:
        nonlocal attempt
        if attempt >= retries:
            raise TransferError(message)
        attempt += 1
        progress.log(f"{task}: {message}; retrying ({attempt}/{retries})")
        time.sleep(RETRY_WAIT * 2 ** (attempt - 1))

    while True:
        offset = part.stat().st_size if part.is_file() else 0
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                # Our .part is already as long as the file (or longer): check, else restart.
                _, total = _content_range(exc.headers.get("Content-Range"))
                if total == offset:
                    return md5_file(part)
                part.unlink()
                continue
            if exc.code in (429, 500, 502, 503, 504):
                retry_or_raise(f"HTTP {exc.code} {exc.reason} from {_host(url)}")
                continue
            raise HttpStatusError(url, exc.code, str(exc.reason)) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = _reason(exc)
            if _no_route(exc):  # refused, unknown host, no route, bad TLS: fail fast
                raise TransferError(f"cannot connect to {_host(url)}: {reason}") from None
            retry_or_raise(f"request to {_host(url)} failed ({reason})")  # timeouts, resets
            continue

        with response:
            result = _stream(response, url, part, offset, progress, task)
        if isinstance(result, str):
            return result
        retry_or_raise(result.message)


class _Cut:
    """What :func:`_stream` returns when the connection broke (the caller retries)."""

    def __init__(self, message: str) -> None:
        self.message = message


def _stream(
    response: http.client.HTTPResponse,
    url: str,
    part: Path,
    offset: int,
    progress: Progress,
    task: str,
) -> str | _Cut:
    """Write one response into ``part``; the md5 of the whole file, or a :class:`_Cut`."""
    content_type = response.headers.get("Content-Type", "") or ""
    length_text = response.headers.get("Content-Length") or ""
    length = int(length_text) if length_text.isdigit() else None
    if response.status == 206:
        start, total = _content_range(response.headers.get("Content-Range"))
        if start != offset:  # not the range we asked for: start over
            with contextlib.suppress(OSError):
                part.unlink()
            return _Cut(f"server sent bytes from {start}, not {offset}; restarting")
        if total is None and length is not None:
            total = offset + length
    else:
        offset = 0  # the server ignored Range (or there was nothing to resume): start over
        total = length

    try:
        head = response.read(CHUNK_SIZE)
    except (http.client.HTTPException, OSError) as exc:
        return _Cut(f"connection lost ({_reason(exc)})")
    if (offset == 0 and looks_like_html(head, content_type)) or (
        offset and "text/html" in content_type.lower()
    ):
        try:
            body = head + response.read(HTML_LIMIT)
        except (http.client.HTTPException, OSError):
            body = head
        raise HtmlPageError(response.geturl() or url, content_type, body)

    if total is not None:
        check_free_space(part.parent, total - offset, part.name.removesuffix(".part"))

    digest = hashlib.md5()
    if offset:
        progress.log(f"{task}: resuming after {format_bytes(offset)}")
        with open(part, "rb") as f:  # the digest covers the bytes already on disk
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
    written = offset
    try:
        out = open(part, "ab" if offset else "wb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise _disk_failure(part, exc, total) from None
    cut: _Cut | None = None
    with _task(progress, task, total, offset):
        try:
            chunk = head
            while chunk:
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
                progress.advance(len(chunk))
                try:
                    chunk = response.read(CHUNK_SIZE)
                except (http.client.HTTPException, OSError) as exc:
                    cut = _Cut(f"connection lost after {format_bytes(written)} ({_reason(exc)})")
                    break
            out.close()  # a full disk may only show when the last buffer is flushed
        except OSError as exc:  # only writes get here: read errors are caught above
            with contextlib.suppress(OSError):
                out.close()
            raise _disk_failure(part, exc, total) from None
    if cut is not None:
        return cut
    if total is not None and written < total:
        # http.client does not raise on a short body with a Content-Length: check ourselves.
        return _Cut(f"connection lost after {format_bytes(written)} of {format_bytes(total)}")
    if total is not None and written > total:
        part.unlink()
        return _Cut(f"received {written} bytes, more than the announced {total}; restarting")
    return digest.hexdigest()


def _disk_failure(part: Path, exc: OSError, total: int | None) -> DownloadError:
    """Remove ``part`` (a local write failed, so it cannot be trusted) and describe why."""
    with contextlib.suppress(OSError):
        os.remove(part)
    return disk_error(part, exc, total)
