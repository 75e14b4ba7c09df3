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
open("calling", "w").close()
result = launcher.run_step(sys.argv[1], word="hello", out=out, pid_file="pid")
returns = dict(result._asdict()) if hasattr(result, "_fields") else result
print("RESULT " + json.dumps({"returns": returns, "type": type(result).__name__, "metadata": out.metadata,
                              "pid": os.getpid()}))
"""


@pytest.fixture
def gate(tmp_path, monkeypatch):
    """Opening it ends the import of `slow_library`, in the server and in the steps alike."""
    monkeypatch.setenv("SLOW_LIBRARY_GATE", str(tmp_path / "gate"))
    return tmp_path / "gate"


@pytest.fixture
def server_process(tmp_path, gate):
    address = str(tmp_path / "server.sock")
    process = subprocess.Popen([sys.executable, str(HERE / "server_steps.py"), address], stdin=subprocess.PIPE,
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"})
    deadline = time.monotonic() + 60
    while not os.path.exists(address):
        assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield address, process
    process.stdin.close()
    process.wait(timeout=30)


@pytest.fixture
def server(server_process):
    return server_process[0]


def _task(step: str, workdir: Path, server: str | None, **popen) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key not in (step_server.ENV, "MLFLOW_TRACKING_URI")}
    # As in a KFP task: kfp imports its executor only, not its client.
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{HERE}", ECHO_VARIABLE="from-the-task", _KFP_RUNTIME="true")
    if server:
        env[step_server.ENV] = server
    workdir.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", TASK, step], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _finish(task: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str, dict | None]:
    stdout, stderr = task.communicate(timeout=timeout)
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


def test_a_step_that_runs_has_the_server_import_what_the_steps_after_it_will(server, tmp_path):
    before = _finish(_task("later", tmp_path / "before", server))[3]["returns"]
    _finish(_task("preparing", tmp_path / "preparing", server))  # prepares later_library
    deadline, after = time.monotonic() + 60, False
    while not after and time.monotonic() < deadline:
        after = _finish(_task("later", tmp_path / "then", server))[3]["returns"]

    assert before is False  # nothing imports it unless a step that ran asks
    assert after is True


def _called(workdir: Path) -> None:
    """Wait until the task has asked for its step (its request reaches the server within ms)."""
    deadline = time.monotonic() + 60
    while not (workdir / "calling").exists():
        assert time.monotonic() < deadline, "the task did not ask for its step"
        time.sleep(0.05)
    time.sleep(0.5)


def _second_waiting(server: str, tmp_path: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Two tasks of the step `slow`: the first forked (it and the server's next generation import
    `slow_library`, until the gate opens), the second's request in while they do."""
    first = _task("slow", tmp_path / "first", server)
    _pid_when_started(tmp_path / "first")
    second = _task("slow", tmp_path / "second", server)
    _called(tmp_path / "second")
    return first, second


def test_a_step_needing_what_the_server_is_importing_waits_for_it_not_imports_it_again(server, gate, tmp_path):
    """Two workers of a parallel search: the first imports the library itself, as before; the
    second, asking while the server imports it, starts once the server has it."""
    first, second = _second_waiting(server, tmp_path)
    gate.touch()
    first, second = _finish(first), _finish(second)

    assert first[0] == 0 and second[0] == 0, (first[2], second[2])
    assert first[3]["returns"] is False  # it imported the library itself
    assert second[3]["returns"] is True  # it waited, and started with the library loaded


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_waiting_for_the_servers_import_ends_the_task_before_its_step(server, gate, tmp_path,
                                                                                      number):
    first, second = _second_waiting(server, tmp_path)
    second.send_signal(number)
    # At once: the server lets go of the stdio of a task gone (kfp.local reads it to its end), long
    # before the import or the server's patience would end.
    code, _, stderr, result = _finish(second, timeout=15)
    gate.touch()

    assert code == 128 + number
    assert "tunepipe: slow: not started: the run was interrupted" in stderr.splitlines()
    assert "Traceback" not in stderr and result is None and not (tmp_path / "second" / "pid").exists()
    assert _finish(first)[0] == 0  # the step that runs is not disturbed


def test_the_run_interrupted_while_a_step_waits_for_an_import_ends_that_step_before_it_starts(server_process, gate,
                                                                                              tmp_path):
    address, process = server_process
    first, second = _second_waiting(address, tmp_path)
    process.send_signal(signal.SIGINT)  # `Server.interrupt`; the steps running get theirs from the group
    code, _, stderr, result = _finish(second)
    gate.touch()

    assert code == 130
    assert "tunepipe: slow: not started: the run was interrupted" in stderr.splitlines()
    assert "Traceback" not in stderr and result is None
    assert _finish(first)[0] == 0
    # The generation that imported meanwhile serves now, and knows the run was interrupted.
    assert _finish(_task("echo", tmp_path / "after", address))[0] == 130


def test_what_the_server_learns_while_it_imports_is_not_lost_when_the_import_is_done(server, gate, tmp_path):
    """A step that runs while the server's next generation imports (preprocess while Beam loads)
    still has the server import what it prepares."""
    first = _task("slow", tmp_path / "first", server)
    _pid_when_started(tmp_path / "first")
    assert _finish(_task("preparing", tmp_path / "preparing", server))[0] == 0
    gate.touch()
    deadline, after = time.monotonic() + 60, False
    while not after and time.monotonic() < deadline:
        after = _finish(_task("later", tmp_path / "later", server))[3]["returns"]

    assert after is True
    assert _finish(first)[0] == 0


def test_once_the_run_is_interrupted_the_server_starts_no_step(server_process, tmp_path):
    """`tunepipe run` interrupted (Ctrl-C, SIGTERM) tells the server with a SIGINT: a task that
    asks after it gets one line and exit code 130, as a task started after it does."""
    address, process = server_process
    process.send_signal(signal.SIGINT)
    code, stdout, stderr, result = _finish(_task("echo", tmp_path / "task", address))

    assert code == 130
    assert "tunepipe: echo: not started: the run was interrupted" in stderr.splitlines()
    assert "Traceback" not in stderr and result is None and "echo: to stdout" not in stdout


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
