"""One `tunepipe run` at a time per output root: a second one refuses at once with one line naming
the first, and a killed run leaves no lock behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline import run_lock

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline import run_lock
    with run_lock.held(Path(sys.argv[1])):
        print("holding", flush=True)
        time.sleep(600)
""")


def holder(root) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def test_a_second_run_on_the_same_output_root_refuses_naming_the_first(tmp_path):
    first = holder(tmp_path)
    try:
        with pytest.raises(run_lock.RootBusy) as refused:
            with run_lock.held(tmp_path):
                pytest.fail("two runs held one output root")
        message = str(refused.value)
        assert f"pid {first.pid}" in message and str(tmp_path) in message and "\n" not in message
        with run_lock.held(tmp_path / "another-root"):  # another output root is not affected
            pass
    finally:
        first.kill()
        first.wait()


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    first = holder(tmp_path)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with run_lock.held(tmp_path):
                break
        except run_lock.RootBusy:
            assert time.monotonic() < deadline
            time.sleep(0.1)
