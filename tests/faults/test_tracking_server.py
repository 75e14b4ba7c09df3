"""The MLflow tracking server goes away in the middle of a `tunepipe run` (docs/reliability.md, "The
tracking server lost mid-run"): the step that lost it fails, clearly and soon, never a hang; the run
ends with one line naming that step, no traceback, no process left; nothing is served that the
registry does not know; and once the server is back, the next run completes.

A real `mlflow server` (tests/faults/support.py, `TrackingServer`) on a local port, killed with
SIGKILL, whole:
- A: once tune is running (the step's first requests to the server find it gone);
- B: in push, at its first registry request, after the new version was renamed into the serving
  directory (a proxy in front of the server kills it at that request and refuses from then on).

How soon: the run inherits tunepipe's bound on MLflow's HTTP retries (`tracking.HTTP_DEFAULTS`, set
by `tunepipe run` unless the environment sets `MLFLOW_HTTP_REQUEST_*`; the test unsets them). A
killed server refuses connections at once, so a request gives up after its retries' back-off only
(`_request_gives_up`: 3 s with 2 retries and factor 1; MLflow's own defaults, 7 retries and factor
2, take 250 s). What can fail one after the other once the server is gone: the step's request that
found it gone, the step's FAILED tag and the end of its run, the end of the pipeline's run: 4
requests, 12 s, plus the ends of kfp.local's task, the step server and the CLI (a few seconds).
`LOST_BOUND` allows 6 requests and 30 s more; MLflow's defaults exceed it with one request.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import tags
from pipeline.tracking import HTTP_DEFAULTS
from tests.faults.support import (TrackingServer, start_run, wait_for_session_to_end, wait_for_text, write_config,
                                  write_table)

pytestmark = pytest.mark.faults

MODEL = "faults"  # the model_name of write_config
RUN_TIMEOUT = 300  # a whole tiny run takes about a minute here


def _request_gives_up(defaults: dict[str, str]) -> float:
    """The longest one MLflow request to a server that refuses connections takes to fail: urllib3
    sleeps 0 s after the first failure, then factor * 2^(n-1) s (at most 120 s) after the n-th, plus
    up to 1 s of jitter (MLFLOW_HTTP_REQUEST_BACKOFF_JITTER's default)."""
    retries = int(defaults["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    factor = float(defaults["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    return sum(min(120.0, factor * 2 ** (n - 1)) + 1.0 for n in range(2, retries + 1))


LOST_BOUND = 6 * _request_gives_up(HTTP_DEFAULTS) + 30  # seconds from the server's death to the run's end


@pytest.fixture(autouse=True)
def _tunepipe_bounds_the_retries(monkeypatch):
    """What is tested is tunepipe's own bound: no MLFLOW_HTTP_* or tracking URI from outside."""
    for key in list(os.environ):
        if key.startswith("MLFLOW_"):
            monkeypatch.delenv(key)


def _ended(run: subprocess.Popen, timeout: float, terminal: Path) -> tuple[int, float]:
    """The run's exit code and how long it took to end; a run still going after `timeout` is killed
    (its whole session) and the test fails."""
    started = time.monotonic()
    try:
        code = run.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        pytest.fail(f"the run was still going {timeout:.0f} s after the tracking server was lost:\n"
                    f"{terminal.read_text(errors='replace')[-3000:]}")
    return code, time.monotonic() - started


def _failed_clearly(terminal: Path, step: str) -> str:
    """The run's last line: the one `tunepipe: error:` line, naming `step` and the tracking server;
    no traceback anywhere on the terminal."""
    text = terminal.read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tunepipe: error:")]
    assert "Traceback" not in text, text[-6000:]
    assert errors == lines[-1:], text[-3000:]
    assert re.search(rf"\b{re.escape(step)}\b", lines[-1]) and "tracking server" in lines[-1], lines[-1]
    return lines[-1]


def _served(serving_dir: Path) -> dict[int, str]:
    """The versions TF Serving would load (integer directories): number -> the model's digest."""
    from components.push import served_digest

    root = serving_dir / MODEL
    return {int(entry.name): served_digest(entry) for entry in root.iterdir()
            if entry.is_dir() and entry.name.isdigit()} if root.is_dir() else {}


def _registered(uri: str) -> tuple[dict[int, str], int | None]:
    """The registry's versions of the model (serving version -> digest) and the serving version the
    production alias names."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {int(version.tags[tags.VERSION_SERVING]): version.tags.get(tags.VERSION_DIGEST)
                for version in client.search_model_versions(f"name = '{MODEL}'")}
    try:
        production = client.get_model_version_by_alias(MODEL, tags.PRODUCTION_ALIAS)
    except MlflowException:
        return versions, None
    return versions, int(production.tags[tags.VERSION_SERVING])


def _running_runs(uri: str) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return [f"{run.info.run_name} ({run.info.run_id})" for run in client.search_runs(experiments)
            if run.info.status == "RUNNING"]


def _next_run_completes(config: Path, output: Path, terminal: Path, server: TrackingServer, serving: Path) -> None:
    """With the server back (same store): the next run completes, the serving directory and the
    registry agree, and no run of the store is left RUNNING."""
    started = time.monotonic()
    run = start_run(config, output, terminal, env={"MLFLOW_TRACKING_URI": server.uri})
    code, took = _ended(run, RUN_TIMEOUT, terminal)
    print(f"the next run: exit {code} in {took:.1f} s")
    assert code == 0, terminal.read_text(errors="replace")[-4000:]
    assert wait_for_session_to_end(run.pid, 30) == []
    served = _served(serving)
    registered, production = _registered(server.uri)
    assert served and registered == served, (served, registered)
    assert production == max(served), (production, served)
    assert _running_runs(server.uri) == [], f"{time.monotonic() - started:.0f} s"


@contextlib.contextmanager
def _then_the_next_run_completes(run: subprocess.Popen, server: TrackingServer, config: Path, output: Path,
                                 terminal: Path, serving: Path) -> Iterator[None]:
    """Around a run that loses the server: whatever the body found, the run and the server end;
    if it found nothing wrong, the server comes back and the next run completes."""
    try:
        yield
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        server.kill()
    server.start()
    try:
        _next_run_completes(config, output, terminal, server, serving)
    finally:
        server.kill()


def test_a_server_lost_while_tune_runs_fails_tune_at_once_and_the_next_run_completes(tmp_path):
    server = TrackingServer(tmp_path / "tracking").start()
    serving, output, terminal = tmp_path / "serving", tmp_path / "out", tmp_path / "terminal.txt"
    config = write_config(tmp_path, write_table(tmp_path / "data" / "penguins.csv", seed=401), serving)
    run = start_run(config, output, terminal, env={"MLFLOW_TRACKING_URI": server.uri})
    with _then_the_next_run_completes(run, server, config, output, terminal, serving):
        assert wait_for_text(terminal, "→ tune running", run, timeout=RUN_TIMEOUT), terminal.read_text()[-3000:]
        server.kill()
        code, took = _ended(run, LOST_BOUND, terminal)
        print(f"server lost while tune ran: exit {code}, {took:.1f} s after the kill (bound {LOST_BOUND:.0f} s)")
        assert code != 0
        print(_failed_clearly(terminal, "tune"))
        assert wait_for_session_to_end(run.pid, 30) == []
        assert _served(serving) == {}


class _CuttingProxy(http.server.ThreadingHTTPServer):
    """An HTTP proxy to `backend` that, at the first request whose path starts with `cut_at`, calls
    `on_cut` (kills the server), drops that request unanswered and stops listening: from then on
    every connection is refused, as by a server that died at that moment."""

    daemon_threads = True

    def __init__(self, backend: TrackingServer, cut_at: str, on_cut):
        super().__init__(("127.0.0.1", 0), _Forward)
        self.backend, self.cut_at, self.on_cut = backend, cut_at, on_cut
        self.cut = threading.Event()
        self.served_at_cut: dict[int, str] | None = None
        self._lock = threading.Lock()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def cut_now(self) -> None:
        with self._lock:
            if self.cut.is_set():
                return
            self.on_cut()
            self.cut.set()
        threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Forward(http.server.BaseHTTPRequestHandler):
    server: _CuttingProxy

    def log_message(self, *_args) -> None:
        pass

    def _forward(self) -> None:
        if self.server.cut.is_set() or self.path.startswith(self.server.cut_at):
            self.server.cut_now()
            self.close_connection = True
            return  # no answer: the connection closes
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {key: value for key, value in self.headers.items() if key.lower() not in ("host", "connection")}
        backend = http.client.HTTPConnection("127.0.0.1", self.server.backend.port, timeout=120)
        try:
            backend.request(self.command, self.path, body=body, headers=headers)
            answer = backend.getresponse()
            data = answer.read()
        except OSError:
            self.close_connection = True
            return
        finally:
            backend.close()
        self.send_response(answer.status, answer.reason)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


def test_a_server_lost_as_push_registers_leaves_nothing_served_that_the_registry_does_not_know(tmp_path):
    server = TrackingServer(tmp_path / "tracking").start()
    serving, output, terminal = tmp_path / "serving", tmp_path / "out", tmp_path / "terminal.txt"
    config = write_config(tmp_path, write_table(tmp_path / "data" / "penguins.csv", seed=402), serving)

    def lose_the_server() -> None:
        proxy.served_at_cut = _served(serving)  # what push had done when it first asked the registry
        server.kill()

    # register() asks for the registered model first; nothing before push does.
    proxy = _CuttingProxy(server, "/api/2.0/mlflow/registered-models/get", lose_the_server)
    run = start_run(config, output, terminal, env={"MLFLOW_TRACKING_URI": proxy.uri})
    with _then_the_next_run_completes(run, server, config, output, terminal, serving):
        assert wait_for_text(terminal, "→ push running", run, timeout=RUN_TIMEOUT), terminal.read_text()[-3000:]
        assert proxy.cut.wait(60), "push never asked the registry"
        code, took = _ended(run, LOST_BOUND, terminal)
        print(f"server lost as push registered (served then: {proxy.served_at_cut}): exit {code}, "
              f"{took:.1f} s after the kill (bound {LOST_BOUND:.0f} s)")
        assert code != 0
        assert wait_for_session_to_end(run.pid, 30) == []
        served = _served(serving)
        print(f"served after the run: {served}")
        # Nothing served without its registry entry: the registry was never told (the server died
        # at push's first registry request), so nothing may be served.
        assert served == {}, served
        print(_failed_clearly(terminal, "push"))
