"""A warm process for the steps of one `tunepipe run`: the heavy libraries are imported once, and
every step's work runs in a fork of it.

kfp.local runs each task as its own Python process, and a task that imports TensorFlow, Beam, TFMA
and MLflow pays 10-40 s of imports before any work. `tunepipe run` starts this server beside the
pipeline (`started`); the task's process still does what kfp's executor does (reads its inputs,
writes its outputs' metadata), but `pipeline.launcher.run_step` hands the step to the server
(`submit`) when `ENV` names one. The server forks a child that takes over the task's standard
input, output and error (passed over the Unix socket, SCM_RIGHTS), its working directory and its
environment, runs the step, and sends back its exit code, its return value and its output
artifacts' metadata. The task's exit code, output and errors are the same as when it runs the step
itself: a user error is the same one line and exit code 1.

The server imports what every step needs when it starts (the launcher, the hooks, MLflow). It forks
a step at once; the first step needing a heavy library (`pipeline.steps.Step.libraries`: Beam,
TensorFlow, TFMA) imports it itself, as a task of its own would, and meanwhile the server imports it
too, so that the next steps find it loaded. A step that runs names what the steps after it will
import (`Step.prepares`: ingest and preprocess, TensorFlow for the search), which the server imports
next; a step asking for a library the server is importing (or about to) waits for that import,
not running its own beside it. An unchanged rerun, whose ingest and preprocess kfp's cache answers, imports
nothing ahead, and its evaluate, which ends up not needing TFMA, does not wait for it. The server
imports in its only thread, between forks: a fork never copies a half-finished import or another
thread's lock. How it does all that is `pipeline.step_generations`; this module is the tasks' side.
(The standard library's forkserver preloads modules the same way, but only for the children of the
process that started it; the tasks here are kfp.local's processes, so they reach this server by its
socket.)

Lifetime: the server ends when `tunepipe run` closes its stdin (or dies). A child whose task
process goes away (a kill) kills itself, and the first SIGINT or SIGTERM the task receives (Ctrl-C)
is passed on to the child, which ends as a Ctrl-C'd step does: its tracking run marked, exit 130.
On Kubeflow no server runs: every task runs its step itself.
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline import step_messages as messages

ENV = "TUNEPIPE_STEP_SERVER"


class Unavailable(Exception):
    """No server answers at the address: the task runs its step itself."""


class RunInterrupted(Exception):
    """The run was interrupted before the server started the step: `signal` is what the task got
    (SIGINT when the server said so)."""

    def __init__(self, number: int):
        super().__init__(signal.Signals(number).name)
        self.signal = number


def submit(address: str, name: str, arguments: dict[str, Any]) -> Any:
    """Run step `name` in a fork of the server at `address`; its return value, with the outputs'
    metadata copied onto this task's artifacts. Exits as the step did. The server may hold the
    request while its next generation imports what the step needs (seconds): a SIGINT or SIGTERM
    meanwhile ends the task before its step started (`RunInterrupted`); once the step runs, the
    first one is passed on to it. Until the step's pid is known the two signals are blocked and
    looked for while waiting, so that none lands between the step starting and the task knowing it."""
    signals = _Signals()
    saved = {number: signal.signal(number, signals.received) for number in _STOPPING}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOPPING)
    try:
        reply = _run_in_server(address, name, arguments, signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for number, handler in saved.items():
            signal.signal(number, handler)
    for key, artifact in messages.task_artifacts(arguments):
        artifact.metadata.update(reply.metadata.get(key, {}))
    if reply.code:
        raise SystemExit(reply.code)
    return messages.restored(reply.returns)


_STOPPING = {signal.SIGINT, signal.SIGTERM}
# How many times a task asks again (each time, a generation of the server has handed over to the next).
_ASKS = 32


def _run_in_server(address: str, name: str, arguments: dict[str, Any], signals: _Signals) -> messages.Reply:
    for _ in range(_ASKS):
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(address)
        except OSError as error:
            connection.close()
            raise Unavailable(str(error)) from None
        with connection:
            signals.child = _handed_over(connection, name, arguments, signals)
            if signals.child is None:
                continue  # the server's next generation has loaded what the step needs: ask it
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPPING)  # a signal pending now goes to the step
            try:
                return messages.receive(connection)
            except ConnectionError:
                print(f"tunepipe: error: {name}: the step's process ended without an answer (killed?)",
                      file=sys.stderr, flush=True)
                raise SystemExit(1) from None
    raise Unavailable(f"the server said to ask again {_ASKS} times")


def _handed_over(connection: socket.socket, name: str, arguments: dict[str, Any], signals: _Signals) -> int | None:
    """Hand the task (its stdio, directory, environment) and the step's request to the server: the
    pid of the fork running the step, or None when the server says to ask its next generation."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        socket.send_fds(connection, [messages.STDIO_MARKER], list(messages.STDIO))
        messages.send(connection, messages.Request(name, arguments, os.getcwd(), dict(os.environ)))
        while not select.select([connection], [], [], 0.1)[0]:
            if signals.first is not None:  # taken by another thread of the task
                raise RunInterrupted(signals.first)
            if signal.sigpending() & _STOPPING:
                raise RunInterrupted(signal.sigtimedwait(_STOPPING, 0).si_signo)
        answer = messages.receive(connection)
    except (OSError, ConnectionError) as error:  # nothing ran yet: the task runs its step itself
        raise Unavailable(str(error)) from None
    if not isinstance(answer, messages.Answer):
        raise Unavailable(f"the server answered {answer!r}")
    if answer.interrupted:
        raise RunInterrupted(signal.SIGINT)
    return answer.pid  # None: ask again


class _Signals:
    """SIGINT and SIGTERM in a task whose step runs in the server: the first is passed on to the
    step, which decides how to end, and the task waits for its answer."""

    def __init__(self):
        self.child: int | None = None
        self.first: int | None = None

    def received(self, number: int, _frame: Any) -> None:
        if self.first is not None:
            return
        self.first = number
        if self.child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, number)


class Server:
    """The running server of one `tunepipe run`: its address, and a word to it."""

    def __init__(self, address: str, process: subprocess.Popen):
        self.address, self._process = address, process

    def interrupt(self) -> None:
        """SIGINT to every step running in the server (each marks its tracking run and ends) and to the
        server, which starts no step from then on."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGINT)

    def open_store(self, uri: str) -> None:
        """The run's tracking store exists now (the pipeline's run is open): open it for the steps."""
        with contextlib.suppress(OSError):
            self._process.stdin.write(f"store {uri}\n".encode())
            self._process.stdin.flush()


@contextlib.contextmanager
def started(log_file: Path) -> Iterator[Server]:
    """A server for the steps of one run, its own output (nothing, unless it fails) in `log_file`.
    Stopped on leaving."""
    directory = tempfile.mkdtemp(prefix="tunepipe-steps-")
    address = os.path.join(directory, "server.sock")
    with open(log_file, "ab") as log:
        # Its own process group: `Server.interrupt` reaches every step it runs, and a Ctrl-C in the
        # terminal reaches them through their tasks, once.
        process = subprocess.Popen([sys.executable, "-m", "pipeline.step_generations", address], stdin=subprocess.PIPE,
                                   stdout=log, stderr=log, process_group=0)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(address) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        yield Server(address, process)
    finally:
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        # The run is over: what is left of the group is a generation busy importing a library no
        # step will need any more.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)

