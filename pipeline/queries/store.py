"""The tracking store the queries read: `Store`, talking to MLflow only through `MlflowClient`.

Only the client, so that a query works the same against the embedded SQLite store and a remote
tracking server. `Store` asks the store each question once (runs, experiments, the step runs of a
pipeline run, the runs that produced a digest, registered models: lineage meets the same parent
runs and input digests over and over), fetches the step runs of many pipeline runs in one search
(`prefetch_steps`: `tunepipe runs` would otherwise search once per row), finds the run that really
produced a cached step's outputs (by their digest), and turns what MLflow raises for an unreachable
or broken store into one `TunepipeError` line. MLflow is imported inside the methods, so importing
this module costs nothing.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.errors import TunepipeError
from pipeline import steps, tags
from pipeline.queries.records import outputs_of


# How much earlier than its pipeline run a step run may say it started: both take the time from the
# clock of the machine `tunepipe run` runs on, which an adjustment can set back a little.
CLOCK_SKEW_MS = 5_000


def _time(millis: int | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(millis / 1000).astimezone() if millis else None


def _unreachable(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}"
    return any(marker in text for marker in ("ConnectionError", "Max retries exceeded", "Connection refused",
                                             "NewConnectionError", "Failed to establish", "timed out",
                                             "API request to", "RemoteDisconnected"))


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _reason(error: BaseException) -> str:
    text = str(error)
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return _first_line(error)[:200]


class Store:
    """The tracking store, read through `MlflowClient`, with the look-ups lineage needs cached."""

    def __init__(self, tracking_uri: str | None = None):
        import mlflow

        # Opening a store is not news; MLflow and alembic announce it at INFO.
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.uri = tracking_uri or mlflow.get_tracking_uri()
        if self.uri.startswith("sqlite:///"):
            path = Path(self.uri.removeprefix("sqlite:///"))
            if not path.is_file():
                # MLflow would create an empty store there; a query should not write anything.
                raise TunepipeError(f"no tracking store at {path}: nothing was run with this output root yet "
                                    "(or give --tracking-uri / --config)")
        self.client = mlflow.MlflowClient(tracking_uri=self.uri)
        self._runs: dict[str, Any] = {}
        self._experiments: dict[str, Any] = {}
        self._listed_experiments = False
        self._steps: dict[str, dict[str, Any]] = {}  # pipeline run id -> its step runs by step name
        self._produced: dict[tuple[str, str, str], list[Any]] = {}  # (artifact, digest, experiment) -> runs
        self._versions: dict[str, list[Any]] = {}  # by model name
        self._served: dict[str, list[Any]] = {}  # versions by the digest of the model they serve
        self._registered: dict[str, Any] = {}

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """What MLflow raises for an unreachable or broken store, as one line."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except TunepipeError:
            raise
        except MlflowException as error:
            if _unreachable(error):
                raise TunepipeError(f"cannot reach the MLflow tracking server at {self.uri}: "
                                    f"{_reason(error)}") from None
            raise TunepipeError(f"the tracking store at {self.uri} failed: {_first_line(error)}") from None
        except OSError as error:
            raise TunepipeError(f"cannot reach the MLflow tracking server at {self.uri}: {_reason(error)}") from None

    # runs -------------------------------------------------------------------------------------

    def run(self, run_id: str) -> Any:
        if run_id not in self._runs:
            from mlflow.exceptions import MlflowException

            try:
                self._runs[run_id] = self.client.get_run(run_id)
            except MlflowException as error:
                if getattr(error, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error).lower():
                    raise TunepipeError(f"no MLflow run {run_id} in {self.uri}") from None
                raise
        return self._runs[run_id]

    def search(self, experiment_ids: list[str], filter_string: str = "", order_by: list[str] | None = None,
               limit: int | None = None) -> list[Any]:
        found, token = [], None
        while True:
            page_size = min(1000, limit - len(found)) if limit else 1000
            page = self.client.search_runs(experiment_ids, filter_string, max_results=page_size,
                                           order_by=order_by, page_token=token)
            for run in page:
                self._runs.setdefault(run.info.run_id, run)
                found.append(run)
            token = page.token
            if not token or (limit and len(found) >= limit):
                return found

    def experiments(self) -> list[Any]:
        if not self._listed_experiments:  # `experiment_id` and `experiment_name` may have cached a few
            token = None
            while True:
                page = self.client.search_experiments(max_results=1000, page_token=token)
                self._experiments.update({experiment.experiment_id: experiment for experiment in page})
                token = page.token
                if not token:
                    break
            self._listed_experiments = True
        return list(self._experiments.values())

    def experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._experiments:
            self._experiments[experiment_id] = self.client.get_experiment(experiment_id)
        return self._experiments[experiment_id].name

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            known = sorted(found.name for found in self.experiments() if found.name != "Default")
            hint = f"; experiments there: {', '.join(known)}" if known else "; it has none yet"
            raise TunepipeError(f"no experiment {name!r} in {self.uri}{hint}")
        self._experiments[experiment.experiment_id] = experiment
        return experiment.experiment_id

    def children(self, parent: Any) -> list[Any]:
        return self.search([parent.info.experiment_id], f"tags.`{tags.PARENT_RUN}` = {tags.quoted(parent.info.run_id)}",
                           order_by=["attributes.start_time ASC"])

    def steps(self, pipeline: Any) -> dict[str, Any]:
        """The step runs of a pipeline run by step name (the newest, should a step be recorded twice)."""
        if pipeline.info.run_id not in self._steps:
            self._steps[pipeline.info.run_id] = _by_step(self.children(pipeline))
        return self._steps[pipeline.info.run_id]

    def prefetch_steps(self, pipelines: list[Any]) -> None:
        """Fetch the step runs of all `pipelines` in one search, for `steps` to answer from.

        MLflow's filter has no IN for tags, so this takes every step run of their experiments that
        started since the oldest of them did (less `CLOCK_SKEW_MS`): a pipeline run's steps start
        after it, and the records of its cached steps are written as it ends. Step runs of other
        parents in that window (a pipeline run started earlier and still running) are left out; a
        pipeline run with no step run in the window is left for `steps` to search on its own.
        """
        pending = [pipeline for pipeline in pipelines if pipeline.info.run_id not in self._steps]
        if len(pending) < 2:
            return  # one search either way
        since = min(pipeline.info.start_time for pipeline in pending) - CLOCK_SKEW_MS
        experiment_ids = sorted({pipeline.info.experiment_id for pipeline in pending})
        found = self.search(experiment_ids, f"tags.`{tags.STEP}` IS NOT NULL and attributes.start_time >= {since}",
                            order_by=["attributes.start_time ASC"])
        children: dict[str, list[Any]] = {pipeline.info.run_id: [] for pipeline in pending}
        for run in found:
            parent = run.data.tags.get(tags.PARENT_RUN)
            if parent in children:
                children[parent].append(run)
        for pipeline_id, runs in children.items():
            if runs:
                self._steps[pipeline_id] = _by_step(runs)

    def parent(self, run: Any) -> Any | None:
        parent_id = run.data.tags.get(tags.PARENT_RUN)
        return self.run(parent_id) if parent_id else None

    def producer(self, name: str, digest: str, experiment_id: str, prefer: tuple[str | None, ...] = (),
                 before: int | None = None) -> Any | None:
        """The step run that produced the artifact `name` with `digest` (not a cache record of it).

        Deterministic steps can produce the same digest in several runs: prefer the pipeline runs
        in `prefer` (the consumer's own, then the one being traced), then the newest that started
        before `before` (the consumer), then any.
        """
        found = self._producers(name, digest, experiment_id)
        if not found:
            return None
        for pipeline_id in prefer:
            for run in found:
                if pipeline_id and run.data.tags.get(tags.PARENT_RUN) == pipeline_id:
                    return run
        finished = [run for run in found if run.info.status == "FINISHED"] or found
        if before is not None:
            earlier = [run for run in finished if run.info.start_time <= before]
            if earlier:
                return earlier[0]
        return finished[0]

    def input_producer(self, consumer: Any, name: str, digest: str, prefer: tuple[str | None, ...] = ()
                       ) -> Any | None:
        """The step run that produced the input `name` (as `consumer` recorded it: an item of a
        collected list, `worker_tunings.0`, is the output it collects) with `digest`: preferring the
        consumer's pipeline run, then those in `prefer`, then the newest before the consumer."""
        return self.producer(steps.produced_as(name), digest, consumer.info.experiment_id,
                             prefer=(consumer.data.tags.get(tags.PARENT_RUN), *prefer),
                             before=consumer.info.start_time)

    def _producers(self, name: str, digest: str, experiment_id: str) -> list[Any]:
        """The step runs (not cache records) whose output `name` has `digest`, newest first: those in
        `experiment_id`, else those in any other experiment."""
        key = (name, digest, experiment_id)
        if key not in self._produced:
            query = (f"tags.`{tags.output(name, 'digest')}` = {tags.quoted(digest)} "
                     f"and tags.`{tags.CACHED}` = '{tags.flag(False)}'")
            found = self.search([experiment_id], query, order_by=["attributes.start_time DESC"])
            if not found:
                others = [experiment.experiment_id for experiment in self.experiments()
                          if experiment.experiment_id != experiment_id]
                found = self.search(others, query, order_by=["attributes.start_time DESC"]) if others else []
            self._produced[key] = found
        return self._produced[key]

    def effective(self, step_run: Any, prefer: tuple[str | None, ...] = ()) -> Any | None:
        """The run that did a step's work: the step run itself, or for a cache record the producer of
        its output (None when no run in the store produced it)."""
        if step_run.data.tags.get(tags.CACHED) != tags.flag(True):
            return step_run
        for name, (_, digest) in outputs_of(step_run).items():
            if digest:
                return self.producer(name, digest, step_run.info.experiment_id,
                                     prefer=(step_run.data.tags.get(tags.PARENT_RUN), *prefer),
                                     before=step_run.info.start_time)
        return None

    # the registry -----------------------------------------------------------------------------

    def model_version(self, name: str, version: str | None = None, alias: str | None = None) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            if alias is not None:
                return self.client.get_model_version_by_alias(name, alias)
            return self.client.get_model_version(name, str(version))
        except MlflowException as error:
            if _unreachable(error):
                raise
            try:
                registered = self.registered_model(name)
            except MlflowException:
                raise TunepipeError(f"no registered model {name!r} in {self.uri}") from None
            if alias is not None:
                aliases = ", ".join(f"@{key}" for key in sorted(registered.aliases)) or "none"
                raise TunepipeError(f"registered model {name!r} has no alias {alias!r} (aliases: {aliases})") from None
            versions = sorted(int(found.version) for found in self.versions(name))
            known = ", ".join(str(number) for number in versions) or "none"
            raise TunepipeError(f"registered model {name!r} has no version {version} (versions: {known})") from None

    def versions(self, name: str) -> list[Any]:
        if name not in self._versions:
            self._versions[name] = list(self.client.search_model_versions(f"name = {tags.quoted(name)}"))
        return self._versions[name]

    def registered_model(self, name: str) -> Any:
        if name not in self._registered:
            self._registered[name] = self.client.get_registered_model(name)
        return self._registered[name]

    def versions_with_digest(self, digest: str) -> list[Any]:
        """The registered versions of a served model, by the digest `pipeline.registry` tags them with."""
        if digest not in self._served:
            self._served[digest] = list(self.client.search_model_versions(
                f"tags.{tags.VERSION_DIGEST} = {tags.quoted(digest)}"))
        return self._served[digest]

    def aliases(self, version: Any) -> list[str]:
        aliases = list(getattr(version, "aliases", None) or [])
        if not aliases:
            with contextlib.suppress(Exception):
                registered = self.registered_model(version.name)
                aliases = [alias for alias, number in registered.aliases.items() if str(number) == str(version.version)]
        return sorted(aliases)


def _by_step(runs: list[Any]) -> dict[str, Any]:
    """Step runs by step name, given oldest first: the newest wins should a step be recorded twice."""
    return {run.data.tags[tags.STEP]: run for run in runs if tags.STEP in run.data.tags}


def open_store(tracking_uri: str | None) -> Store:
    return Store(tracking_uri)
