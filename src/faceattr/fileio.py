"""Every result faceattr writes goes through here: atomic writes, clear disk errors, temp files.

- :func:`atomic_open` writes a temp file beside the target and renames it into place, so a
  crash, a kill or a full disk leaves either the old file or the complete new one, never a torn
  one and never a temp file (``keep_partial`` keeps what a streamed write got done instead).
- A command's outputs (``overwrite=True/False`` given to :func:`atomic_open`, or
  :func:`check_output` before the work starts) are never written over one of its
  :class:`Inputs` (by identity: links and folders cannot disguise one), and never over an
  existing file unless ``overwrite``; the check is repeated when the file is published, without
  a window (a hard link that fails when the name exists). Files faceattr keeps up to date by
  design (a run directory's own files, the index database, the ``data prepare`` cache) pass
  no ``overwrite`` and are replaced as before.
- Inputs are read only when they are regular files (:func:`faceattr.reading.open_regular`,
  :func:`sha256_of`): a FIFO, socket or device is refused before it is opened.
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
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from faceattr.errors import FaceAttrError, Interrupted, UsageError
from faceattr.reading import file_kind, open_regular

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


def publish(
    tmp: str | os.PathLike, path: str | os.PathLike, *, overwrite: bool = True, what: str = "file"
) -> None:
    """Move a finished temp file onto ``path`` with ordinary permissions (0666 & ~umask):
    temp files are created private (0600), which would otherwise stick to the result.

    ``overwrite=False`` never replaces a file that is there (one made meanwhile included): a
    hard link fails when the name exists, where a rename would replace it. A file system
    without hard links falls back to looking first."""
    os.chmod(tmp, 0o666 & ~_umask())
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists(Path(path), what) from None
    except OSError:  # no hard links here (FAT, some network file systems)
        if os.path.lexists(path):
            raise _exists(Path(path), what) from None
        os.replace(tmp, path)
        return
    with contextlib.suppress(OSError):
        os.unlink(tmp)


class Inputs:
    """The files a command reads, known by identity (device and inode, links followed), so
    an output is never written over one of them, whatever name, link or folder reaches it.

    A folder given stands for the files directly in it (a run directory)."""

    def __init__(self, paths: Iterable[str | os.PathLike[str]] = ()) -> None:
        self._files: dict[tuple[int, int], str] = {}
        for p in paths:
            self.add(p)

    def add(self, path: str | os.PathLike[str]) -> None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):  # missing or unreadable: nothing there to protect
            return
        if stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError), os.scandir(path) as entries:
                for entry in entries:
                    if entry.is_file():
                        self.add(entry.path)
            return
        self._files.setdefault((st.st_dev, st.st_ino), os.fspath(path))

    def find(self, path: str | os.PathLike[str]) -> str | None:
        """The input that ``path`` is (or reaches through links), or None."""
        if not self._files:
            return None
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return self._files.get((st.st_dev, st.st_ino))

    def __len__(self) -> int:
        return len(self._files)


def _exists(path: Path, what: str) -> UsageError:
    return UsageError(
        f"The {what} {path} already exists; faceattr does not replace a file unless asked.",
        "Pass `overwrite=True` to replace it, or choose another name.",
    )


def input_error(path: str | os.PathLike[str], source: str, what: str) -> UsageError:
    """The refusal to write ``what`` at ``path``, which is the input ``source``."""
    same_name = os.path.abspath(path) == os.path.abspath(source)
    how = "" if same_name else " (the same file, reached through a link)"
    return UsageError(
        f"Refusing to write the {what} {path}: it is the input {source}{how}, which writing "
        "it would destroy.",
        "Choose another output name or folder; an output never replaces an input, even with "
        "`overwrite=True`.",
    )


def check_output(
    path: str | os.PathLike[str],
    *,
    what: str = "file",
    inputs: Inputs | None = None,
    overwrite: bool = False,
) -> Path:
    """Where a command may write its ``what`` named ``path``: never one of ``inputs``, never a
    folder, device or pipe, and an existing file only with ``overwrite``. Else a
    :class:`UsageError` (exit 2) naming both files, or ``overwrite=True``. A link at
    ``path`` is followed: the file it leads to is the one replaced (the link stays), so
    ``/dev/stdout`` is never replaced by a file. Call it before the work, so nothing is spent
    on a result that cannot be written; :func:`atomic_open` checks again when it publishes.
    """
    path = Path(path)
    source = inputs.find(path) if inputs is not None else None
    if source is not None:
        raise input_error(path, source, what)
    try:
        mode = os.stat(path).st_mode  # through a link: what it leads to
    except (OSError, ValueError):  # nothing there, a broken link (replaced: it is a file of
        mode = None  # its own), or nothing to look at (the write says why)
    if mode is not None and stat.S_ISDIR(mode):
        raise UsageError(f"The {what} {path} is a folder.", "Name a file, not a folder.")
    if mode is not None and not stat.S_ISREG(mode):  # /dev/null, a FIFO, a terminal
        raise UsageError(
            f"The {what} {path} is {file_kind(mode)}; faceattr writes its outputs as "
            "regular files and never replaces anything else.",
            "Name a file instead (for a result on standard output: `json=True`).",
        )
    if mode is not None and os.path.islink(path):
        path = Path(os.path.realpath(path))  # the file is replaced, the link stays
    if not overwrite and os.path.lexists(path):
        raise _exists(path, what)
    return path


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
    overwrite: bool | None = None,
    inputs: Inputs | None = None,
    **kwargs: Any,
) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync and rename it into place.

    A failure leaves the old ``path`` (or none) and no temp file. ``keep_partial`` (streamed
    results) instead renames what was written so far to ``path.partial`` when the body fails
    or is interrupted, and says so. OS errors of the write become a :class:`WriteError`
    naming ``what``.

    A command's output passes ``overwrite`` (and its ``inputs``): :func:`check_output` runs
    first, and without ``overwrite`` the file is published only if no file took its name
    meanwhile. ``overwrite=None`` (the default) is for faceattr's own files, replaced by design.
    """
    path = Path(path)
    if overwrite is not None:  # through a link: the file it leads to
        path = check_output(path, what=what, inputs=inputs, overwrite=overwrite)
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
            if inputs is not None and (source := inputs.find(path)) is not None:
                raise input_error(path, source, what)  # it became one meanwhile
            publish(tmp, path, overwrite=overwrite is not False, what=what)
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


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    *,
    what: str = "file",
    overwrite: bool | None = None,
    inputs: Inputs | None = None,
) -> None:
    with atomic_open(path, "w", encoding="utf-8", what=what, overwrite=overwrite,
                     inputs=inputs) as fh:  # fmt: skip
        fh.write(text)


def atomic_write_bytes(
    path: str | os.PathLike,
    data: bytes,
    *,
    what: str = "file",
    overwrite: bool | None = None,
    inputs: Inputs | None = None,
) -> None:
    with atomic_open(path, "wb", what=what, overwrite=overwrite, inputs=inputs) as fh:
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
    except (ValueError, RecursionError):  # not JSON, cut short, or nested past any sense
        return {"pid": "?", "host": "?"}
    return data if isinstance(data, dict) else {}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError) as exc:
        return isinstance(exc, PermissionError)  # exists, owned by someone else
    return True


def _describe(holder: dict[str, Any]) -> str:
    from faceattr.redaction import redact

    started = f", started {holder['started']}" if holder.get("started") else ""
    return redact(f"process {holder.get('pid', '?')} on {holder.get('host', '?')}{started}")


@contextlib.contextmanager
def hold_lock(
    folder: str | os.PathLike, name: str, *, what: str, note: Any = None
) -> Iterator[None]:
    """Hold ``folder/name`` while the block runs: the holder's PID, host, start time and
    command line (its passwords hidden, :func:`faceattr.redaction.redact`) are in it, readable
    by its owner only (0600); a second process gets a :class:`LockedError` saying who holds
    it. A lock left by a process that died (``kill -9``) is taken over, and ``note`` (a
    callable) is told so. A lock file that is a link or no regular file is never opened.
    The folder is created; it is removed again when the block leaves it empty."""
    import json
    import socket
    import sys
    from datetime import datetime

    from faceattr.redaction import redact

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
        # Redacted whole, then cut: a cut URL could lose the "@" that marks its password.
        "command": redact(" ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]))[:500],
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
        try:  # not through a link: it would write where the link points
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            if os.path.islink(path) or not os.path.isfile(path) and os.path.exists(path):
                raise _not_a_lock(path) from None
            raise write_error(exc, path, "lock file") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would block the read
            os.close(fd)
            raise _not_a_lock(path)
        with contextlib.suppress(OSError, AttributeError):  # one an older version left 0644
            os.fchmod(fd, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise _locked(path, what, holder) from None
            try:  # the holder may have removed the file between our open and our lock
                same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
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


def _not_a_lock(path: Path) -> LockedError:
    return LockedError(
        f"The lock file {path} is a link or not a regular file; faceattr does not open it.",
        f"Delete {path} (no faceattr process made it) and run the command again.",
    )


def _locked(path: Path, what: str, holder: dict[str, Any]) -> LockedError:
    from faceattr.redaction import redact

    command = f" ({redact(holder['command'])[:500]})" if holder.get("command") else ""
    return LockedError(
        f"The {what} {path.parent} is in use by {_describe(holder)}{command}.",
        "Wait for it to finish, or choose another output folder. If that process is gone "
        f"for good (a crashed machine sharing this folder), delete {path}.",
    )


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks; only a regular file is
    read (:func:`faceattr.reading.open_regular`: a FIFO or device never blocks it)."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
