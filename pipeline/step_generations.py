"""The step server's side (`pipeline.step_server` is the tasks' side and the overview): the process
that forks the steps of one `tunepipe run`, in generations.

The serving process forks a step per request at once. What takes seconds (importing a library,
opening the tracking store) never holds up a task: a fork of the server does it (the next
generation) while this one goes on forking steps; when it is done it takes over, with what this one
had still to do, and this one ends. A request for a step lacking a library the next generation is
importing (or is to import) waits for it: its task is told to ask again once the next generation
serves, so the import runs once, not once more in every such step beside it (the workers of a
parallel search start together). A generation that dies importing, or takes longer than
`_PATIENCE`, holds nothing any more: the steps import what they need themselves.

A step that runs (kfp's cache did not answer it) names what the steps after it will import
(`pipeline.steps.Step.prepares`): a generation imports that after what the running steps lack.
A SIGINT (`Server.interrupt`: the run is interrupted) leaves the steps running to handle it and
answers every request from then on with `interrupted`: no step starts any more.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections import namedtuple
from typing import Any

from pipeline import step_messages as messages

# What the server imports before it serves anything: the code every step runs.
_ALWAYS = ("pipeline.launcher", "pipeline.hooks", "pipeline.tracking", "mlflow")
# How long requests wait for a generation's import before their steps import it themselves: longer
# than any import takes here, short of a hang.
_PATIENCE = 60.0

_Held = namedtuple("_Held", "connection fds request")  # a request waiting for the next generation
_INTERRUPTED = messages.Answer(interrupted=True)  # once the run is interrupted: no step starts


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


class _Interruption:
    """A SIGINT to the server: `Server.interrupt`, the run is interrupted. It wakes the loop, through
    a pipe each generation has its own of (a byte one generation reads, another would miss)."""

    def __init__(self):
        self.happened = False
        self.readable, self._writable = -1, -1
        self.reopen()
        signal.signal(signal.SIGINT, self._received)

    def reopen(self) -> None:
        self.close()
        self.readable, self._writable = os.pipe()
        os.set_blocking(self._writable, False)
        signal.set_wakeup_fd(self._writable)

    def close(self) -> None:
        for fd in (self.readable, self._writable):
            if fd >= 0:
                os.close(fd)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.readable, 64)

    def _received(self, _number: int, _frame: Any) -> None:
        self.happened = True


class _Generation:
    """The serving process: what it has loaded, the steps it forks start with."""

    def __init__(self, listener: socket.socket, steps: Any, interruption: _Interruption):
        self._listener, self._steps, self._interruption = listener, steps, interruption
        self._opened: set[str] = set()  # tracking URIs whose store is open
        self._successor: socket.socket | None = None  # the next generation says on it that it is ready
        self._importing: tuple[str, ...] = ()  # what the next generation imports
        self._since = 0.0  # when it started
        self._lacking: tuple[str, ...] = ()  # what steps forked since lack: the next generation's first
        self._ahead: tuple[str, ...] = ()  # what the steps after those that ran will import
        self._store = ""  # a tracking URI whose store the next generation opens
        self._held: list[_Held] = []
        self._commands = b""

    def serve(self) -> None:
        while True:
            self._start_successor()
            waiting = [self._listener, sys.stdin, self._interruption.readable] + \
                ([] if self._successor is None else [self._successor]) + [held.connection for held in self._held]
            timeout = max(0.0, self._since + _PATIENCE - time.monotonic()) if self._held else None
            ready, _, _ = select.select(waiting, [], [], timeout)
            if self._interruption.readable in ready:
                self._interruption.drain()
            if sys.stdin in ready and not self._read_commands():
                self._answer_held(_INTERRUPTED)  # the run is over
                return
            if self._successor is not None and self._successor in ready and self._successor_ended():
                return
            # A task sends nothing after its request: a held connection that reads is a task gone
            # (a signal ended it), whose stdio kfp.local reads until the last copy is closed.
            for held in [held for held in self._held if held.connection in ready]:
                self._held.remove(held)
                _close(held.connection, held.fds)
            if self._listener in ready:
                self._take()
            if self._interruption.happened:
                self._answer_held(_INTERRUPTED)
            elif self._held and time.monotonic() - self._since >= _PATIENCE:
                self._importing, self._ahead = (), ()  # hung: nothing waits for it any more
                self._fork_held()

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
            _answer(connection, fds, _INTERRUPTED)
            return
        step = self._steps.BY_NAME[request.step]
        lacking = _missing(step.libraries)
        if self._successor is not None and set(lacking) & set(self._importing + self._ahead):
            self._held.append(_Held(connection, fds, request))
        else:
            self._fork_step(connection, fds, request)
            self._lacking += tuple(module for module in lacking if module not in self._lacking)
        self._ahead += tuple(module for module in _missing(step.prepares) if module not in self._ahead)
        self._want_store(request.environ.get("MLFLOW_TRACKING_URI", ""))

    def _fork_held(self) -> None:
        while self._held:
            self._fork_step(*self._held.pop(0))

    def _answer_held(self, answer: messages.Answer) -> None:
        while self._held:
            held = self._held.pop(0)
            _answer(held.connection, held.fds, answer)

    def _fork_step(self, connection: socket.socket, fds: list[int], request: messages.Request) -> None:
        if os.fork() == 0:
            # A signal from now on is the step's alone (`_run_child` handles it), unless the run was
            # interrupted before the step could see it.
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, signal.default_int_handler)  # until the step installs its own
            signal.set_wakeup_fd(-1)
            interrupted = self._interruption.happened
            # The step keeps its own task's connection and stdio, none of the server's.
            self._listener.close()
            self._interruption.close()
            if self._successor is not None:
                self._successor.close()
            for held in self._held:
                _close(held.connection, held.fds)
            try:
                if interrupted:
                    _answer(connection, fds, _INTERRUPTED)
                else:
                    _run_child(connection, fds, request)
            finally:
                os._exit(0)
        _close(connection, fds)

    def _successor_ended(self) -> bool:
        """The next generation is ready (True: it serves now, with what this one still had to do, and
        the held requests ask it again), or died warming up (this one goes on serving and forks the
        held requests: their steps import what they need)."""
        try:
            ready = self._successor.recv(16) == b"ready"
            if ready:
                messages.send(self._successor, {"lacking": self._lacking, "ahead": self._ahead,
                                               "store": self._store, "commands": self._commands,
                                               "interrupted": self._interruption.happened})
        except OSError:
            ready = False
        self._successor.close()
        self._successor = None
        if ready:
            self._answer_held(_INTERRUPTED if self._interruption.happened else messages.Answer(again=True))
            return True
        self._importing, self._ahead = (), ()
        self._fork_held()
        return False

    def _start_successor(self) -> None:
        if self._successor is not None or self._interruption.happened:
            return
        self._lacking = _missing(self._lacking)
        libraries = self._lacking or _missing(self._ahead)
        if not libraries and not self._store:
            return
        ahead = self._ahead if self._lacking else ()  # for the generation after it
        store, self._lacking, self._store = self._store, (), ""
        here, there = socket.socketpair()
        if os.fork() == 0:  # the next generation: it imports, then serves
            here.close()
            self._interruption.reopen()
            _warm(libraries, store)
            self._opened.update([store] if store else [])
            handed = {"lacking": (), "ahead": (), "store": "", "commands": b"", "interrupted": False}
            with there, contextlib.suppress(OSError, ConnectionError):
                there.sendall(b"ready")
                handed = messages.receive(there)  # what the last generation had still to do
            self._lacking, self._commands = handed["lacking"], handed["commands"]
            self._want_store(handed["store"])
            self._interruption.happened |= handed["interrupted"]
            self._ahead = _missing(ahead + tuple(module for module in handed["ahead"] if module not in ahead))
            self._start_successor()  # what is left to import, before this generation takes a request
            return
        there.close()
        self._successor, self._importing, self._since, self._ahead = here, libraries, time.monotonic(), ahead


def _accept(listener: socket.socket, steps: Any) -> tuple[socket.socket, list[int], messages.Request] | None:
    """A task's connection, its stdio and its request; None when the other generation took it, or for
    a request that made no sense."""
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return None
    connection.setblocking(True)
    fds: list[int] = []
    try:
        _, fds, _, _ = socket.recv_fds(connection, 16, len(messages.STDIO))
        request = messages.receive(connection)
        steps.BY_NAME[request.step]
    except (OSError, ConnectionError, KeyError, AttributeError, pickle.UnpicklingError):
        _close(connection, fds)
        return None
    return connection, fds, request


def _answer(connection: socket.socket, fds: list[int], answer: messages.Answer) -> None:
    """Answer a request without running its step: `again` (ask the next generation) or `interrupted`."""
    with contextlib.suppress(OSError):  # a task that went away meanwhile
        messages.send(connection, answer)
    _close(connection, fds)


def _close(connection: socket.socket, fds: list[int]) -> None:
    connection.close()
    for fd in fds:
        os.close(fd)


def _run_child(connection: socket.socket, fds: list[int], request: messages.Request) -> None:
    """In the fork: become the task (its stdio, directory, environment), run the step, answer.
    Whatever goes wrong here is the task's: its traceback on the task's stderr, exit code 1."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server ignores it; a step waits for its children
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as in any Python process: a broken pipe is an error
    from pipeline import launcher

    arguments, code, returns, metadata = request.arguments, 1, None, {}
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)  # progress lines reach the terminal as they come
        os.chdir(request.cwd)
        os.environ.clear()
        os.environ.update(request.environ)
        messages.send(connection, messages.Answer(pid=os.getpid()))
        threading.Thread(target=_die_with_task, args=(connection,), daemon=True).start()
        try:
            returns, code = launcher.run_here(request.step, arguments), 0
        except SystemExit as exit_:
            code = _exit_code(exit_)
        metadata = {key: dict(artifact.metadata) for key, artifact in messages.task_artifacts(arguments)}
        reply = messages.Reply(code, messages.portable(returns), metadata)
        pickle.dumps(reply)  # a return value that cannot travel is the step's error, said here
    except BaseException:  # a bug: its traceback, as the task's own process would print it
        traceback.print_exc()
        reply = messages.Reply(1, None, {})
    sys.stdout.flush()
    sys.stderr.flush()
    messages.send(connection, reply)


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


if __name__ == "__main__":
    serve(sys.argv[1])
