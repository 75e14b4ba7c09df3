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
too, so that the next steps find it loaded. A step that runs names the libraries the steps after it
will need (`Step.prepares`: after ingest, TensorFlow for the search), and the server imports them
next, while the steps before the search run. A step asking for a library the server is importing
waits for it rather than importing it too: the workers of a parallel search start with one import
of TensorFlow, not three at once. The server imports in its only thread, between forks: a fork
never copies a half-finished import or another thread's lock. A step that ends up not needing its
libraries (an unchanged rerun's evaluate) never waits for them, and an unchanged rerun, whose
ingest and preprocess kfp's cache answers, imports nothing ahead. (The standard library's
forkserver preloads modules the same way, but only for the children of the process that started
it; the tasks here are kfp.local's processes, so they reach this server by its socket.)

Lifetime: the server ends when `tunepipe run` closes its stdin (or dies). A child whose task
process goes away (a kill) kills itself, and the first SIGINT or SIGTERM the task receives (Ctrl-C)
is passed on to the child, which ends as a Ctrl-C'd step does: its tracking run marked, exit 130.
On Kubeflow no server runs: every task runs its step itself.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV = "TUNEPIPE_STEP_SERVER"
# What the server imports before it serves anything: the code every step runs.
_ALWAYS = ("pipeline.launcher", "pipeline.hooks", "pipeline.tracking", "mlflow")
_HEADER = struct.Struct("!Q")


# --- messages: length-prefixed pickles over the Unix socket -----------------------------------------

def _send(connection: socket.socket, message: Any) -> None:
    data = pickle.dumps(message)
    connection.sendall(_HEADER.pack(len(data)) + data)


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = connection.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the step server's connection closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(connection: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_receive_exactly(connection, _HEADER.size))
    return pickle.loads(_receive_exactly(connection, size))


def _portable(value: Any) -> Any:
    """A step's return value as it can be pickled: a namedtuple made on the fly (resolve-source's
    outputs) travels as its name, fields and values."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ("__namedtuple__", type(value).__name__, tuple(value._fields), tuple(value))
    return value


def _restored(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "__namedtuple__":
        return namedtuple(value[1], value[2])(*value[3])
    return value


# --- the task's side ------------------------------------------------------------------------------

class Unavailable(Exception):
    """No server answers at the address: the task runs its step itself."""


class RunInterrupted(Exception):
    """The run was interrupted before the server started the step."""


def _artifacts(arguments: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in arguments.items():
        if isinstance(value, list):
            yield from ((f"{key}.{index}", item) for index, item in enumerate(value) if hasattr(item, "metadata"))
        elif hasattr(value, "metadata") and hasattr(value, "uri"):
            yield key, value


def submit(address: str, name: str, arguments: dict[str, Any]) -> Any:
    """Run step `name` in a fork of the server at `address`; its return value, with the outputs'
    metadata copied onto this task's artifacts. Exits as the step did."""
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(address)
        except OSError as error:
            connection.close()
            raise Unavailable(str(error)) from None
        with connection:
            child = _handed_over(connection, name, arguments)
            if child is None:
                continue  # the server's next generation has loaded what the step needs: ask it
            forwarded = {number: signal.signal(number, lambda received, _frame: _forward(child, received))
                         for number in (signal.SIGINT, signal.SIGTERM)}
            try:
                reply = _receive(connection)
            except ConnectionError:
                print(f"tunepipe: error: {name}: the step's process ended without an answer (killed?)",
                      file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            finally:
                for number, handler in forwarded.items():
                    signal.signal(number, handler)
        break
    for key, artifact in _artifacts(arguments):
        artifact.metadata.update(reply["metadata"].get(key, {}))
    if reply["code"]:
        raise SystemExit(reply["code"])
    return _restored(reply["returns"])


def _handed_over(connection: socket.socket, name: str, arguments: dict[str, Any]) -> int | None:
    """Hand the task (its stdio, directory, environment) and the step's request to the server: the
    pid of the fork running the step, or None when the server says to ask its next generation. The
    server may hold the request while that generation imports what the step needs (seconds): a
    SIGINT or SIGTERM meanwhile ends the task before its step started."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {number: signal.signal(number, _interrupted) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        socket.send_fds(connection, [b"fds"], [0, 1, 2])
        _send(connection, {"step": name, "arguments": arguments, "cwd": os.getcwd(),
                           "environ": dict(os.environ)})
        answer = _receive(connection)
    except (OSError, ConnectionError) as error:  # nothing ran yet: the task runs its step itself
        raise Unavailable(str(error)) from None
    except KeyboardInterrupt:
        raise RunInterrupted from None
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)
    if answer.get("interrupted"):
        raise RunInterrupted
    return answer.get("pid")


def _interrupted(_number: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _forward(child: int, number: int) -> None:
    """Pass the first SIGINT/SIGTERM on to the step; the step decides how to end."""
    for ignored in (signal.SIGINT, signal.SIGTERM):
        signal.signal(ignored, signal.SIG_IGN)
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, number)



# --- the server's side ----------------------------------------------------------------------------

def _run_child(connection: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """In the fork: become the task (its stdio, directory, environment), run the step, answer.
    Whatever goes wrong here is the task's: its traceback on the task's stderr, exit code 1."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it; a step waits for its children
    signal.set_wakeup_fd(-1)  # the server's
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as in any Python process: a broken pipe is an error
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.default_int_handler)  # until the step installs its own
    from pipeline import launcher

    arguments, code, returns, metadata = request["arguments"], 1, None, {}
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)  # progress lines reach the terminal as they come
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["environ"])
        _send(connection, {"pid": os.getpid()})
        threading.Thread(target=_die_with_task, args=(connection,), daemon=True).start()
        try:
            returns, code = launcher.run_here(request["step"], arguments), 0
        except SystemExit as exit_:
            code = _exit_code(exit_)
        metadata = {key: dict(artifact.metadata) for key, artifact in _artifacts(arguments)}
        reply = {"code": code, "returns": _portable(returns), "metadata": metadata}
        pickle.dumps(reply)  # a return value that cannot travel is the step's error, said here
    except BaseException:  # a bug: its traceback, as the task's own process would print it
        traceback.print_exc()
        reply = {"code": 1, "returns": None, "metadata": {}}
    sys.stdout.flush()
    sys.stderr.flush()
    _send(connection, reply)


def _exit_code(exit_: SystemExit) -> int:
    """What Python's own exit would make of `exit_`: None is 0, a message is printed and 1."""
    if exit_.code is None or isinstance(exit_.code, int):
        return exit_.code or 0
    print(exit_.code, file=sys.stderr, flush=True)
    return 1


def _die_with_task(connection: socket.socket) -> None:
    """The task's process closes the connection only when it has the answer, or when it is gone."""
    with contextlib.suppress(OSError):
        while connection.recv(1):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def _load(libraries: tuple[str, ...]) -> None:
    for module in libraries:
        if module not in sys.modules:
            importlib.import_module(module)


def _open_store(uri: str) -> None:
    """Open the run's SQLite tracking and registry stores once, so that the steps forked from now on
    find them open: MLflow keeps a store per URI, and opening one checks the database's schema
    (seconds). With SQLAlchemy's NullPool (MLflow's MLFLOW_SQLALCHEMYSTORE_POOLCLASS) a store keeps
    no connection open, so no child inherits one."""
    import mlflow

    os.environ["MLFLOW_SQLALCHEMYSTORE_POOLCLASS"] = "NullPool"
    with contextlib.suppress(Exception):  # a store it cannot open now is opened by the step, as without the server
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)
        client.search_registered_models(max_results=1)


def _missing(libraries: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(module for module in libraries if module not in sys.modules)


def _warm(libraries: tuple[str, ...], uri: str) -> None:
    with contextlib.suppress(Exception):  # a step that needs it imports it itself, and says why it fails
        _load(libraries)
    if uri:
        _open_store(uri)


def serve(address: str) -> None:
    """The server's loop: one fork per task, until stdin closes."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    interruption = _Interruption()  # from before the first task can connect
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    listener.setblocking(False)  # two generations may both see a connection: one takes it
    _load(_ALWAYS)
    from pipeline import steps

    _Generation(listener, steps, interruption).serve()


# How long a request may wait for the next generation's import before its step is forked to import
# the library itself: longer than any import takes here, short of a hang.
_PATIENCE = 60.0


_Held = namedtuple("_Held", "connection fds request since")  # a request waiting for the next generation


def _answer(connection: socket.socket, fds: list[int], answer: dict[str, Any]) -> None:
    """Answer a request without running its step: `again` (ask the next generation) or `interrupted`."""
    with contextlib.suppress(OSError):  # a task that went away meanwhile
        _send(connection, answer)
    _close(connection, fds)


class _Interruption:
    """A SIGINT to the server: `Server.interrupt`, the run is interrupted. It wakes the server's loop."""

    def __init__(self):
        self.happened = False
        self.wake, self._woken = -1, -1
        self.reopen()
        signal.signal(signal.SIGINT, self._received)

    def reopen(self) -> None:
        """A pipe of its own, for a new generation: each is woken by its own SIGINT."""
        for fd in (self.wake, self._woken):
            if fd >= 0:
                os.close(fd)
        self.wake, self._woken = os.pipe()
        os.set_blocking(self._woken, False)
        signal.set_wakeup_fd(self._woken)

    def _received(self, _number: int, _frame: Any) -> None:
        self.happened = True

    def woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.wake, 64)


class _Generation:
    """The serving process: what it has loaded, its forks start with.

    What takes seconds (importing a library, opening the tracking store) never holds up a task: a
    fork of the server does it (the next generation) while this one goes on forking tasks; when it
    is done, it serves from then on and this one ends. A request for a step that needs what the next
    generation is importing waits for it (its task is told to ask again), so that the import runs
    once, not once more in every such step: the workers of a parallel search start together.

    A step that runs (kfp's cache did not answer it) names what the steps after it will import
    (`pipeline.steps.Step.prepares`); a generation imports that after what the running steps lack.
    A SIGINT (`Server.interrupt`: the run is interrupted) leaves the steps running to handle it and
    answers every request from then on with `interrupted`: no step starts any more."""

    def __init__(self, listener: socket.socket, steps: Any, interruption: _Interruption):
        self._listener, self._steps, self._interruption = listener, steps, interruption
        self._opened: set[str] = set()  # tracking URIs whose store is open
        self._successor: int | None = None  # the read end of a pipe: the next generation says it is ready
        self._importing: tuple[str, ...] = ()  # what the next generation imports
        self._lacking: tuple[str, ...] = ()  # what steps forked since lack: the next generation's first
        self._ahead: tuple[str, ...] = ()  # what the steps after those that ran will import
        self._store = ""  # a tracking URI whose store the next generation opens
        self._held: list[_Held] = []
        self._commands = b""

    def serve(self) -> None:
        while True:
            self._start_successor()
            waiting = [self._listener, sys.stdin, self._interruption.wake] + \
                ([] if self._successor is None else [self._successor])
            timeout = max(0.0, min(held.since for held in self._held) + _PATIENCE - time.monotonic()) \
                if self._held else None
            ready, _, _ = select.select(waiting, [], [], timeout)
            if self._interruption.wake in ready:
                self._interruption.woken()
            if sys.stdin in ready and not self._read_commands():
                return
            if self._successor in ready and self._successor_ended():
                return
            if self._listener in ready:
                self._take()
            self._release(lambda held: self._interruption.happened or time.monotonic() - held.since >= _PATIENCE)

    def _read_commands(self) -> bool:
        """Read the run's commands (`store <uri>`); False once stdin is closed."""
        received = os.read(sys.stdin.fileno(), 4096)
        if not received:
            return False
        *lines, self._commands = (self._commands + received).split(b"\n")
        for line in lines:
            if line.startswith(b"store "):
                self._want_store(line[len(b"store "):].decode())
        return True

    def _want_store(self, uri: str) -> None:
        if uri.startswith("sqlite:") and uri not in self._opened:
            self._store = self._store or uri

    def _take(self) -> None:
        taken = _accept(self._listener, self._steps)
        if taken is None:
            return
        connection, fds, request = taken
        if self._interruption.happened:
            _answer(connection, fds, {"interrupted": True})
            return
        step = self._steps.BY_NAME[request["step"]]
        lacking = _missing(step.libraries)
        if self._successor is not None and set(lacking) & set(self._importing):
            self._held.append(_Held(connection, fds, request, time.monotonic()))
        else:
            _fork_step(self._listener, connection, fds, request)
            self._lacking += tuple(module for module in lacking if module not in self._lacking)
        self._ahead += tuple(module for module in _missing(step.prepares) if module not in self._ahead)
        self._want_store(request["environ"].get("MLFLOW_TRACKING_URI", ""))

    def _release(self, due: Any) -> None:
        """Fork the held requests that are `due` (or say the run was interrupted)."""
        for held in [held for held in self._held if due(held)]:
            self._held.remove(held)
            if self._interruption.happened:
                _answer(held.connection, held.fds, {"interrupted": True})
            else:
                _fork_step(self._listener, held.connection, held.fds, held.request)

    def _successor_ended(self) -> bool:
        """The next generation is ready (True: it serves now, the held requests ask it again), or died
        warming up (this one goes on serving, and forks the held requests: their steps import)."""
        ready = os.read(self._successor, 16) == b"ready"
        os.close(self._successor)
        if ready:
            for held in self._held:
                _answer(held.connection, held.fds, {"again": True})
            return True
        self._successor, self._importing, self._ahead = None, (), ()
        self._release(lambda held: True)
        return False

    def _start_successor(self) -> None:
        if self._successor is not None:
            return
        self._lacking = _missing(self._lacking)
        libraries = self._lacking or _missing(self._ahead)
        if not libraries and not self._store:
            return
        ahead = self._ahead if self._lacking else ()  # for the generation after it
        store, self._lacking, self._store = self._store, (), ""
        done, tell = os.pipe()
        if os.fork() == 0:  # the next generation: it imports, then serves
            os.close(done)
            self._interruption.reopen()
            _warm(libraries, store)
            self._opened.update([store] if store else [])
            self._ahead = _missing(ahead)
            os.write(tell, b"ready")
            os.close(tell)
            return
        os.close(tell)
        self._successor, self._importing, self._ahead = done, libraries, ahead


def _accept(listener: socket.socket, steps: Any) -> tuple[socket.socket, list[int], dict[str, Any]] | None:
    """A task's connection, its stdio and its request; None when the other generation took it, or for
    a request that made no sense."""
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return None
    connection.setblocking(True)
    fds: list[int] = []
    try:
        _, fds, _, _ = socket.recv_fds(connection, 16, 3)
        request = _receive(connection)
        steps.BY_NAME[request["step"]]
    except (OSError, ConnectionError, KeyError, pickle.UnpicklingError):
        _close(connection, fds)
        return None
    return connection, fds, request


def _fork_step(listener: socket.socket, connection: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    if os.fork() == 0:
        listener.close()
        try:
            _run_child(connection, fds, request)
        finally:
            os._exit(0)
    _close(connection, fds)


def _close(connection: socket.socket, fds: list[int]) -> None:
    connection.close()
    for fd in fds:
        os.close(fd)


class Server:
    """The running server of one `tunepipe run`: its address, and a word to it."""

    def __init__(self, address: str, process: subprocess.Popen):
        self.address, self._process = address, process

    def interrupt(self) -> None:
        """SIGINT to every step running in the server: each marks its tracking run and ends."""
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
        process = subprocess.Popen([sys.executable, "-m", "pipeline.step_server", address], stdin=subprocess.PIPE,
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


if __name__ == "__main__":
    serve(sys.argv[1])
