"""Read-only questions about what tunepipe recorded in MLflow, and how to show the answers.

This module owns three questions, asked only through `MlflowClient` so that they work the same
against the embedded SQLite store and a remote tracking server:

- `pipeline_runs(experiment)`: one row per `tunepipe run` (when, status, spans, best trial score,
  eval accuracy, blessed, pushed version or why not, which steps came from kfp's cache);
- `trials(run)`: the tuner trials behind a pipeline run, best first;
- `lineage(target)`: from the source data through every step, artifact and the best trial to a
  pushed model version, as nodes and edges.

What it reads is the schema `pipeline.lineage`, `components.tune` and `components.push` write (see
those modules). A step that kfp's cache answered is only a record of reused outputs
(`tunepipe.cached=true`); the run that produced those outputs is found by their content digest,
so lineage and trials see through the cache to the run that did the work.

Renderers for the terminal (rich tables and a tree) and for other tools (`dot`, `mermaid`, a
self-contained `html` page, `json`) are at the end.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import html as html_lib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import lineage as lineage_schema
from pipeline.config import STEPS
from pipeline.errors import TunepipeError

KIND_TAG = "tunepipe.kind"
PARENT_TAG = "mlflow.parentRunId"
STEP_TAG = lineage_schema.STEP_TAG
CACHED_TAG = lineage_schema.CACHED_TAG
OUTPUT_PREFIX = lineage_schema.OUTPUT_TAG + "."
INPUT_PREFIX = "tunepipe.input."
SPANS_TAG = lineage_schema.SPANS_TAG
FINGERPRINT_TAG = "tunepipe.fingerprint"
# components.tune's trial run tags, repeated so that these queries need no TensorFlow import.
TRIAL_ID_TAG = "tunepipe.trial_id"
TRIAL_STATUS_TAG = "tunepipe.trial_status"
SEARCH_ID_TAG = "tunepipe.search_id"
OBJECTIVE_TAG = "tunepipe.objective"
TUNING_TAG = lineage_schema.TUNING_TAG
REUSED_FROM_TAG = lineage_schema.REUSED_FROM_TAG
# Trial params that describe the trial (Hyperband bookkeeping), not the model.
TRIAL_FACTS = ("trial_id", "bracket", "round", "initial_epoch", "max_epoch", "continued_from")
PRODUCTION_ALIAS = "production"  # components.push.PRODUCTION_ALIAS, without importing the component
ARTIFACT_NAMES = ("examples", "transform", "tuning", "model", "evaluation")
# Step inputs that are a served model version rather than an artifact a step produced.
SERVED_INPUTS = ("baseline", "warm_start")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_MODEL_VERSION = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9][\w.-]*)(?::|/)(?P<version>\d+)$")
_MODEL_ALIAS = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9][\w.-]*)@(?P<alias>[\w-]+)$")


# --- the answers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunRow:
    """One pipeline run, as `tunepipe runs` shows it."""

    run_id: str
    name: str
    experiment: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    started: dt.datetime | None
    ended: dt.datetime | None
    source: str | None
    spans: tuple[str, ...] | None  # None: the run did not record spans
    fingerprint: str | None
    code_version: str | None
    objective: str | None
    best_score: float | None
    trials: int | None
    eval_metrics: dict[str, float]
    blessed: bool | None
    pushed_version: str | None
    push_reason: str | None  # why it was pushed, or why not
    cached_steps: tuple[str, ...]
    failed_step: str | None = None
    error: str | None = None
    tuning: str | None = None  # searched, reused or off

    @property
    def accuracy(self) -> float | None:
        return self.eval_metrics.get("accuracy")

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


@dataclass(frozen=True)
class TrialRow:
    """One tuner trial (a nested run under the tune step's run)."""

    trial_id: str
    run_id: str
    status: str  # completed, failed, invalid, interrupted (components.tune)
    score: float | None
    epochs: int | None
    duration_s: float | None
    best_epoch: int | None
    hyperparameters: dict[str, Any]
    bracket: int | None = None
    round: int | None = None
    continued_from: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class TrialSearch:
    """The trials of one tune step run, best first, and what ranked them."""

    tune_run_id: str
    pipeline_run_id: str | None
    objective: str | None
    direction: str  # max or min
    rows: tuple[TrialRow, ...]
    reused_by: str | None = None  # the pipeline run whose tune step the cache answered with this search

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


@dataclass
class Node:
    """One thing in a lineage graph: the source data, a step run, an artifact, a trial or a model version."""

    id: str
    kind: str  # source, step, artifact, trial, model
    label: str
    facts: dict[str, str] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)  # the few facts a graph label shows
    run_id: str | None = None
    cached: bool = False  # a step the traced pipeline run took from kfp's cache
    target: bool = False  # what the user asked about


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str = ""


@dataclass
class LineageGraph:
    target: str
    tracking_uri: str
    pipeline_run_id: str | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def connect(self, source: str, target: str, label: str = "") -> None:
        edge = Edge(source, target, label)
        if source != target and edge not in self.edges:
            self.edges.append(edge)

    def of_kind(self, kind: str) -> list[Node]:
        return [node for node in self.ordered() if node.kind == kind]

    def step(self, name: str) -> Node | None:
        return next((node for node in self.of_kind("step") if node.facts.get("step") == name), None)

    def upstream(self, node_id: str) -> list[Edge]:
        return [edge for edge in self.edges if edge.target == node_id]

    def ordered(self) -> list[Node]:
        """Nodes from the source data to the model: a topological order, steps in DAG order."""
        incoming = {node_id: 0 for node_id in self.nodes}
        for edge in self.edges:
            incoming[edge.target] += 1
        position = {node_id: index for index, node_id in enumerate(self.nodes)}

        def rank(node_id: str) -> tuple[int, int]:
            node = self.nodes[node_id]
            if node.kind == "source":
                return (-1, position[node_id])
            step = node.facts.get("step")
            return (STEPS.index(step) if step in STEPS else len(STEPS), position[node_id])

        ready = sorted((node_id for node_id, count in incoming.items() if count == 0), key=rank)
        order: list[str] = []
        while ready:
            current = ready.pop(0)
            order.append(current)
            for edge in self.edges:
                if edge.source == current:
                    incoming[edge.target] -= 1
                    if incoming[edge.target] == 0:
                        ready.append(edge.target)
            ready.sort(key=rank)
        order += [node_id for node_id in self.nodes if node_id not in order]  # a cycle: never expected
        return [self.nodes[node_id] for node_id in order]

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "tracking_uri": self.tracking_uri, "pipeline_run_id": self.pipeline_run_id,
                "nodes": [{"id": node.id, "kind": node.kind, "label": node.label, "run_id": node.run_id,
                           "cached": node.cached, "target": node.target, "facts": node.facts}
                          for node in self.ordered()],
                "edges": [{"source": edge.source, "target": edge.target, "label": edge.label} for edge in self.edges]}


# --- talking to MLflow ---------------------------------------------------------------------------

def _quote(value: str) -> str:
    """A value in an MLflow filter string."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise TunepipeError(f"cannot look up {value!r}: it holds both kinds of quotes")


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
        if not self._experiments:
            token = None
            while True:
                page = self.client.search_experiments(max_results=1000, page_token=token)
                self._experiments.update({experiment.experiment_id: experiment for experiment in page})
                token = page.token
                if not token:
                    break
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
        return self.search([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = {_quote(parent.info.run_id)}",
                           order_by=["attributes.start_time ASC"])

    def steps(self, pipeline: Any) -> dict[str, Any]:
        """The step runs of a pipeline run by step name (the newest, should a step be recorded twice)."""
        return {run.data.tags[STEP_TAG]: run for run in self.children(pipeline) if STEP_TAG in run.data.tags}

    def parent(self, run: Any) -> Any | None:
        parent_id = run.data.tags.get(PARENT_TAG)
        return self.run(parent_id) if parent_id else None

    def producer(self, name: str, digest: str, experiment_id: str, prefer: tuple[str | None, ...] = (),
                 before: int | None = None) -> Any | None:
        """The step run that produced the artifact `name` with `digest` (not a cache record of it).

        Deterministic steps can produce the same digest in several runs: prefer the pipeline runs
        in `prefer` (the consumer's own, then the one being traced), then the newest that started
        before `before` (the consumer), then any.
        """
        query = (f"tags.`{OUTPUT_PREFIX}{name}.digest` = {_quote(digest)} "
                 f"and tags.`{CACHED_TAG}` = 'false'")
        found = self.search([experiment_id], query, order_by=["attributes.start_time DESC"])
        if not found:
            others = [experiment.experiment_id for experiment in self.experiments()
                      if experiment.experiment_id != experiment_id]
            found = self.search(others, query, order_by=["attributes.start_time DESC"]) if others else []
        if not found:
            return None
        for pipeline_id in prefer:
            for run in found:
                if pipeline_id and run.data.tags.get(PARENT_TAG) == pipeline_id:
                    return run
        finished = [run for run in found if run.info.status == "FINISHED"] or found
        if before is not None:
            earlier = [run for run in finished if run.info.start_time <= before]
            if earlier:
                return earlier[0]
        return finished[0]

    def effective(self, step_run: Any, prefer: tuple[str | None, ...] = ()) -> Any | None:
        """The run that did a step's work: the step run itself, or for a cache record the producer of
        its output (None when no run in the store produced it)."""
        if step_run.data.tags.get(CACHED_TAG) != "true":
            return step_run
        for name, (_, digest) in outputs_of(step_run).items():
            if digest:
                return self.producer(name, digest, step_run.info.experiment_id,
                                     prefer=(step_run.data.tags.get(PARENT_TAG), *prefer),
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
                registered = self.client.get_registered_model(name)
            except MlflowException:
                raise TunepipeError(f"no registered model {name!r} in {self.uri}") from None
            if alias is not None:
                aliases = ", ".join(f"@{key}" for key in sorted(registered.aliases)) or "none"
                raise TunepipeError(f"registered model {name!r} has no alias {alias!r} (aliases: {aliases})") from None
            versions = sorted(int(found.version) for found in self.versions(name))
            known = ", ".join(str(number) for number in versions) or "none"
            raise TunepipeError(f"registered model {name!r} has no version {version} (versions: {known})") from None

    def versions(self, name: str) -> list[Any]:
        return list(self.client.search_model_versions(f"name = {_quote(name)}"))

    def versions_with_digest(self, digest: str) -> list[Any]:
        """The registered versions of a served model, by the digest `components.push` tags them with."""
        return list(self.client.search_model_versions(f"tags.digest = {_quote(digest)}"))

    def aliases(self, version: Any) -> list[str]:
        aliases = list(getattr(version, "aliases", None) or [])
        if not aliases:
            with contextlib.suppress(Exception):
                registered = self.client.get_registered_model(version.name)
                aliases = [alias for alias, number in registered.aliases.items() if str(number) == str(version.version)]
        return sorted(aliases)


def _reason(error: BaseException) -> str:
    text = str(error)
    if "Connection refused" in text or "ConnectionRefused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    if "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return _first_line(error)[:200]


def _open(tracking_uri: str | None) -> Store:
    return Store(tracking_uri)


# --- reading the schema ---------------------------------------------------------------------------

def outputs_of(run: Any) -> dict[str, tuple[str, str]]:
    """A step run's output artifacts: name -> (uri, digest)."""
    return _artifacts(run, OUTPUT_PREFIX)


def inputs_of(run: Any) -> dict[str, tuple[str, str]]:
    return _artifacts(run, INPUT_PREFIX)


def _artifacts(run: Any, prefix: str) -> dict[str, tuple[str, str]]:
    tags = run.data.tags
    names = sorted({key[len(prefix):].rsplit(".", 1)[0] for key in tags
                    if key.startswith(prefix) and key.rsplit(".", 1)[-1] in ("uri", "digest")})
    return {name: (tags.get(f"{prefix}{name}.uri", ""), tags.get(f"{prefix}{name}.digest", "")) for name in names}


def _number(text: str | None) -> Any:
    """A param as MLflow keeps it (a string) as the value it was: int, float, bool or string."""
    if text is None:
        return None
    for convert in (int, float):
        with contextlib.suppress(ValueError):
            return convert(text)
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    return text


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _json_param(run: Any, name: str) -> dict[str, Any]:
    with contextlib.suppress(TypeError, ValueError):
        value = json.loads(run.data.params.get(name, ""))
        if isinstance(value, dict):
            return value
    return {}


def _direction(tune_run: Any | None, objective: str | None) -> str:
    tuner = _json_param(tune_run, "tuner") if tune_run is not None else {}
    if tuner.get("direction") in ("max", "min"):
        return tuner["direction"]
    objective = objective or tuner.get("objective") or ""
    return "min" if objective.endswith("loss") else "max"


def _spans(tags: dict[str, str]) -> tuple[str, ...] | None:
    if SPANS_TAG not in tags:
        return None
    return tuple(span.strip() for span in tags[SPANS_TAG].split(",") if span.strip())


def _fingerprint(run: Any | None) -> str | None:
    if run is None:
        return None
    return run.data.params.get("fingerprint") or run.data.tags.get(FINGERPRINT_TAG)


def _short(value: Any, width: int = 60) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _digest(text: str) -> str:
    """sha256:abcdef… -> sha256:abcdef012345 (what a person compares by eye)."""
    algorithm, _, value = text.partition(":")
    return f"{algorithm}:{value[:12]}" if value else text[:19]


# --- tunepipe runs --------------------------------------------------------------------------------

def pipeline_runs(experiment: str | None = None, *, limit: int | None = 20, tracking_uri: str | None = None,
                  store: Store | None = None) -> list[RunRow]:
    """The pipeline runs of `experiment` (every experiment when None), newest first."""
    store = store or _open(tracking_uri)
    with store.errors():
        if experiment is not None:
            experiment_ids = [store.experiment_id(experiment)]
        else:
            experiment_ids = [found.experiment_id for found in store.experiments()]
        if not experiment_ids:
            return []
        pipelines = store.search(experiment_ids, f"tags.`{KIND_TAG}` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"], limit=limit)
        return [_run_row(store, pipeline) for pipeline in pipelines]


def _run_row(store: Store, pipeline: Any) -> RunRow:
    """One pipeline run's row; facts of steps the cache answered come from the runs that produced them."""
    steps = store.steps(pipeline)
    prefer = (pipeline.info.run_id,)
    source_run = steps.get("resolve-source")
    tune = store.effective(steps["tune"], prefer) if "tune" in steps else None
    tune_record = steps.get("tune")
    evaluate = store.effective(steps["evaluate"], prefer) if "evaluate" in steps else None
    push = steps.get("push")

    best_score = trials = None
    objective = None
    for candidate in (tune_record, tune):
        if candidate is not None and "best_score" in candidate.data.metrics:
            best_score = candidate.data.metrics["best_score"]
            break
    for candidate in (tune_record, tune):
        if candidate is not None and "trials" in candidate.data.metrics:
            trials = int(candidate.data.metrics["trials"])
            break
    if tune is not None:
        objective = _json_param(tune, "tuner").get("objective")

    evaluate_metrics = evaluate.data.metrics if evaluate is not None else {}
    eval_metrics = {key.removeprefix("eval_"): value for key, value in evaluate_metrics.items()
                    if key.startswith("eval_")}
    blessed_tag = evaluate.data.tags.get("tunepipe.blessed") if evaluate is not None else None
    blessed = None if blessed_tag is None else blessed_tag == "true"

    failed = next((run for name, run in steps.items() if run.info.status == "FAILED"), None)
    failed_step = failed.data.tags[STEP_TAG] if failed is not None else None
    error = failed.data.tags.get("tunepipe.error") if failed is not None else None

    pushed_version = push_reason = None
    if push is not None and push.data.tags.get("tunepipe.push.pushed") == "true":
        pushed_version = push.data.tags.get("tunepipe.push.version") or None
        push_reason = push.data.tags.get("tunepipe.push.reason")
    elif push is not None and "tunepipe.push.reason" in push.data.tags:
        push_reason = push.data.tags["tunepipe.push.reason"]
    elif failed_step is not None:
        push_reason = f"failed in {failed_step}" + (f": {error.splitlines()[0]}" if error else "")
    elif pipeline.info.status == "RUNNING":
        push_reason = "still running"
    elif blessed is False:
        push_reason = "not blessed"
    elif pipeline.info.status in ("FAILED", "KILLED"):
        push_reason = f"the run {pipeline.info.status.lower()}"

    cached = tuple(name for name in STEPS if name in steps and steps[name].data.tags.get(CACHED_TAG) == "true")
    params = pipeline.data.params
    return RunRow(
        run_id=pipeline.info.run_id, name=pipeline.info.run_name or "", experiment=store.experiment_name(
            pipeline.info.experiment_id), status=pipeline.info.status, started=_time(pipeline.info.start_time),
        ended=_time(pipeline.info.end_time),
        source=(source_run.data.params.get("source") if source_run else None) or params.get("source"),
        spans=_spans(source_run.data.tags) if source_run else None, fingerprint=_fingerprint(source_run),
        code_version=params.get("code_version"), objective=objective, best_score=best_score, trials=trials,
        eval_metrics=eval_metrics, blessed=blessed, pushed_version=pushed_version, push_reason=push_reason,
        cached_steps=cached, failed_step=failed_step, error=error,
        tuning=tune.data.tags.get(TUNING_TAG) if tune is not None else None)


# --- tunepipe trials ------------------------------------------------------------------------------

def find_run(store: Store, reference: str) -> Any:
    """A run by id, or a pipeline run by its name (e.g. `penguins-20260101-030000`)."""
    if _RUN_ID.match(reference):
        return store.run(reference)
    experiment_ids = [experiment.experiment_id for experiment in store.experiments()]
    found = store.search(experiment_ids, f"attributes.run_name = {_quote(reference)} "
                                         f"and tags.`{KIND_TAG}` = 'pipeline'") if experiment_ids else []
    if not found:
        raise TunepipeError(f"no MLflow run {reference} in {store.uri} (give a run id or a pipeline run name; "
                            "`tunepipe runs` lists them)")
    if len(found) > 1:
        raise TunepipeError(f"{len(found)} pipeline runs are named {reference!r}: give the run id")
    return found[0]


def trials(run: str, *, tracking_uri: str | None = None, store: Store | None = None) -> TrialSearch:
    """The tuner trials of a pipeline run (or of a tune step run), best first.

    When the run's tune step came from kfp's cache, the trials are those of the run that produced
    the reused tuning artifact.
    """
    store = store or _open(tracking_uri)
    with store.errors():
        found = find_run(store, run)
        tags = found.data.tags
        reused_by = None
        if tags.get(KIND_TAG) == "pipeline":
            record = store.steps(found).get("tune")
            if record is None:
                raise TunepipeError(f"pipeline run {found.info.run_id} has no tune step"
                                    f"{' (it failed before tuning)' if found.info.status == 'FAILED' else ''}")
        elif tags.get(STEP_TAG) == "tune":
            record = found
        elif TRIAL_ID_TAG in tags:
            record = store.parent(found)
        elif STEP_TAG in tags:
            raise TunepipeError(f"run {found.info.run_id} is the {tags[STEP_TAG]} step: give a pipeline run or a "
                                "tune step run")
        else:
            raise TunepipeError(f"run {found.info.run_id} is not a tunepipe pipeline or tune step run")
        pipeline_id = record.data.tags.get(PARENT_TAG)
        tune = store.effective(record)
        if tune is None:
            raise TunepipeError(f"the tune step of run {pipeline_id} came from kfp's cache, and no run in "
                                f"{store.uri} produced the tuning artifact it reused")
        if tune.info.run_id != record.info.run_id:
            reused_by = pipeline_id
        if tune.data.tags.get(REUSED_FROM_TAG):
            # Retraining reused an earlier search's best hyperparameters: these are that search's trials.
            tune, reused_by = store.run(tune.data.tags[REUSED_FROM_TAG]), pipeline_id
        trial_runs = [child for child in store.children(tune) if TRIAL_ID_TAG in child.data.tags]
        rows = [_trial_row(child) for child in trial_runs]
        objective = next((child.data.tags[OBJECTIVE_TAG] for child in trial_runs if child.data.tags.get(OBJECTIVE_TAG)),
                         None) or _json_param(tune, "tuner").get("objective")
        direction = _direction(tune, objective)
        return TrialSearch(tune_run_id=tune.info.run_id, pipeline_run_id=tune.data.tags.get(PARENT_TAG),
                           objective=objective, direction=direction, rows=tuple(_best_first(rows, direction)),
                           reused_by=reused_by)


def _trial_row(run: Any) -> TrialRow:
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    hyperparameters = {name: _number(value) for name, value in sorted(params.items()) if name not in TRIAL_FACTS}
    status = tags.get(TRIAL_STATUS_TAG) or ("running" if run.info.status == "RUNNING" else run.info.status.lower())
    return TrialRow(
        trial_id=tags.get(TRIAL_ID_TAG) or params.get("trial_id", ""), run_id=run.info.run_id, status=status,
        score=metrics.get("score"), epochs=_int(metrics.get("epochs")), duration_s=metrics.get("duration_s"),
        best_epoch=_int(metrics.get("best_epoch")), hyperparameters=hyperparameters,
        bracket=_int(_number(params.get("bracket"))), round=_int(_number(params.get("round"))),
        continued_from=params.get("continued_from"), error=tags.get("tunepipe.error"))


def _best_first(rows: list[TrialRow], direction: str) -> list[TrialRow]:
    sign = -1.0 if direction == "max" else 1.0

    def key(row: TrialRow) -> tuple:
        scored = row.score is not None and row.status in ("completed", "finished")
        return (0 if scored else 1, sign * row.score if scored else 0.0, row.trial_id)

    return sorted(rows, key=key)


# --- tunepipe lineage -----------------------------------------------------------------------------

def lineage(target: str, *, tracking_uri: str | None = None, store: Store | None = None) -> LineageGraph:
    """The lineage of `target`: a model version (`penguins:3`, `penguins@production`, `models:/penguins/3`,
    or its serving path), a pipeline, step or trial run id (or a pipeline run name), or an artifact
    path or URI."""
    store = store or _open(tracking_uri)
    with store.errors():
        return _Tracer(store, target).trace()


class _Tracer:
    """Builds a lineage graph upstream from the target, through the cache by digest."""

    def __init__(self, store: Store, target: str):
        self.store = store
        self.target = target
        self.graph = LineageGraph(target=target, tracking_uri=store.uri)
        self.pipeline: Any | None = None  # the pipeline run being traced
        self._expanded: set[str] = set()
        self._pipeline_steps: dict[str, dict[str, Any]] = {}

    # what the target is ---------------------------------------------------------------------

    def trace(self) -> LineageGraph:
        target = self.target.strip()
        if match := _MODEL_ALIAS.match(target):
            self._model_version(self.store.model_version(match["name"], alias=match["alias"]))
        elif (match := _MODEL_VERSION.match(target)) and not Path(target).exists():
            self._model_version(self.store.model_version(match["name"], version=match["version"]))
        elif _RUN_ID.match(target):
            self._run(self.store.run(target))
        elif "/" not in target and "://" not in target and not Path(target).exists():
            self._run(find_run(self.store, target))
        else:
            self._path(target)
        return self.graph

    def _run(self, run: Any) -> None:
        tags = run.data.tags
        if tags.get(KIND_TAG) == "pipeline":
            self._set_pipeline(run)
            steps = self._steps(run)
            if not steps:
                raise TunepipeError(f"pipeline run {run.info.run_id} has no step runs")
            for name in sorted(steps, key=lambda step: STEPS.index(step) if step in STEPS else len(STEPS)):
                self._step(steps[name])
            self.graph.target = f"pipeline run {run.info.run_name or run.info.run_id}"
        elif STEP_TAG in tags:
            self._set_pipeline(self.store.parent(run))
            node = self._step(run)
            node.target = True
        elif TRIAL_ID_TAG in tags:
            tune_record = self.store.parent(run)
            if tune_record is None:
                raise TunepipeError(f"trial run {run.info.run_id} has no tune step run above it")
            self._set_pipeline(self.store.parent(tune_record))
            tune_node = self._step(tune_record)
            trial = self._trial_node(run, best=False)
            trial.target = True
            self.graph.connect(tune_node.id, trial.id, "trial")
        else:
            raise TunepipeError(f"run {run.info.run_id} is not a tunepipe pipeline, step or trial run")

    def _path(self, target: str) -> None:
        """A serving directory (a model version), or an artifact a step produced, or a file inside one."""
        from urllib.parse import unquote

        if "://" in target and not target.startswith("file://"):
            candidates = [[target.rstrip("/")]]  # gs://, s3://: compared as written
        else:
            path = Path(unquote(target.removeprefix("file://"))).expanduser().resolve()
            # The artifact directory itself, else the one a file or folder inside it belongs to.
            candidates = [list(dict.fromkeys([str(place), place.as_uri()])) for place in (path, *path.parents[:3])]
        version = self._version_at(candidates[0])
        if version is not None:
            self._model_version(version)
            return
        for forms in candidates:
            for candidate in forms:
                producer = self._artifact_producer(candidate)
                if producer is None:
                    continue
                run, name = producer
                self._set_pipeline(self.store.parent(run))
                self._step(run)
                uri, digest = outputs_of(run)[name]
                node = self.graph.nodes.get(_artifact_id(name, uri, digest))
                if node is not None:
                    node.target = True
                return
        raise TunepipeError(f"{target} is not a model version, a run or an artifact that {self.store.uri} knows")

    def _version_at(self, candidates: list[str]) -> Any | None:
        """The registered model version served from one of `candidates` (<serving_dir>/<model>/<version>)."""
        for candidate in candidates:
            path = Path(candidate.removeprefix("file://"))
            if not path.name.isdigit() or not path.parent.name:
                continue
            from mlflow.exceptions import MlflowException

            try:
                versions = self.store.versions(path.parent.name)
            except MlflowException as error:
                if _unreachable(error):
                    raise
                continue
            for version in versions:
                if version.source and version.source.removeprefix("file://").rstrip("/") == str(path):
                    return version
        return None

    def _artifact_producer(self, uri: str) -> tuple[Any, str] | None:
        experiment_ids = [experiment.experiment_id for experiment in self.store.experiments()]
        if not experiment_ids:
            return None
        for name in ARTIFACT_NAMES:
            found = self.store.search(experiment_ids, f"tags.`{OUTPUT_PREFIX}{name}.uri` = {_quote(uri)}",
                                      order_by=["attributes.start_time ASC"])
            if found:
                produced = [run for run in found if run.data.tags.get(CACHED_TAG) == "false"]
                return (produced or found)[0], name
        return None

    # the model version -------------------------------------------------------------------------

    def _model_version(self, version: Any) -> None:
        push = self._push_of(version)
        if push is not None:
            self._set_pipeline(self.store.parent(push))
            push_node = self._step(push)
        else:
            push_node = None
            if version.run_id:
                train = self.store.run(version.run_id)
                self._set_pipeline(self.store.parent(train))
                self._step(train)
        node = self._version_node(version)
        node.target = True
        if push_node is not None:
            self.graph.connect(push_node.id, node.id, "registered")
        else:
            model = next((candidate for candidate in self.graph.of_kind("artifact")
                          if candidate.facts.get("digest") == version.tags.get("digest")), None)
            if model is not None:
                self.graph.connect(model.id, node.id, "pushed")

    def _push_of(self, version: Any) -> Any | None:
        """The push step run that served this model version."""
        serving_version = version.tags.get("serving_version") or Path(version.source or "").name
        experiment_ids = []
        if version.run_id:
            with contextlib.suppress(TunepipeError):
                experiment_ids = [self.store.run(version.run_id).info.experiment_id]
        experiment_ids = experiment_ids or [experiment.experiment_id for experiment in self.store.experiments()]
        query = (f"tags.`{STEP_TAG}` = 'push' and tags.`tunepipe.push.pushed` = 'true' "
                 f"and tags.`tunepipe.push.version` = {_quote(str(serving_version))} "
                 f"and params.model_name = {_quote(version.name)}")
        found = self.store.search(experiment_ids, query, order_by=["attributes.start_time DESC"])
        digest = version.tags.get("digest")
        matching = [run for run in found if not digest or run.data.tags.get(f"{INPUT_PREFIX}model.digest") == digest]
        return (matching or found or [None])[0]

    def _version_node(self, version: Any) -> Node:
        aliases = self.store.aliases(version)
        facts = {"model": version.name, "version": str(version.version), "source": version.source or "",
                 "aliases": ", ".join(f"@{alias}" for alias in aliases) or "-",
                 "serving version": version.tags.get("serving_version", "-"),
                 "forced": version.tags.get("forced", "-"), "digest": version.tags.get("digest", "-"),
                 "training run": version.run_id or "-", "registered": _format_time(_time(version.creation_timestamp))}
        summary = [f"source {version.source}"]
        if aliases:
            summary.insert(0, " ".join(f"@{alias}" for alias in aliases))
        if version.tags.get("forced") == "true":
            summary.append("forced")
        label = f"{version.name} v{version.version}"
        return self.graph.add(Node(f"model:{version.name}:{version.version}", "model", label, facts, summary))

    # steps ----------------------------------------------------------------------------------

    def _set_pipeline(self, pipeline: Any | None) -> None:
        if self.pipeline is None and pipeline is not None:
            self.pipeline = pipeline
            self.graph.pipeline_run_id = pipeline.info.run_id

    def _steps(self, pipeline: Any | None) -> dict[str, Any]:
        if pipeline is None:
            return {}
        if pipeline.info.run_id not in self._pipeline_steps:
            self._pipeline_steps[pipeline.info.run_id] = self.store.steps(pipeline)
        return self._pipeline_steps[pipeline.info.run_id]

    def _prefer(self, run: Any) -> tuple[str | None, ...]:
        return (run.data.tags.get(PARENT_TAG), self.graph.pipeline_run_id)

    def _step(self, record: Any) -> Node:
        """The node of the run that did `record`'s work, with everything upstream of it."""
        if record.data.tags.get(STEP_TAG) == "resolve-source":
            return self._source_node(record, None)  # the source data is what resolve-source resolved
        cached = record.data.tags.get(CACHED_TAG) == "true"
        producer = self.store.effective(record, self._prefer(record)) if cached else record
        run = producer or record
        node_id = f"step:{run.info.run_id}"
        node = self.graph.nodes.get(node_id)
        if node is None:
            node = self.graph.add(self._step_node(run))
        if not cached:
            # Reached upstream by digest: did the traced pipeline run take this result from the cache?
            reuse = self._steps(self.pipeline).get(run.data.tags.get(STEP_TAG, ""))
            if (reuse is not None and reuse.data.tags.get(CACHED_TAG) == "true"
                    and {d for _, d in outputs_of(reuse).values() if d} & {d for _, d in outputs_of(run).values()}):
                record, cached = reuse, True
        if cached and not node.cached:
            node.cached = True
            reused = (f"pipeline run {record.data.tags.get(PARENT_TAG, '?')} reused this result from kfp's cache "
                      f"(its record: run {record.info.run_id})")
            node.facts["cached"] = (f"yes: {reused}" if producer is not None else
                                    f"yes, but no run in this store produced it: {reused}")
            node.summary.append("reused from cache")
        if run.info.run_id in self._expanded:
            return node
        self._expanded.add(run.info.run_id)
        step = run.data.tags.get(STEP_TAG, "")
        for name, (uri, digest) in outputs_of(run).items():
            artifact = self._artifact_node(name, uri, digest, run)
            self.graph.connect(node.id, artifact.id, "produced")
        for name, (uri, digest) in inputs_of(run).items():
            artifact = self._artifact_node(name, uri, digest, None)
            self.graph.connect(artifact.id, node.id, name)
            if digest and name in SERVED_INPUTS:
                # A model in production (evaluate's baseline, train's warm start): the registered
                # version it is, not the whole lineage behind it.
                for version in self.store.versions_with_digest(digest):
                    self.graph.connect(self._version_node(version).id, artifact.id, "served")
            elif digest:
                upstream = self.store.producer(name, digest, run.info.experiment_id, prefer=self._prefer(run),
                                               before=run.info.start_time)
                if upstream is not None:
                    upstream_node = self._step(upstream)
                    self.graph.connect(upstream_node.id, artifact.id, "produced")
        if step == "ingest":
            self._source(run, node)
        elif step == "tune":
            self._best_trial(run, node)
        elif step == "push":
            self._blessing(run, node)
            self._registered(run, node)
        elif step == "evaluate":
            self._baseline_resolution(run, node)
        return node

    def _step_node(self, run: Any) -> Node:
        step = run.data.tags.get(STEP_TAG, "?")
        pipeline = self.store.parent(run)
        code_version = pipeline.data.params.get("code_version") if pipeline is not None else None
        facts = {"step": step, "run": run.info.run_id,
                 "pipeline run": f"{pipeline.info.run_name} ({pipeline.info.run_id})" if pipeline is not None else "-",
                 "status": run.info.status, "cached": "no", "code_version": code_version or "-",
                 "started": _format_time(_time(run.info.start_time))}
        for name, value in sorted(run.data.params.items()):
            facts[f"param {name}"] = value
        for name, value in sorted(run.data.metrics.items()):
            facts[f"metric {name}"] = _short(value)
        for key, value in sorted(run.data.tags.items()):
            if key.startswith("tunepipe.") and not key.startswith((INPUT_PREFIX, OUTPUT_PREFIX)) and key not in (
                    STEP_TAG, CACHED_TAG):
                facts[key.removeprefix("tunepipe.")] = value
        summary = [f"run {run.info.run_id[:8]}"]
        if pipeline is not None and pipeline.info.run_id != self.graph.pipeline_run_id:
            summary.append(f"in {pipeline.info.run_name or pipeline.info.run_id[:8]}")
        summary += _step_summary(step, run)
        return Node(f"step:{run.info.run_id}", "step", step, facts, summary, run_id=run.info.run_id)

    def _artifact_node(self, name: str, uri: str, digest: str, producer: Any | None) -> Node:
        node_id = _artifact_id(name, uri, digest)
        facts = {"name": name, "uri": uri or "-", "digest": digest or "-"}
        node = self.graph.add(Node(node_id, "artifact", name, facts, [_digest(digest)] if digest else []))
        if producer is not None:
            node.facts["produced by"] = f"{producer.data.tags.get(STEP_TAG, '?')} run {producer.info.run_id}"
            if name == "examples":
                counts = {key: value for key, value in producer.data.metrics.items() if key.startswith("rows_")
                          and key != "rows_read"}
                for key, value in sorted(counts.items()):
                    node.facts[key] = _short(int(value))
                if counts:
                    node.summary.append(", ".join(f"{key.removeprefix('rows_')} {int(value)}"
                                                  for key, value in sorted(counts.items())))
        return node

    def _source(self, ingest: Any, ingest_node: Node) -> None:
        """The source data: what resolve-source saw in the traced pipeline run (its spans and fingerprint).

        When the traced run took ingest from the cache, its own resolve-source is still the one that
        counts: the fingerprint it computed is what made the cached examples valid for it.
        """
        own = self._steps(self.store.parent(ingest)).get("resolve-source")
        traced = self._steps(self.pipeline).get("resolve-source")
        reused = self._steps(self.pipeline).get("ingest")
        took_it_from_cache = (reused is not None and reused.data.tags.get(CACHED_TAG) == "true"
                              and set(outputs_of(reused).values()) & set(outputs_of(ingest).values()))
        resolve = (traced if took_it_from_cache else own) or own or traced
        node = self._source_node(resolve, ingest)
        self.graph.connect(node.id, ingest_node.id, "read")

    def _source_node(self, resolve: Any | None, ingest: Any | None) -> Node:
        source = ((resolve.data.params.get("source") if resolve is not None else None)
                  or (ingest.data.params.get("source") if ingest is not None else None) or "?")
        # One node per source as a run saw it: the same pattern on another day is other data.
        node_id = f"source:{source}:{_fingerprint(resolve) or ''}"
        node = self.graph.nodes.get(node_id)
        if node is None:
            spans = _spans(resolve.data.tags) if resolve is not None else None
            fingerprint = _fingerprint(resolve)
            facts = {"uri": source, "spans": ", ".join(spans) if spans else ("-" if spans is None else "none"),
                     "fingerprint": fingerprint or "-",
                     "files": resolve.data.tags.get("tunepipe.files", "-") if resolve is not None else "-",
                     "resolved by": f"resolve-source run {resolve.info.run_id}" if resolve is not None else "-"}
            summary = ["spans " + ", ".join(spans)] if spans else []
            if fingerprint:
                summary.append(f"fingerprint {_digest(fingerprint)}")
            node = self.graph.add(Node(node_id, "source", source, facts, summary,
                                       run_id=resolve.info.run_id if resolve is not None else None))
        if ingest is not None and "rows_read" not in node.facts:
            metrics = ingest.data.metrics
            node.facts["label"] = ingest.data.params.get("label", "-")
            for key in ("rows_read", "rejected", "missing_label"):
                if key in metrics:
                    node.facts[key] = str(int(metrics[key]))
            if "rows_read" in metrics:
                rejected = int(metrics.get("rejected", 0))
                node.summary.append(f"{int(metrics['rows_read'])} rows read, {rejected} rejected")
        return node

    def _best_trial(self, tune: Any, tune_node: Node) -> None:
        runs = [run for run in self.store.children(tune) if TRIAL_ID_TAG in run.data.tags]
        rows = _best_first([_trial_row(run) for run in runs], _direction(tune, next(
            (run.data.tags.get(OBJECTIVE_TAG) for run in runs if run.data.tags.get(OBJECTIVE_TAG)), None)))
        if not rows or rows[0].score is None:
            return
        best = next(run for run in runs if run.info.run_id == rows[0].run_id)
        trial = self._trial_node(best, best=True, of=len(rows))
        self.graph.connect(tune_node.id, trial.id, f"best of {len(rows)} trials")
        tuning = next((self.graph.nodes[edge.target] for edge in self.graph.edges
                       if edge.source == tune_node.id and self.graph.nodes[edge.target].label == "tuning"), None)
        if tuning is not None:
            self.graph.connect(trial.id, tuning.id, "best hyperparameters")

    def _trial_node(self, run: Any, best: bool, of: int | None = None) -> Node:
        row = _trial_row(run)
        objective = run.data.tags.get(OBJECTIVE_TAG, "score")
        facts = {"trial": row.trial_id, "run": row.run_id, "status": row.status,
                 "score": f"{row.score:.4f}" if row.score is not None else "-", "objective": objective,
                 "epochs": str(row.epochs) if row.epochs is not None else "-",
                 "duration_s": f"{row.duration_s:.1f}" if row.duration_s is not None else "-"}
        if of is not None:
            facts["rank"] = f"best of {of}"
        for name, value in row.hyperparameters.items():
            facts[f"hp {name}"] = _short(value)
        summary = [f"{objective} {row.score:.4f}" if row.score is not None else row.status]
        summary += [f"{name}={_short(value, 12)}" for name, value in list(row.hyperparameters.items())[:6]]
        label = f"{'best trial' if best else 'trial'} {row.trial_id}"
        return self.graph.add(Node(f"trial:{row.run_id}", "trial", label, facts, summary, run_id=row.run_id))

    def _blessing(self, push: Any, push_node: Node) -> None:
        """Push reads the evaluation's blessing from the same pipeline run; its tags say it, not its inputs."""
        evaluate = self._steps(self.store.parent(push)).get("evaluate")
        if evaluate is None:
            return
        evaluate_node = self._step(evaluate)
        evaluation = next((self.graph.nodes[edge.target] for edge in self.graph.edges
                           if edge.source == evaluate_node.id and self.graph.nodes[edge.target].label == "evaluation"),
                          None)
        if evaluation is not None:
            self.graph.connect(evaluation.id, push_node.id, "blessing")
        else:
            self.graph.connect(evaluate_node.id, push_node.id, "blessing")

    def _registered(self, push: Any, push_node: Node) -> None:
        """The registry version a push created (matched by serving version and model digest)."""
        from mlflow.exceptions import MlflowException

        tags = push.data.tags
        name = push.data.params.get("model_name")
        if tags.get("tunepipe.push.pushed") != "true" or not name:
            return
        try:
            versions = self.store.versions(name)
        except MlflowException as error:
            if _unreachable(error):
                raise
            return
        digest = tags.get(f"{INPUT_PREFIX}model.digest")
        for version in versions:
            if version.tags.get("serving_version") == tags.get("tunepipe.push.version") and (
                    not digest or version.tags.get("digest") in (None, digest)):
                self.graph.connect(push_node.id, self._version_node(version).id, "registered")
                return

    def _baseline_resolution(self, evaluate: Any, evaluate_node: Node) -> None:
        """The baseline evaluate compared against, and the resolve-baseline run that chose it."""
        baseline = next((self.graph.nodes[edge.source] for edge in self.graph.upstream(evaluate_node.id)
                         if self.graph.nodes[edge.source].label == "baseline"), None)
        resolve = self._steps(self.store.parent(evaluate)).get("resolve-baseline")
        if baseline is None:
            # The first run: nothing in production, so only value thresholds applied.
            if resolve is not None and f"step:{resolve.info.run_id}" in self.graph.nodes:
                self.graph.connect(f"step:{resolve.info.run_id}", evaluate_node.id, "no baseline")
            return
        baseline.facts["what"] = "the model in production when this evaluation ran"
        if resolve is not None:
            resolve_node = self._step(resolve)
            self.graph.connect(resolve_node.id, baseline.id, "resolved")


def _artifact_id(name: str, uri: str, digest: str) -> str:
    return f"artifact:{name}:{digest or uri}"


def _step_summary(step: str, run: Any) -> list[str]:
    metrics, tags = run.data.metrics, run.data.tags
    if step == "ingest" and "rows_read" in metrics:
        return [f"{int(metrics['rows_read'])} rows read"]
    if step == "preprocess" and "features" in metrics:
        return [f"{int(metrics['features'])} features, {int(metrics.get('classes', 0))} classes"]
    if step == "tune" and "trials" in metrics:
        best = f", best {metrics['best_score']:.4f}" if "best_score" in metrics else ""
        return [f"{int(metrics['trials'])} trials{best}"]
    if step == "train" and "eval_accuracy" in metrics:
        return [f"eval accuracy {metrics['eval_accuracy']:.4f}", f"{int(metrics.get('epochs_trained', 0))} epochs"]
    if step == "evaluate":
        lines = [f"accuracy {metrics['eval_accuracy']:.4f}"] if "eval_accuracy" in metrics else []
        if "tunepipe.blessed" in tags:
            lines.append("blessed" if tags["tunepipe.blessed"] == "true" else "not blessed")
        return lines
    if step == "push":
        if tags.get("tunepipe.push.pushed") == "true":
            return [f"pushed version {tags.get('tunepipe.push.version')}: {tags.get('tunepipe.push.reason', '')}"]
        return [f"not pushed: {tags.get('tunepipe.push.reason', '')}"]
    if step == "resolve-source" and (spans := _spans(tags)):
        return [f"spans {', '.join(spans)}"]
    return []


def _format_time(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


# --- rendering: the terminal ----------------------------------------------------------------------

def runs_table(rows: list[RunRow], title: str | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    show_experiment = len({row.experiment for row in rows}) > 1
    columns = ["started", "run", *(["experiment"] if show_experiment else []), "status", "spans", "best trial",
               "accuracy", "blessed", "pushed", "cached steps"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        best = "-" if row.best_score is None else f"{row.best_score:.4f}"
        if row.best_score is not None and row.objective:
            best += f" {row.objective}"
        if row.trials == 0:
            best = "tuning off"
        elif row.tuning == lineage_schema.REUSED:
            best += " (reused)"
        pushed = f"v{row.pushed_version}" if row.pushed_version else "no"
        if row.push_reason:
            pushed += f": {row.push_reason}" if row.pushed_version is None else f" ({row.push_reason})"
        spans = "-" if row.spans is None else ", ".join(row.spans) or "none"
        cached = ", ".join(row.cached_steps) or "-"
        cells = [_format_time(row.started), f"{row.name}\n{row.run_id}", *([row.experiment] if show_experiment else []),
                 row.status.lower(), spans, best, "-" if row.accuracy is None else f"{row.accuracy:.4f}",
                 {True: "yes", False: "no", None: "-"}[row.blessed], pushed, cached]
        table.add_row(*cells)
    return table


def trials_table(search: TrialSearch, title: str | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    names = sorted({name for row in search.rows for name in row.hyperparameters})
    for column in ["#", "trial", "status", search.objective or "score", "epochs", "time", *names]:
        table.add_column(column, overflow="fold")
    for rank, row in enumerate(search.rows, start=1):
        status = row.status if not row.error else f"{row.status}: {row.error}"
        table.add_row(str(rank), row.trial_id, status, "-" if row.score is None else f"{row.score:.4f}",
                      "-" if row.epochs is None else str(row.epochs),
                      "-" if row.duration_s is None else f"{row.duration_s:.1f} s",
                      *[_short(row.hyperparameters[name], 14) if name in row.hyperparameters else "" for name in names])
    return table


_KIND_MARK = {"source": "▣ data", "step": "▶ step", "artifact": "◆ artifact", "trial": "★ trial", "model": "⬢ model"}


def lineage_tree(graph: LineageGraph):
    """The graph for the terminal: every node, source first, with its facts and where it came from."""
    from rich.markup import escape
    from rich.tree import Tree

    tree = Tree(f"[bold]lineage of {escape(graph.target)}[/bold] ({escape(graph.tracking_uri)})")
    for node in graph.ordered():
        mark = " [cyan](reused from cache)[/cyan]" if node.cached else ""
        target = " [bold green]← target[/bold green]" if node.target else ""
        branch = tree.add(f"{_KIND_MARK[node.kind]} [bold]{escape(node.label)}[/bold]{mark}{target}")
        sources = [f"{graph.nodes[edge.source].label} ({edge.label})" if edge.label else graph.nodes[edge.source].label
                   for edge in graph.upstream(node.id)]
        if sources:
            branch.add("from: " + escape(", ".join(sources)))
        for key, value in node.facts.items():
            branch.add(f"[dim]{escape(key)}:[/dim] {escape(_short(value, 160))}")
    return tree


# --- rendering: other tools -----------------------------------------------------------------------

_DOT_SHAPES = {"source": "cylinder", "step": "box", "artifact": "note", "trial": "ellipse", "model": "doubleoctagon"}


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(graph: LineageGraph) -> str:
    lines = ['digraph "lineage" {', f'  label="{_dot_text("lineage of " + graph.target)}";', "  labelloc=t;",
             "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for node in graph.ordered():
        label = "\\n".join(_dot_text(line) for line in [f"{node.kind}: {node.label}", *node.summary])
        style = ["filled"]
        color = "lightblue" if node.target else "lightgrey" if node.cached else "white"
        if node.cached:
            style.append("dashed")
        lines.append(f'  "{_dot_text(node.id)}" [label="{label}", shape={_DOT_SHAPES[node.kind]}, '
                     f'style="{",".join(style)}", fillcolor="{color}"];')
    for edge in graph.edges:
        label = f' [label="{_dot_text(edge.label)}"]' if edge.label else ""
        lines.append(f'  "{_dot_text(edge.source)}" -> "{_dot_text(edge.target)}"{label};')
    lines.append("}")
    return "\n".join(lines) + "\n"


_MERMAID_SHAPES = {"source": ('[("', '")]'), "step": ('["', '"]'), "artifact": ('[/"', '"/]'),
                   "trial": ('(["', '"])'), "model": ('{{"', '"}}')}


def _mermaid_text(text: str) -> str:
    # Mermaid labels take HTML entities; quotes and angle brackets would end or open markup.
    return (text.replace("&", "&amp;").replace('"', "#quot;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("[", "&#91;").replace("]", "&#93;"))


def to_mermaid(graph: LineageGraph) -> str:
    ids = {node.id: f"n{index}" for index, node in enumerate(graph.ordered())}
    lines = ["flowchart LR"]
    for node in graph.ordered():
        opening, closing = _MERMAID_SHAPES[node.kind]
        label = "<br/>".join(_mermaid_text(line) for line in [f"{node.kind}: {node.label}", *node.summary])
        lines.append(f"  {ids[node.id]}{opening}{label}{closing}")
    for edge in graph.edges:
        arrow = f"-->|{_mermaid_text(edge.label)}|" if edge.label else "-->"
        lines.append(f"  {ids[edge.source]} {arrow} {ids[edge.target]}")
    lines += ["  classDef cached stroke-dasharray: 5 5,fill:#eee;", "  classDef target fill:#d6ecff,stroke:#1f6feb;"]
    cached = [ids[node.id] for node in graph.ordered() if node.cached]
    targets = [ids[node.id] for node in graph.ordered() if node.target]
    if cached:
        lines.append(f"  class {','.join(cached)} cached;")
    if targets:
        lines.append(f"  class {','.join(targets)} target;")
    return "\n".join(lines) + "\n"


MERMAID_SCRIPT = "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.esm.min.mjs"


def to_html(graph: LineageGraph) -> str:
    """One self-contained page: the graph (drawn by mermaid.js when the page can load it; its source
    text otherwise) and a table of every node, readable with no network at all."""
    escape = html_lib.escape
    rows = []
    for node in graph.ordered():
        facts = "".join(f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in node.facts.items())
        sources = ", ".join(escape(graph.nodes[edge.source].label + (f" ({edge.label})" if edge.label else ""))
                            for edge in graph.upstream(node.id)) or "-"
        classes = " ".join(name for name, on in (("cached", node.cached), ("target", node.target)) if on)
        rows.append(f'<tr class="{classes}" id="{escape(node.id)}"><td>{escape(node.kind)}</td>'
                    f"<td><b>{escape(node.label)}</b>{' <i>(reused from cache)</i>' if node.cached else ''}"
                    f"{' <i>(target)</i>' if node.target else ''}</td><td>{sources}</td>"
                    f'<td><table class="facts">{facts}</table></td></tr>')
    title = f"tunepipe lineage of {graph.target}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table.nodes {{ border-collapse: collapse; width: 100%; }}
table.nodes > tbody > tr > td, table.nodes > thead > tr > th {{ border: 1px solid #ccc; padding: 4px 8px;
  vertical-align: top; text-align: left; }}
table.facts th {{ font-weight: normal; color: #666; text-align: left; padding-right: 1em; white-space: nowrap; }}
table.facts td {{ font-family: ui-monospace, monospace; font-size: 90%; word-break: break-all; }}
tr.cached {{ background: #f4f4f4; }}
tr.target {{ background: #e8f3ff; }}
pre.mermaid {{ background: #fafafa; border: 1px solid #eee; padding: 1em; overflow: auto; }}
</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p>Tracking store: <code>{escape(graph.tracking_uri)}</code>{
    f" &middot; pipeline run <code>{escape(graph.pipeline_run_id)}</code>" if graph.pipeline_run_id else ""}</p>
<h2>Graph</h2>
<pre class="mermaid">
{escape(to_mermaid(graph))}</pre>
<h2>Nodes</h2>
<table class="nodes">
<thead><tr><th>kind</th><th>node</th><th>from</th><th>facts</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<script type="module">
import mermaid from "{MERMAID_SCRIPT}";
mermaid.initialize({{ startOnLoad: true, securityLevel: "strict" }});
</script>
</body>
</html>
"""


def to_json(graph: LineageGraph) -> str:
    return json.dumps(graph.to_json(), indent=2) + "\n"


RENDERERS = {"dot": to_dot, "mermaid": to_mermaid, "html": to_html, "json": to_json}
