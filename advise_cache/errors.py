"""The package's error hierarchy.

Every error a user can cause (a bad path, a wrong layout, a store that does not fit a
checkpoint) is an `AdviseCacheError`; the CLI prints its message on one line and exits
with status 2. Anything else is a bug and keeps its traceback.
"""


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


class MismatchError(AdviseCacheError):
    """A checkpoint, a flag or a store does not fit another one."""


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (libraries' messages run long), or its type."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__
