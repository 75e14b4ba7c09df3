"""What the fault-injection tests share: a tiny pipeline (few rows, trials and epochs) on a copy of
the penguins, a `tunepipe run` started in its own session so that the whole of it can be signalled,
the processes left in that session, and a small disk that really fills up (a tmpfs)."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import PENGUINS, ROOT

# Hyperband over 2 epochs with factor 2: 5 trials, a few seconds each.
TINY_TUNER = {"max_epochs": 2, "factor": 2, "batch_size": 32, "early_stopping_patience": 1,
              "search_space": {"architecture": {"type": "fixed", "value": "mlp",
                                                "branches": {"mlp": {"num_layers": 1,
                                                                     "units": {"type": "int", "min": 2, "max": 8}}}},
                               "dropout": 0.0, "weight_decay": 0.0, "optimizer": "adam",
                               "learning_rate": {"type": "float", "min": 1e-3, "max": 1e-1, "sampling": "log"}}}


def write_table(path: Path, seed: int, rows: int = 200) -> Path:
    """`rows` penguins drawn with `seed`: each seed is new data, so that nothing is cached."""
    with open(PENGUINS, newline="") as handle:
        reader = csv.DictReader(handle)
        header, table = reader.fieldnames, list(reader)
    chosen = random.Random(seed).sample(table, min(rows, len(table)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        writer.writerows(chosen)
    return path


def write_config(directory: Path, source: Path, serving_dir: Path, **sections) -> Path:
    """A pipeline config for `source` with the tiny budget; every candidate is blessed (accuracy
    at least 0, not worse than production by more than 1), so that every new model is pushed."""
    config = {"name": "faults", "model_name": "faults",
              "data": {"source": str(source), "label": "species", "features": {"exclude": ["year"]}},
              "tuner": TINY_TUNER,
              "training": {"epochs": 3, "early_stopping_patience": 1},
              "evaluation": {"value_thresholds": {"accuracy": {"lower": 0.0}},
                             "change_thresholds": {"accuracy": {"direction": "higher_is_better", "absolute": -1.0}}},
              "serving_dir": str(serving_dir), "beam": {"runner": "DirectRunner"}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = directory / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_run(config: Path, output_root: Path, terminal: Path, env: dict[str, str] | None = None,
              command: str = "run") -> subprocess.Popen:
    """`tunepipe run` in a session of its own (its process id is the session's and the group's),
    its terminal output appended to `terminal`."""
    with open(terminal, "a") as handle:
        return subprocess.Popen([sys.executable, "-m", "pipeline", command, "--config", str(config),
                                 "--output-root", str(output_root)], stdout=handle, stderr=handle,
                                start_new_session=True, env={**os.environ, "COLUMNS": "200", **(env or {})})


def session_processes(session: int) -> list[str]:
    """The command lines of the live processes in session `session` (zombies hold nothing)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(command)
    return found


def wait_for_session_to_end(session: int, timeout: float = 60) -> list[str]:
    """Wait until no process of `session` is left; what is still there after `timeout`."""
    deadline = time.monotonic() + timeout
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wait_for_text(terminal: Path, text: str, run: subprocess.Popen, timeout: float = 300) -> bool:
    """Wait until `text` is in the terminal output; False if the run ended first."""
    deadline = time.monotonic() + timeout
    while text not in terminal.read_text(errors="replace"):
        if run.poll() is not None:
            return text in terminal.read_text(errors="replace")
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not seen within {timeout} s:\n{terminal.read_text()[-3000:]}")
        time.sleep(0.1)
    return True


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TrackingServer:
    """A real MLflow tracking server (`mlflow server`) on a local port, its store (SQLite, artifacts)
    in `directory`; in a session of its own, so that `kill` takes all of it (its workers too) at
    once, and `start` again serves the same store on the same port."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory, self.port = directory, port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> "TrackingServer":
        """Start it and wait until its /health answers."""
        import urllib.request

        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / "server.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
        with open(log, "a") as handle:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
                 "--artifacts-destination", str(self.directory / "artifacts")],
                stdout=handle, stderr=handle, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(f"the MLflow server did not answer:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL to its whole session; returns once none of it is left."""
        import signal

        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        left = wait_for_session_to_end(self.process.pid, 30)
        assert left == [], left


def in_tmpfs(mountpoint: Path, size: str, function: Callable[..., Any], **arguments: Any) -> Any:
    """`function(**arguments)` (a module-level function; arguments and result as JSON) in a process
    of its own in which `mountpoint` is a tmpfs of `size`: a disk that really fills up, for that
    process and its children only (a user and a mount namespace of their own: no root needed). The
    tmpfs ends with the process: what is to be checked on it, the function reads and returns."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    result = mountpoint.parent / f"{mountpoint.name}.result.json"
    code = ("import importlib, json, sys; module, name, arguments, result = sys.argv[1:]; "
            "found = getattr(importlib.import_module(module), name)(**json.loads(arguments)); "
            "open(result, 'w').write(json.dumps(found))")
    mount = 'mount -t tmpfs -o size="$1" tmpfs "$2" && shift 2 && exec "$@"'
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, "sh", size,
                           str(mountpoint), sys.executable, "-c", code, function.__module__, function.__name__,
                           json.dumps(arguments), str(result)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"in the tmpfs at {mountpoint}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return json.loads(result.read_text())


def fill(path: Path) -> None:
    """Write `path` until its file system has no space left."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, bytes(size)) == size:
                    pass
    finally:
        os.close(descriptor)


def files(root: Path) -> list[str]:
    """The files under `root`, as paths relative to it."""
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())
