"""Errors a user can cause, and how they reach the terminal.

Anything a user can get wrong (a missing file, a bad config value, a table without its label column)
raises `TunepipeError` with one line that says what is wrong and where. The CLI prints that line and
exits non-zero; a traceback is only for bugs. A full disk is the environment's doing, whichever
library's error says it: `disk_full` finds it there, so that it is one line too.
"""
import errno
import re
from collections.abc import Iterator


class TunepipeError(Exception):
    """A problem with the user's input, config or environment, explained in one line."""


class ConfigError(TunepipeError):
    """The pipeline configuration is invalid."""


class DataError(TunepipeError):
    """The input data cannot be used as it is."""


class DiskFull(TunepipeError):
    """A disk, or a quota, is full: said in one line, with the path where the error says it."""

    def __init__(self, path: str | None = None):
        super().__init__(f"no space left on device ({path})" if path else "no space left on device")
        self.path = path


_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How a full disk reads once a library has re-raised it as its own error (Beam, TensorFlow, h5py,
# pyarrow: the OS's words; SQLite, under SQLAlchemy and MLflow: its own).
_FULL_TEXT = re.compile(r"no space left on device|disk quota exceeded|database or disk is full", re.IGNORECASE)
# Where those messages name the file: `...: '/path'` (Python), `name = '/path'` (h5py),
# `/path; No space left on device` (TensorFlow).
_FULL_PATH = re.compile(r"(?:device|exceeded): '([^']+)'|name = '([^']+)'|([^\s;'\"]+); no space left on device",
                        re.IGNORECASE)


def chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it (`__cause__`, else `__context__`), and so on: a library's error
    wrapping the one that says what happened."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def disk_full(error: BaseException) -> DiskFull | None:
    """`error` as a DiskFull if it, or an error in its chain, says a disk is full; else None."""
    found: DiskFull | None = None
    for current in chain(error):
        if isinstance(current, DiskFull):
            return current
        text = str(current)
        if (isinstance(current, OSError) and current.errno in _FULL_ERRNOS) or _FULL_TEXT.search(text):
            # Of a copy's or a rename's two files, the second is the one written.
            filename = (current.filename2 or current.filename) if isinstance(current, OSError) else None
            match = _FULL_PATH.search(text)
            path = filename or (next(group for group in match.groups() if group) if match else None)
            if path:
                return DiskFull(str(path))
            found = found or DiskFull()
    return found
