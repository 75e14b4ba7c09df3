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
too, so that the next steps find it loaded. The server imports in its only thread, between forks: a
fork never copies a half-finished import or another thread's lock. A step that ends up not needing
its libraries (an unchanged rerun's evaluate) never waits for them. (The standard library's
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


def _artifacts(arguments: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in arguments.items():
        if isinstance(value, list):
            yield from ((f"{key}.{index}", item) for index, item in enumerate(value) if hasattr(item, "metadata"))
        elif hasattr(value, "metadata") and hasattr(value, "uri"):
            yield key, value


def submit(address: str, name: str, arguments: dict[str, Any]) -> Any:
    """Run step `name` in a fork of the server at `address`; its return value, with the outputs'
    metadata copied onto this task's artifacts. Exits as the step did."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(address)
    except OSError as error:
        connection.close()
        raise Unavailable(str(error)) from None
    with connection:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            socket.send_fds(connection, [b"fds"], [0, 1, 2])
            _send(connection, {"step": name, "arguments": arguments, "cwd": os.getcwd(),
                               "environ": dict(os.environ)})
            child = _receive(connection)["pid"]
        except (OSError, ConnectionError) as error:  # nothing ran yet: the task runs its step itself
            raise Unavailable(str(error)) from None
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
    for key, artifact in _artifacts(arguments):
        artifact.metadata.update(reply["metadata"].get(key, {}))
    if reply["code"]:
        raise SystemExit(reply["code"])
    return _restored(reply["returns"])


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
    """The server's loop: one fork per task, until stdin closes.

    What takes seconds (importing a library, opening the tracking store) never holds up the next
    task: a fork of the server does it (the next generation) while this one goes on forking tasks;
    when it is done, it serves from then on and this one ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run and its steps to handle
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen(64)
    listener.setblocking(False)  # two generations may both see a connection: one takes it
    _load(_ALWAYS)
    from pipeline import steps

    opened: set[str] = set()  # tracking URIs whose store is open
    successor: int | None = None  # the read end of a pipe: the next generation says it is ready
    commands = b""
    while True:
        waiting = [listener, sys.stdin] + ([successor] if successor is not None else [])
        ready, _, _ = select.select(waiting, [], [])
        libraries, uri = (), ""
        if sys.stdin in ready:
            received = os.read(sys.stdin.fileno(), 4096)
            if not received:
                return
            *lines, commands = (commands + received).split(b"\n")
            uri = next((line[len(b"store "):].decode() for line in lines if line.startswith(b"store ")), "")
        if successor is not None and successor in ready:
            if os.read(successor, 16) == b"ready":
                return  # the next generation serves now
            os.close(successor)  # it died warming up: this one goes on serving
            successor = None
        if listener in ready:
            request = _accept(listener, steps)
            if request:
                libraries = _missing(steps.BY_NAME[request["step"]].libraries)
                uri = uri or request["environ"].get("MLFLOW_TRACKING_URI", "")
        # What a step lacks it imports itself; the next generation imports it for the next steps.
        uri = uri if uri.startswith("sqlite:") and uri not in opened else ""
        if successor is None and (libraries or uri):
            done, tell = os.pipe()
            if os.fork() == 0:
                os.close(done)
                _warm(libraries, uri)
                opened.update([uri] if uri else [])
                os.write(tell, b"ready")
                os.close(tell)
            else:
                os.close(tell)
                successor = done


def _accept(listener: socket.socket, steps: Any) -> dict[str, Any] | None:
    """Take a task's request and fork its step; the request, or None for one that made no sense."""
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return None  # the other generation took it
    connection.setblocking(True)
    fds: list[int] = []
    try:
        _, fds, _, _ = socket.recv_fds(connection, 16, 3)
        request = _receive(connection)
        steps.BY_NAME[request["step"]]
    except (OSError, ConnectionError, KeyError, pickle.UnpicklingError):
        connection.close()
        for fd in fds:
            os.close(fd)
        return None
    if os.fork() == 0:
        listener.close()
        try:
            _run_child(connection, fds, request)
        finally:
            os._exit(0)
    connection.close()
    for fd in fds:
        os.close(fd)
    return request


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
