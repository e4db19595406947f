"""Which exceptions are the user's mistakes, and their one-line message.

A user error is a :class:`~data_pipeline.errors.UserInputError` (bad config, path, shard, checkpoint, run name) or
an ``OSError`` caused by the user's input or environment (a missing or unwritable path, a full or read-only disk).
The CLI prints it as ``bigbatch COMMAND: MESSAGE`` with exit code 2; a Ray run ends at once instead of retrying
it (cluster/ray_failures.py). Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re

from data_pipeline.errors import UserInputError

# errno values that retrying cannot fix and that name a path the user gave (or the disk it lives on)
USER_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                         errno.ENOSPC, errno.EDQUOT, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV})

# the same, raised by type without an errno (e.g. FileNotFoundError("URL: not found") from fsspec)
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)

# torch's DataLoader re-raises a worker's exception as the same type with the worker's traceback as its message
_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.DOTALL)


def is_user_error(exc: BaseException) -> bool:
    """True for mistakes in the user's input or environment: retrying or a traceback cannot help."""
    if isinstance(exc, UserInputError):
        return True
    return isinstance(exc, USER_OS_ERRORS) or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line; the original message of a DataLoader worker's re-raised exception."""
    text = str(exc)
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        where = exc.filename if exc.filename2 is None else f"{exc.filename} → {exc.filename2}"
        text = f"{where}: {exc.strerror}"
    elif isinstance(exc, FileNotFoundError) and text and not any(c.isspace() for c in text.strip()):
        text = f"{text.strip()}: no such file, or it cannot be reached"  # fsspec names only the path or URL
    elif _WRAPPED.match(text):
        last = text.rstrip().splitlines()[-1]  # "pkg.module.ClassName: message"
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or type(exc).__name__


def user_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, None for anything else (a bug: keep its traceback)."""
    return one_line(exc) if is_user_error(exc) else None
