"""Reading an input file: only a regular file is opened.

A FIFO named ``photo.jpg``, a socket, a device (``/dev/zero``) or a link to one would block
a read forever, or never end it: :func:`open_regular` refuses them before opening (opening
some devices does something) and checks the opened descriptor again, having opened it
without blocking. Every reader of files the user names goes through it: image decoding
(:func:`faceattr.data.images.load_image`), hashing (:func:`faceattr.fileio.sha256_of`), the
index's walk.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import IO


class NotRegularFileError(OSError):
    """A path that is no regular file (a FIFO, socket, device, folder, or a link to one):
    never opened for reading. ``strerror`` says what it is."""


def file_kind(mode: int) -> str:
    """What a file of ``mode`` (``st_mode``) is, in words: "a FIFO (named pipe)", ..."""
    kinds = [
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISLNK, "a symbolic link"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def _not_regular(path: str | os.PathLike[str], mode: int) -> NotRegularFileError:
    code = errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL
    return NotRegularFileError(code, f"{file_kind(mode)}, not a regular file", os.fspath(path))


def check_regular(path: str | os.PathLike[str]) -> os.stat_result:
    """``path``'s stat (links followed); a :class:`NotRegularFileError` when it is no
    regular file, any other ``OSError`` of the stat as it comes."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, st.st_mode)
    return st


def open_regular(path: str | os.PathLike[str]) -> IO[bytes]:
    """``path`` opened for reading (binary), only when it is a regular file.

    A FIFO, socket or device (or a link to one) is refused before it is opened (opening some
    devices does something); the open itself does not block (a FIFO swapped in meanwhile
    cannot hang it), and the opened descriptor is checked again. Raises
    :class:`NotRegularFileError` or the ``OSError`` of the stat or open."""
    check_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        with contextlib.suppress(OSError, AttributeError):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
