"""Two `tunepipe run`s on one output root at once (two cron jobs overlapping): the second refuses at
once with one line naming the first and changes nothing; the first completes as if alone."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.faults.support import start_run, wait_for_text, write_config, write_table

pytestmark = pytest.mark.faults


def test_a_second_run_on_the_same_output_root_refuses_and_the_first_completes(tmp_path):
    source = write_table(tmp_path / "data" / "penguins.csv", seed=3)
    config = write_config(tmp_path, source, tmp_path / "serving")
    out, terminal = tmp_path / "out", tmp_path / "first.txt"
    first = start_run(config, out, terminal)
    assert wait_for_text(terminal, "→ ingest running", first)
    logs_before = sorted(path.name for path in (out / "logs").iterdir())

    second = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config), "--output-root",
                             str(out)], capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert lines[-1].startswith(f"tunepipe: error: another tunepipe run (pid {first.pid} on ")
    assert f"is using the output root {out}" in lines[-1] and "Traceback" not in second.stderr
    assert sorted(path.name for path in (out / "logs").iterdir()) == logs_before  # it wrote nothing

    assert first.wait(timeout=600) == 0, terminal.read_text()[-3000:]
    assert [entry.name for entry in (tmp_path / "serving" / "faults").iterdir() if entry.name.isdigit()] == ["1"]
    # Once the first has ended, the root is free again: the next run starts (and finds nothing new to do).
    again = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config), "--output-root",
                            str(out)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
