"""What a task and the step server (`pipeline.step_server`, `pipeline.step_generations`) say to
each other over the server's Unix socket: length-prefixed pickles of the types below, after the
task's standard input, output and error (SCM_RIGHTS)."""
from __future__ import annotations

import pickle
import socket
import struct
from collections import namedtuple
from collections.abc import Iterator
from typing import Any, NamedTuple

STDIO = (0, 1, 2)  # the task's descriptors the step's fork takes over
STDIO_MARKER = b"fds"
_HEADER = struct.Struct("!Q")


class Request(NamedTuple):
    """A task's request: run its step as the task would, in its directory and environment."""

    step: str
    arguments: dict[str, Any]
    cwd: str
    environ: dict[str, str]


class Answer(NamedTuple):
    """The server's first answer to a request: the pid of the fork running the step, or ask the
    next generation of the server again, or the run is interrupted (no step starts any more)."""

    pid: int | None = None
    again: bool = False
    interrupted: bool = False


class Reply(NamedTuple):
    """The step's end, from its fork: its exit code, return value and outputs' metadata."""

    code: int
    returns: Any
    metadata: dict[str, dict[str, Any]]


def send(connection: socket.socket, message: Any) -> None:
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


def receive(connection: socket.socket) -> Any:
    (size,) = _HEADER.unpack(_receive_exactly(connection, _HEADER.size))
    return pickle.loads(_receive_exactly(connection, size))


def portable(value: Any) -> Any:
    """A step's return value as it can be pickled: a namedtuple made on the fly (resolve-source's
    outputs) travels as its name, fields and values."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return ("__namedtuple__", type(value).__name__, tuple(value._fields), tuple(value))
    return value


def restored(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 4 and value[0] == "__namedtuple__":
        return namedtuple(value[1], value[2])(*value[3])
    return value


def task_artifacts(arguments: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """The kfp artifacts among a task's arguments (a collected list's items as `<name>.<index>`)."""
    for key, value in arguments.items():
        if isinstance(value, list):
            yield from ((f"{key}.{index}", item) for index, item in enumerate(value) if hasattr(item, "metadata"))
        elif hasattr(value, "metadata") and hasattr(value, "uri"):
            yield key, value
