"""How far an evaluation is: the running count of rows fed to TFMA, reported to a caller's
callable every few seconds or every many rows.

The feed (`components.evaluate.tfma_inputs`) counts each batch once TFMA's per-batch stages have
taken it (model predictions, slicing, the metric combiners' inputs), in the same process on the
DirectRunner. A Beam DoFn is pickled with its pipeline, so it holds a token, not the callable: the
token finds the `RowProgress` registered here by the run. Where the DoFn runs in another process
(a distributed runner, or the DirectRunner's multi_processing mode) the token finds nothing and
only the final count is reported.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

# Report at most this often: whichever comes first.
EVERY_SECONDS = 2.0
EVERY_ROWS = 100_000

_lock = threading.Lock()
_active: dict[str, RowProgress] = {}


class RowProgress:
    """Counts rows and calls `callback(rows so far)` when `every_seconds` have passed or
    `every_rows` rows have been added since the last call, and once more at the end."""

    def __init__(self, callback: Callable[[int], None], every_seconds: float | None = None,
                 every_rows: int | None = None, clock: Callable[[], float] = time.monotonic):
        self._callback = callback
        self._every_seconds = EVERY_SECONDS if every_seconds is None else every_seconds
        self._every_rows = EVERY_ROWS if every_rows is None else every_rows
        self._clock = clock
        self.rows = 0
        self._reported_rows = 0
        self._reported_at = clock()

    def add(self, rows: int) -> None:
        self.rows += rows
        if (self.rows - self._reported_rows >= self._every_rows
                or self._clock() - self._reported_at >= self._every_seconds):
            self._report()

    def finish(self) -> None:
        """The final count, unless it was just reported."""
        if self.rows != self._reported_rows:
            self._report()

    def _report(self) -> None:
        self._reported_rows, self._reported_at = self.rows, self._clock()
        self._callback(self.rows)


def register(progress: RowProgress) -> str:
    token = uuid.uuid4().hex
    with _lock:
        _active[token] = progress
    return token


def unregister(token: str) -> None:
    with _lock:
        _active.pop(token, None)


def add(token: str | None, rows: int) -> None:
    """Count `rows` for the run that registered `token`, if it runs in this process."""
    if token is None:
        return
    with _lock:
        progress = _active.get(token)
        if progress is not None:
            progress.add(rows)
