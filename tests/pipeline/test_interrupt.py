"""Ctrl-C during `tunepipe run`: it ends within seconds with one line saying what was interrupted,
leaves no step process behind, and leaves no tracking run RUNNING."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import PENGUINS_CONFIG
from tests.faults.support import session_processes


def test_ctrl_c_ends_the_run_with_one_line_and_no_orphans(tmp_path):
    log = tmp_path / "terminal.txt"
    with open(log, "w") as terminal:
        run = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(PENGUINS_CONFIG),
                                "--output-root", str(tmp_path / "out")], stdout=terminal, stderr=terminal,
                               start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 300
    while "→ ingest running" not in log.read_text():
        assert run.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(run.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
    interrupted = time.monotonic()
    code = run.wait(timeout=60)
    took = time.monotonic() - interrupted

    lines = log.read_text().splitlines()
    assert code == 130 and took < 20, (code, took)
    assert lines[-1].startswith("tunepipe: error: interrupted (SIGINT) while ingest was running")
    assert "the next tunepipe run resumes" in lines[-1]
    assert not any("Traceback" in line for line in lines)
    time.sleep(2)  # a step's fork ends once its task is gone
    assert session_processes(run.pid) == []  # the step server, its forks, kfp's task processes
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}")
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert runs and all(run.info.status != "RUNNING" for run in runs)
