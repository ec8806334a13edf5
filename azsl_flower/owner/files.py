"""The owner's files: private folders, private files written atomically, read without links.

Everything an owner keeps (teachers, DP releases, run state) is private: a teacher is a
model of its data, the run state holds its end of the encrypted session. So every file is
written mode 0600 into a folder that is the owner's own: created 0700, or an existing one
that is not a symbolic link, belongs to this user and that nobody else may write into (a
group- or world-writable folder lets another user plant a link or swap a file). An
existing folder that others may only *read* is accepted: the files in it are 0600 and
their names are digests and run ids. Files are read without following a link, so a link
planted where a state file belongs is refused instead of read.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

__all__ = ["PrivateFileError", "open_private", "private_dir", "write_private"]


class PrivateFileError(OSError):
    """An owner folder or file is not private; the message names the path and the fix."""


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can write into: created 0700 (with its parents),
    or an existing one checked. Raises :class:`PrivateFileError` for a symbolic link, a
    folder of another user, or one that group or others may write into."""
    path = Path(path)
    with suppress(FileExistsError):
        path.mkdir(parents=True, mode=0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PrivateFileError(
            f"owner folder {path} is a symbolic link; the owner writes only into a folder of "
            f"its own: replace the link by a folder (mkdir {path}; chmod 700 {path})"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise PrivateFileError(f"owner folder {path} exists and is not a folder")
    if st.st_uid != os.geteuid():
        raise PrivateFileError(
            f"owner folder {path} belongs to user id {st.st_uid}, not to this owner "
            f"({os.geteuid()}); use a folder of its own (chmod 700)"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PrivateFileError(
            f"owner folder {path} is writable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); chmod 700 {path}"
        )
    return path


def write_private(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` (mode 0600) atomically: ``write`` fills a new temporary file beside
    it (never through a link: created exclusively), which is synced and renamed over
    ``path``, so a concurrent reader or a crash never sees half a file."""
    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def open_private(path: Path) -> Iterator[IO[bytes]]:
    """Open one of the owner's files for reading, never through a symbolic link
    (FileNotFoundError when it is not there; :class:`PrivateFileError` for a link)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PrivateFileError(
                f"owner file {path} is a symbolic link; the owner reads only its own files: "
                "delete the link"
            ) from None
        raise
    with os.fdopen(fd, "rb") as fh:
        yield fh
