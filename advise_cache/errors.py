"""The package's error hierarchy.

Every error a user can cause (a bad path, a wrong layout, a store that does not fit a
checkpoint) is an `AdviseCacheError`; the CLI prints its message on one line and exits
with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path

# The faults of the disk or of permissions, not of the program: a full disk or quota, a
# read-only or not-ours folder, a failing device. Writing code reports them in one line.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


class AdviseCacheError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""


class LayoutError(AdviseCacheError, FileNotFoundError):
    """A dataset root does not have the layout its adapter expects."""


class DecodeError(AdviseCacheError):
    """A video file could not be decoded."""


class WeightsError(AdviseCacheError):
    """Image-model weights could not be found or loaded."""


class StoreError(AdviseCacheError):
    """A store is missing, malformed, or does not fit the request."""


class DamagedFrameError(StoreError):
    """Stored frames whose bytes fail their crc32c check: `rows` of the token array, and once
    the store has named them, the `videos` (indices) they belong to."""

    def __init__(self, message: str, rows=(), videos=()):
        super().__init__(message)
        self.rows = list(rows)
        self.videos = list(videos)


class MismatchError(AdviseCacheError):
    """A checkpoint, a flag or a store does not fit another one."""


class DiskError(AdviseCacheError):
    """A file could not be written: the disk is full, read-only, or the folder is not ours."""


def _remedy(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space there or choose another folder"
    if code == errno.EIO:
        return "check the disk"
    return "choose a folder you can write to"


@contextmanager
def writing(path: Path, then: str = ""):
    """A storage fault (`STORAGE_ERRNOS`) while writing under `path` becomes one `DiskError`
    line naming the file, the fault and what to do, followed by `then` (how to continue)."""
    try:
        yield
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            raise
        where = e.filename or path
        raise DiskError(f"cannot write {where}: {e.strerror}; {_remedy(e.errno)}{then}") from e


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (libraries' messages run long), or its type."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__
