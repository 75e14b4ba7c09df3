"""Tracking in MLflow: one run per pipeline run, one nested run per step.

Where runs go:
- `MLFLOW_TRACKING_URI` if set (a tracking server), else the config's `tracking_uri`, else a SQLite
  file under the output root (`<output_root>/mlflow.db`, artifacts in `<output_root>/mlartifacts`).
- A step logs into `MLFLOW_RUN_ID` when it is set: the KFP 2.17 backend's MLflow integration opens
  a nested run per task and hands its id to the container. Otherwise, when `tunepipe run` started
  the pipeline, the step opens a run nested under the pipeline's run (`TUNEPIPE_PARENT_RUN_ID`).

A step run carries its parameters, metrics, and each input and output artifact's URI and content
digest: inputs as MLflow dataset inputs (context = the artifact's name) and tags, outputs as tags
(named in `pipeline.tags`), so a model can be traced back to the data it came from.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.errors import TunepipeError, chain
from pipeline import tags

# The pipeline run a step nests its run under, handed to the step processes by `tunepipe run`.
PARENT_RUN_ENV = "TUNEPIPE_PARENT_RUN_ID"


def tracking_uri(output_root: str, configured: str | None = None) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if configured:
        return configured
    return "sqlite:///" + str(Path(output_root).resolve() / "mlflow.db")


# How long a step waits for a tracking server that went away: MLflow's own defaults (7 retries,
# exponential backoff, 120 s a request) make a lost server look like a hang for minutes. And no
# "View run at ..." line from MLflow at the end of every run (one request more each).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server (http, https) that answers, before any work starts; TunepipeError in one
    line if it does not. Local stores (a SQLite file, a directory) need no server."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answers (a proxy in front of it may refuse /health without credentials)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TunepipeError(f"the tracking server {_without_credentials(uri)} does not answer ({reason}); "
                            "nothing was run") from None


def _without_credentials(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"


def _experiment(name: str, output_root: str) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (Path(output_root).resolve() / "mlartifacts").as_uri()
    uri = mlflow.get_tracking_uri()
    return mlflow.create_experiment(name, artifact_location=location if uri.startswith("sqlite") else None)


@contextlib.contextmanager
def pipeline_run(name: str, output_root: str, configured_uri: str | None, params: dict[str, Any],
                 run_name: str | None = None) -> Iterator[Any]:
    """The MLflow run of one pipeline run; steps started while it is open nest under it."""
    import mlflow

    uri = tracking_uri(output_root, configured_uri)
    # The run's own requests are bounded as the steps' are, the last (closing its run) as the first.
    with environment(HTTP_DEFAULTS, overwrite=False), server_lost(uri):
        mlflow.set_tracking_uri(uri)
        experiment_id = _experiment(name, output_root)
        where = {tags.OUTPUT_ROOT: str(Path(output_root).resolve()), tags.HOST: socket.gethostname()}
        abandoned = close_abandoned(experiment_id, where)
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
        try:
            mlflow.set_tags({tags.KIND: tags.PIPELINE, **where})
            if abandoned:
                mlflow.set_tag(tags.CLOSED_ABANDONED, str(len(abandoned)))
            mlflow.log_params({key: _param(value) for key, value in params.items()})
            # Step subprocesses inherit these and nest their runs under this one; a server lost
            # mid-run fails the step that lost it within seconds (unless the environment says otherwise).
            with environment({"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment_id,
                              PARENT_RUN_ENV: run.info.run_id}):
                yield run
        except BaseException:
            with _unless_lost():  # a server that is gone cannot close the run: the error says why it failed
                mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run()


def _lost(error: BaseException) -> bool:
    """An MLflow error saying the tracking server did not answer (refused, reset, timed out, 5xx
    after the retries), not an answer it gave."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    # Also under another error (Keras Tuner's FatalError).
    return any(isinstance(found, MlflowException) and not isinstance(found, RestException)
               and isinstance(found.__cause__ or found.__context__, requests.exceptions.RequestException)
               for found in chain(error))


def _root_cause(error: BaseException) -> str:
    *_, error = chain(error)
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:200]


@contextlib.contextmanager
def server_lost(uri: str) -> Iterator[None]:
    """A tracking server that stops answering, as one line (a TunepipeError), not MLflow's traceback."""
    try:
        yield
    except Exception as error:
        if not _lost(error):
            raise
        raise TunepipeError(f"the tracking server {_without_credentials(uri)} stopped answering "
                            f"({_root_cause(error)})") from None


@contextlib.contextmanager
def _unless_lost() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if not _lost(error):
            raise


def close_abandoned(experiment_id: str, where: dict[str, str]) -> list[str]:
    """Mark KILLED the runs left RUNNING by earlier pipeline runs of this output root on this host
    (their `tunepipe run` was killed, or one of its steps was: a SIGKILLed process closes nothing);
    the ids of the runs marked. Called by a run that holds the output root (`pipeline.run_lock`),
    so none of those runs is live. A run of another output root or host is never touched."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    running = {run.info.run_id: run for run in client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=5000)}
    roots: dict[str, Any] = {}

    def root(run: Any) -> Any:
        seen = set()
        while (parent := run.data.tags.get(tags.PARENT_RUN)) and parent not in seen:
            seen.add(parent)
            if parent not in roots:
                try:
                    roots[parent] = running.get(parent) or client.get_run(parent)
                except MlflowException:
                    break
            run = roots[parent]
        return run

    closed = []
    for run_id, run in running.items():
        pipeline = root(run)
        if all(pipeline.data.tags.get(key) == value for key, value in where.items()):
            client.set_tag(run_id, tags.ERROR, "its tunepipe run ended without closing it (killed); marked KILLED "
                                               "by the next run on this output root")
            client.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
    return closed


@contextlib.contextmanager
def environment(values: dict[str, str], overwrite: bool = True) -> Iterator[None]:
    """Set environment variables (only unset ones unless `overwrite`) and restore them afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    for key, value in values.items():
        if overwrite or key not in os.environ:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 6000 else text[:5997] + "..."


class StepRecorder:
    """What a running step tells the tracking store: its outputs, metrics, tags and late params.
    Without tracking (no store set up for the step) every call does nothing."""

    def __init__(self, mlflow_module: Any | None):
        self._mlflow = mlflow_module

    @property
    def enabled(self) -> bool:
        return self._mlflow is not None

    def params(self, values: dict[str, Any]) -> None:
        if self._mlflow:
            self._mlflow.log_params({key: _param(value) for key, value in values.items()})

    def output(self, name: str, uri: str, digest: str) -> None:
        if self._mlflow:
            self._mlflow.set_tags({tags.output(name, "uri"): uri, tags.output(name, "digest"): digest})

    def metrics(self, values: dict[str, float]) -> None:
        if self._mlflow:
            self._mlflow.log_metrics({key: float(value) for key, value in values.items()})

    def tags(self, values: dict[str, str]) -> None:
        if self._mlflow:
            self._mlflow.set_tags(values)

    def log_artifacts(self, path: str, artifact_path: str) -> None:
        """A copy of the directory at `path` among the run's MLflow artifacts."""
        if self._mlflow:
            self._mlflow.log_artifacts(path, artifact_path=artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """A file among the run's MLflow artifacts (e.g. the hypermodel module it ran)."""
        if self._mlflow:
            self._mlflow.log_text(text, artifact_file)

    def inputs(self, values: dict[str, tuple[str, str]]) -> None:
        """Inputs known only once the step has started (e.g. an earlier run's result it reuses)."""
        if self._mlflow:
            _log_inputs(self._mlflow, values)

    @property
    def run_id(self) -> str | None:
        run = self._mlflow.active_run() if self._mlflow else None
        return run.info.run_id if run else None

    @property
    def experiment_id(self) -> str | None:
        run = self._mlflow.active_run() if self._mlflow else None
        return run.info.experiment_id if run else None


def _log_inputs(mlflow: Any, inputs: dict[str, tuple[str, str]]) -> None:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    datasets, contexts = [], []
    for name, (uri, digest) in inputs.items():
        with warnings.catch_warnings():
            # A local path matches MLflow's local-artifact source more than one way; it says so.
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(uri)
        datasets.append(MetaDataset(source=source, name=name, digest=digest[-16:]))
        contexts.append(name)
    if datasets:
        _retrying_a_lost_race(lambda: mlflow.log_inputs(datasets=datasets, contexts=contexts,
                                                        tags_list=[None] * len(datasets)))
    mlflow.set_tags({tags.input(name, "uri"): uri for name, (uri, _) in inputs.items()})
    mlflow.set_tags({tags.input(name, "digest"): digest for name, (_, digest) in inputs.items()})


def _retrying_a_lost_race(log: Any, attempts: int = 4) -> None:
    """`log()`, again when it lost a race in the tracking store: the tasks of a run that start
    together (the workers of a parallel search) log the same datasets at once, and MLflow's store
    inserts a dataset it did not find, so all but one insert fail on the unique key. Each attempt is
    one transaction; on the next one the dataset is there."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            return log()
        except MlflowException as error:
            if attempt == attempts - 1 or not any(sign in str(error) for sign in _DUPLICATE_KEY):
                raise
            time.sleep(0.2 * (attempt + 1))


# How a unique-key violation reads from SQLite, PostgreSQL and MySQL (through SQLAlchemy or the server).
_DUPLICATE_KEY = ("IntegrityError", "UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def _start_step_run(mlflow: Any, step: str):
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run(run_id=os.environ["MLFLOW_RUN_ID"])
    parent = os.environ.get(PARENT_RUN_ENV)
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if parent:
        return mlflow.start_run(run_name=step, experiment_id=experiment_id, parent_run_id=parent, nested=True)
    return mlflow.start_run(run_name=step, experiment_id=experiment_id)


def tracking_configured() -> bool:
    """Steps record lineage when someone set up tracking for them (the CLI or the KFP backend)."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI"))


@contextlib.contextmanager
def step_run(step: str, params: dict[str, Any], inputs: dict[str, tuple[str, str]] | None = None
             ) -> Iterator[StepRecorder]:
    """The MLflow run of one step; marked FAILED, with the error, if the step raises."""
    if not tracking_configured():
        yield StepRecorder(None)
        return
    import mlflow

    with server_lost(mlflow.get_tracking_uri()), _start_step_run(mlflow, step):
        mlflow.set_tags({tags.STEP: step, tags.CACHED: tags.flag(False)})
        mlflow.log_params({key: _param(value) for key, value in params.items()})
        _log_inputs(mlflow, inputs or {})
        try:
            yield StepRecorder(mlflow)
        except BaseException as error:
            # A server that is gone takes neither the error nor the end: the step's error says what happened.
            with _unless_lost():
                if not _lost(error):
                    mlflow.set_tag(tags.ERROR, str(error)[:tags.TAG_LIMIT])
                mlflow.end_run(status="FAILED")
            raise


def record_cached_step(step: str, outputs: dict[str, tuple[str, str]], facts: dict[str, Any]) -> None:
    """A step that kfp's cache answered did not run, so nothing logged it: record that it was reused,
    and which artifacts it reused, under the current pipeline run."""
    import mlflow

    with mlflow.start_run(run_name=step, nested=True):
        mlflow.set_tags({tags.STEP: step, tags.CACHED: tags.flag(True)})
        for name, (uri, digest) in outputs.items():
            StepRecorder(mlflow).output(name, uri, digest)
        numbers = {key: value for key, value in facts.items() if isinstance(value, (int, float))}
        if numbers:
            StepRecorder(mlflow).metrics(numbers)
