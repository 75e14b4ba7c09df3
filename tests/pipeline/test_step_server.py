"""The warm step server of `tunepipe run` (pipeline.step_server): a step handed to it behaves as the
task running it itself would — same output, return value, outputs' metadata, exit code and error
line — and it dies with its task."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import step_server

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# What kfp's executor does in a task: build the artifacts, call the component (run_step), print.
TASK = """
import json, os, sys
from kfp import dsl
from pipeline import launcher
import server_steps
server_steps.register()  # a task running its step itself finds it in its own registry
out = dsl.Artifact(uri=os.path.abspath("out"))
result = launcher.run_step(sys.argv[1], word="hello", out=out, pid_file="pid")
returns = dict(result._asdict()) if hasattr(result, "_fields") else result
print("RESULT " + json.dumps({"returns": returns, "type": type(result).__name__, "metadata": out.metadata,
                              "pid": os.getpid()}))
"""


@pytest.fixture
def server(tmp_path):
    address = str(tmp_path / "server.sock")
    process = subprocess.Popen([sys.executable, str(HERE / "server_steps.py"), address], stdin=subprocess.PIPE,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"})
    deadline = time.monotonic() + 60
    while not os.path.exists(address):
        assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield address
    process.stdin.close()
    process.wait(timeout=30)


def _task(step: str, workdir: Path, server: str | None, **popen) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in (step_server.ENV, "MLFLOW_TRACKING_URI")}
    # As in a KFP task: kfp imports its executor only, not its client.
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}", ECHO_VARIABLE="from-the-task", _KFP_RUNTIME="true")
    if server:
        env[step_server.ENV] = server
    workdir.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", TASK, step], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _finish(task: subprocess.Popen) -> tuple[int, str, str, dict | None]:
    stdout, stderr = task.communicate(timeout=120)
    results = [json.loads(line[len("RESULT "):]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    lines = "\n".join(line for line in stdout.splitlines() if not line.startswith(("RESULT ", "tunepipe: timing:")))
    return task.returncode, lines, stderr, results[0] if results else None


def test_a_step_in_the_server_is_what_it_is_in_its_own_task(server, tmp_path):
    alone = _finish(_task("echo", tmp_path / "alone", None))
    served = _finish(_task("echo", tmp_path / "served", server))

    for code, stdout, stderr, result in (alone, served):
        assert code == 0, stderr
        assert "echo: to stdout hello" in stdout
        assert "from-the-task" in stderr  # the task's environment
        assert result["type"] == "EchoOutputs" and result["returns"]["word"] == "hello"
        assert result["metadata"] == {"rows": 3, "word": "hello"}  # the outputs' metadata reach kfp
    assert f"{tmp_path / 'served'}" in served[2]  # the task's working directory
    assert served[3]["returns"]["pid"] != served[3]["pid"]  # the work ran in a fork of the server
    assert alone[3]["returns"]["pid"] == alone[3]["pid"]


def test_a_user_error_is_the_same_one_line_and_exit_code(server, tmp_path):
    alone = _finish(_task("failing", tmp_path / "alone", None))
    served = _finish(_task("failing", tmp_path / "served", server))

    assert alone[0] == served[0] == 1
    expected = "tunepipe: error: failing: the table /data/t.csv has no column 'label'"
    for _, _, stderr, result in (alone, served):
        assert expected in stderr.splitlines()
        assert "Traceback" not in stderr and result is None


def test_the_server_imports_a_steps_libraries_for_the_next_steps(server, tmp_path):
    before = _finish(_task("loaded", tmp_path / "first", server))
    _finish(_task("echo", tmp_path / "echo", server))  # declares xml.dom.minidom, does not import it
    # The server's next generation imports it meanwhile, and serves once it has.
    deadline, after = time.monotonic() + 60, False
    while not after and time.monotonic() < deadline:
        after = _finish(_task("loaded", tmp_path / "then", server))[3]["returns"]

    assert before[3]["returns"] is False
    assert after is True


def _pid_when_started(workdir: Path) -> int:
    deadline = time.monotonic() + 60
    while not (workdir / "pid").exists() or not (workdir / "pid").read_text():
        assert time.monotonic() < deadline, "the step did not start"
        time.sleep(0.05)
    return int((workdir / "pid").read_text())


def _gone(pid: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_step_dies_with_its_killed_task(server, tmp_path):
    task = _task("sleepy", tmp_path / "task", server)
    child = _pid_when_started(tmp_path / "task")
    assert child != task.pid
    task.kill()
    task.wait()
    assert _gone(child)


def test_a_signal_to_the_task_reaches_its_step(server, tmp_path):
    task = _task("sleepy", tmp_path / "task", server)
    child = _pid_when_started(tmp_path / "task")
    task.send_signal(signal.SIGTERM)
    stdout, stderr = task.communicate(timeout=30)
    assert _gone(child)
    assert task.returncode == 143  # 128 + SIGTERM, as the step's own process would end
    assert "tunepipe: sleepy: interrupted (SIGTERM)" in stderr


def test_a_signal_ends_a_step_run_in_its_own_task_the_same_way(tmp_path):
    task = _task("sleepy", tmp_path / "task", None)
    assert _pid_when_started(tmp_path / "task") == task.pid
    task.send_signal(signal.SIGTERM)
    stdout, stderr = task.communicate(timeout=30)
    assert task.returncode == 143
    assert "tunepipe: sleepy: interrupted (SIGTERM)" in stderr and "Traceback" not in stderr


def test_without_a_server_the_task_runs_its_step_itself(tmp_path):
    code, stdout, stderr, result = _finish(_task("echo", tmp_path / "task", str(tmp_path / "no-server.sock")))
    assert code == 0, stderr
    assert result["returns"]["pid"] == result["pid"]
