"""Every result faceattr writes goes through here: atomic writes, clear disk errors, temp files.

- :func:`atomic_open` writes a temp file beside the target and renames it into place, so a
  crash, a kill or a full disk leaves either the old file or the complete new one, never a torn
  one and never a temp file (``keep_partial`` keeps what a streamed write got done instead).
- A disk-full, quota, read-only or permission error becomes a :class:`WriteError` that says
  what was being written, where, how much space is free and what is safe, instead of an
  ``OSError`` traceback.
- :func:`hold_lock` keeps a second process out of a folder that one is writing (a run
  directory), and takes over the lock of a process that died.
- :func:`remove_stale_temps` clears the temp files a killed process left behind, and
  :func:`check_free_space` refuses to start work whose results would not fit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from faceattr.errors import FaceAttrError, Interrupted

# Temp files are ".<target name>.<random>.tmp" beside the target (".tmp.onnx" where a
# library needs to see the extension).
TEMP_SUFFIX = ".tmp"
PARTIAL_SUFFIX = ".partial"

# Errors that only a write can cause: translated wherever they come from.
_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WRITE_ONLY = _SPACE | {errno.EROFS}
# Errors a read can cause too: translated only when they come from the write itself.
_ACCESS = {errno.EACCES, errno.EPERM}


class WriteError(FaceAttrError):
    """A result could not be written (disk full, read-only, no permission)."""


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space for this user under ``folder`` (its nearest existing parent), or None."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_write_error(exc: BaseException, *, from_write: bool = True) -> bool:
    """An ``OSError`` that :func:`write_error` explains (``from_write``: raised by the write
    itself, so permission errors count too)."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return False
    return exc.errno in _WRITE_ONLY or (from_write and exc.errno in _ACCESS)


def write_error(
    exc: OSError, path: str | os.PathLike, what: str = "file", kept: str | None = None
) -> WriteError:
    """The message for a failed write of ``what`` to ``path``; ``kept`` says what is safe."""
    path = Path(path)
    folder = path.parent
    code = exc.errno
    if code in _SPACE:
        free = free_bytes(folder)
        reason = "the file size limit was reached" if code == errno.EFBIG else "the disk is full"
        where = f" ({human_bytes(free)} free in {folder})" if free is not None else ""
        message = f"Could not write the {what} {path}: {reason}{where}."
        hint = "Free some space, or write somewhere else (another output folder or file name)."
    elif code == errno.EROFS:
        message = f"Could not write the {what} {path}: {folder} is on a read-only file system."
        hint = "Write somewhere else (another output folder or file name)."
    elif code in _ACCESS:
        message = f"Could not write the {what} {path}: permission denied."
        hint = f"Check the permissions of {folder}, or write somewhere else."
    else:
        message = f"Could not write the {what} {path}: {exc.strerror or exc}."
        hint = "Check the folder, or write somewhere else."
    kept = kept or f"Nothing was half-written: {path} is as it was before."
    return WriteError(message, f"{kept}\n{hint}")


class _CheckedFile:
    """A file object whose writes turn OS errors into :class:`WriteError` (the rest passes
    through), so an error raised by the write is told apart from one raised by a read."""

    def __init__(self, fh: IO, on_error: Any) -> None:
        self._fh = fh
        self._on_error = on_error

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise self._on_error(exc) from exc

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __iter__(self) -> Iterator:
        return iter(self._fh)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished temp file onto ``path`` with ordinary permissions (0666 & ~umask):
    temp files are created private (0600), which would otherwise stick to the result."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def temp_path(path: str | os.PathLike) -> Path:
    """A fresh temp name beside ``path`` (for writers that need a path, not a file object)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    what: str = "file",
    keep_partial: bool = False,
    **kwargs: Any,
) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync and rename it into place.

    A failure leaves the old ``path`` (or none) and no temp file. ``keep_partial`` (streamed
    results) instead renames what was written so far to ``path.partial`` when the body fails
    or is interrupted, and says so. OS errors of the write become a :class:`WriteError`
    naming ``what``.
    """
    path = Path(path)
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    kept = f"What was written before the error is kept in {partial}." if keep_partial else None

    def failed(exc: OSError) -> WriteError:
        return write_error(exc, path, what, kept)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise write_error(exc, path, what) from exc
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield _CheckedFile(fh, failed)  # type: ignore[misc]
            try:
                fh.flush()
                os.fsync(fh.fileno())
            except OSError as exc:
                raise failed(exc) from exc
        try:
            publish(tmp, path)
        except OSError as exc:
            raise failed(exc) from exc
    except BaseException as exc:
        if keep_partial and os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.replace(tmp, partial)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_write_error(exc, from_write=False):  # e.g. PIL writing to the file descriptor
            raise failed(exc) from exc  # type: ignore[arg-type]
        if keep_partial and type(exc) is KeyboardInterrupt and partial.exists():
            raise Interrupted(f"What was written so far is kept in {partial}.") from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str, *, what: str = "file") -> None:
    with atomic_open(path, "w", encoding="utf-8", what=what) as fh:
        fh.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, what: str = "file") -> None:
    with atomic_open(path, "wb", what=what) as fh:
        fh.write(data)


def stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Temp files of :func:`atomic_open` in ``folder`` (left by a killed process when no other
    process is writing there)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.glob(".*")
        if (p.name.endswith(TEMP_SUFFIX) or f"{TEMP_SUFFIX}." in p.name) and p.is_file()
    )


def remove_stale_temps(folder: str | os.PathLike) -> str | None:
    """Delete ``folder``'s stale temp files; a one-line note of what went, or None."""
    found = stale_temps(folder)
    size = 0
    for p in found:
        with contextlib.suppress(OSError):
            size += p.stat().st_size
            p.unlink()
    if not found:
        return None
    names = ", ".join(p.name for p in found[:3]) + (" ..." if len(found) > 3 else "")
    return (
        f"Removed {len(found)} temp file(s) ({human_bytes(size)}) left in {folder} by an "
        f"interrupted save: {names}"
    )


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Refuse to start when ``folder`` has less than ``need`` bytes free for ``what``."""
    free = free_bytes(folder)
    if free is not None and free < need:
        raise WriteError(
            f"Not enough free space in {folder} for {what}: about {human_bytes(need)} needed, "
            f"{human_bytes(free)} free.",
            "Free some space, or write somewhere else (another output folder).",
        )


class LockedError(FaceAttrError):
    """Another live process holds the folder's lock."""


def _holder(fd: int) -> dict[str, Any]:
    import json

    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {"pid": "?", "host": "?"}
    return data if isinstance(data, dict) else {}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError) as exc:
        return isinstance(exc, PermissionError)  # exists, owned by someone else
    return True


def _describe(holder: dict[str, Any]) -> str:
    started = f", started {holder['started']}" if holder.get("started") else ""
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')}{started}"


@contextlib.contextmanager
def hold_lock(
    folder: str | os.PathLike, name: str, *, what: str, note: Any = None
) -> Iterator[None]:
    """Hold ``folder/name`` while the block runs: the holder's PID, host and start time are
    in it, a second process gets a :class:`LockedError` saying who holds it. A lock left by a
    process that died (``kill -9``) is taken over, and ``note`` (a callable) is told so.
    The folder is created; it is removed again when the block leaves it empty."""
    import json
    import socket
    import sys
    from datetime import datetime

    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, folder / name, "lock file") from exc
    path = folder / name
    me: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:500],
    }
    fd = _acquire(path, what, me["host"])
    try:
        previous = _holder(fd)
        if previous and note is not None:
            note(f"Took over the lock of {folder} from {_describe(previous)}, which is no longer "
                 "running (it was interrupted).")  # fmt: skip
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
        except OSError as exc:
            raise write_error(exc, path, "lock file", "Nothing was written yet.") from exc
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when nothing was written


def _acquire(path: Path, what: str, host: str) -> int:
    """An open descriptor of ``path`` holding its lock (the file as it was, still unread)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; a live holder is told apart by its PID
        fcntl = None  # type: ignore[assignment]
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise write_error(exc, path, "lock file") from exc
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise _locked(path, what, holder) from None
            try:  # the holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
            continue
        holder = _holder(fd)
        if holder and holder.get("host") == host and _alive(holder.get("pid")):
            os.close(fd)
            raise _locked(path, what, holder)
        return fd
    raise LockedError(f"Could not take the lock {path}: it keeps changing hands.")


def _locked(path: Path, what: str, holder: dict[str, Any]) -> LockedError:
    command = f" ({holder['command']})" if holder.get("command") else ""
    return LockedError(
        f"The {what} {path.parent} is in use by {_describe(holder)}{command}.",
        "Wait for it to finish, or choose another output folder. If that process is gone "
        f"for good (a crashed machine sharing this folder), delete {path}.",
    )


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
