"""Progress a person can watch: what a running step prints for the terminal of `tunepipe run`.

A step writes progress as ordinary lines on its standard output, each starting with `MARKER`, so
that they are in the step's log on Kubeflow exactly as they are locally. `tunepipe run` sends the
steps' output to its log file (kfp.local prints every line of a task's output); `Tee` is what it
writes them through: every line goes to the log, and the marked ones are shown on the terminal too.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import time
from collections.abc import Callable

MARKER = "tunepipe: progress: "
# The line each step prints when it ends: how long it took to start (interpreter, imports, the
# task's arguments) and how long its work took. `bench/whole_run` reads it from the run's log.
TIMING = "tunepipe: timing: "
# How a step's one-line error starts (`pipeline.launcher.user_errors`).
ERROR = "tunepipe: error: "
# The one-line errors of the steps the run's `Tee` passed, as the steps' error file holds them
# ({"step", "message"}): what `tunepipe run` says when a full disk kept a step from writing that file.
step_errors: list[dict[str, str]] = []


def report(step: str, message: str) -> None:
    """One progress line of `step`, e.g. `tune: trial 3 of 10 ...`, flushed at once."""
    print(f"{MARKER}{step}: {message}", file=sys.stdout, flush=True)


def timing(step: str, startup_s: float, work_s: float) -> None:
    print(f"{TIMING}{step}: start-up {startup_s:.2f} s, work {work_s:.2f} s", file=sys.stdout, flush=True)


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Tee(io.TextIOBase):
    """A text stream that writes everything to `log` and hands each complete progress line (the
    text after the marker) to `show`; the steps' one-line errors it passes go to `step_errors`.

    A log that cannot be written (a full disk) is given up, not the run: its descriptor is pointed
    at /dev/null, so that whatever writes to it (this stream, the root logger's handler) goes on
    without an error, what it holds so far stays as it is, and the terminal goes on."""

    def __init__(self, log: io.TextIOBase, show: Callable[[str], None]):
        self._log, self._show, self._pending = log, show, ""
        self._lock = threading.Lock()  # kfp.local prints the tasks of a ParallelFor from threads
        step_errors.clear()  # a Tee is one run's

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._write_log(text)
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
        for line in lines:
            # kfp.local prints a task's lines as they come; other output may precede the marker.
            if (at := line.find(MARKER)) >= 0:
                self._show(line[at + len(MARKER):].rstrip())
            elif (at := line.find(ERROR)) >= 0:
                step, _, message = line[at + len(ERROR):].rstrip().partition(": ")
                step_errors.append({"step": step, "message": message})
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._write_log("")

    def _write_log(self, text: str) -> None:
        """Written through at once, so that a full disk is met here, not when the log is closed."""
        try:
            self._log.write(text)
            self._log.flush()
        except OSError:
            with contextlib.suppress(OSError, ValueError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self._log.fileno())
                os.close(null)
                self._log.flush()  # what the log's buffer still held goes to /dev/null


class Clock:
    """Elapsed time and an estimate of what remains of `total` units of work."""

    def __init__(self, total: int | None = None):
        self.started, self.total = time.monotonic(), total

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self, done: int) -> float | None:
        if not self.total or done <= 0:
            return None
        return self.elapsed() / done * max(0, self.total - done)
