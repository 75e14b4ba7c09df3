"""One `tunepipe run` at a time per output root.

Two runs on one output root would share kfp.local's cache, the tuner's resumable state and the
tracking store's view of which runs are live; the second run refuses at once, with one line naming
the run that holds the root (as a Kubeflow recurring run with max concurrency 1 skips a start while
the last one runs). The lock is an advisory `flock` on `<output root>/.run.lock`: the kernel
releases it when its holder ends, however it ends (SIGKILL included), so a killed run never leaves
a stale lock behind. The file's text, who holds it, is only for the message.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from components.errors import TunepipeError

LOCK_FILE = ".run.lock"


class RootBusy(TunepipeError):
    """Another run holds the output root."""


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


@contextlib.contextmanager
def held(output_root: Path) -> Iterator[None]:
    """Hold the output root for the duration of a run, or raise RootBusy at once."""
    output_root.mkdir(parents=True, exist_ok=True)
    path = output_root / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RootBusy(f"another tunepipe run ({_holder(path)}) is using the output root {output_root}; "
                           "this one was not started (wait for it, or give another --output-root)") from None
        try:
            handle.truncate(0)
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": dt.datetime.now().astimezone().isoformat(timespec="seconds")}))
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
