"""`tunepipe lineage`: from the source data through every step, artifact and the best trial to a
pushed model version, as a graph of nodes and edges.

Tracing goes upstream from the target. A step that kfp's cache answered is only a record of reused
outputs; the run that produced them is found by their content digest, so the graph shows the runs
that did the work and marks them as reused. What a target names (a model version, a path) is looked
up in `pipeline.queries.lineage_targets`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components import artifacts
from components.errors import TunepipeError
from pipeline import steps, tags
from pipeline.queries import lineage_targets as targets
from pipeline.queries.records import (_digest, _direction, _fingerprint, _format_time, _short, _spans, inputs_of,
                                      outputs_of)
from pipeline.queries.store import Store, _time, open_store
from pipeline.queries.trials import _RUN_ID, _best_first, _trial_row, find_run

# Step inputs that are a served model version rather than an artifact a step produced.
SERVED_INPUTS = (steps.BASELINE, "warm_start")


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
            return (steps.position(node.facts.get("step", "")), position[node_id])

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


def _artifact_id(name: str, uri: str, digest: str) -> str:
    return f"artifact:{name}:{digest or uri}"


def lineage(target: str, *, tracking_uri: str | None = None, store: Store | None = None) -> LineageGraph:
    """The lineage of `target`: a model version (`penguins:3`, `penguins@production`, `models:/penguins/3`,
    or its serving path), a pipeline, step or trial run id (or a pipeline run name), or an artifact
    path or URI."""
    store = store or open_store(tracking_uri)
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

    # what the target is ---------------------------------------------------------------------

    def trace(self) -> LineageGraph:
        target = self.target.strip()
        if match := targets.MODEL_ALIAS.match(target):
            self._model_version(self.store.model_version(match["name"], alias=match["alias"]))
        elif (match := targets.MODEL_VERSION.match(target)) and not Path(target).exists():
            self._model_version(self.store.model_version(match["name"], version=match["version"]))
        elif _RUN_ID.match(target):
            self._run(self.store.run(target))
        elif "/" not in target and "://" not in target and not Path(target).exists():
            self._run(find_run(self.store, target))
        else:
            self._path(target)
        return self.graph

    def _run(self, run: Any) -> None:
        recorded = run.data.tags
        if recorded.get(tags.KIND) == tags.PIPELINE:
            self._set_pipeline(run)
            step_runs = self._steps(run)
            if not step_runs:
                raise TunepipeError(f"pipeline run {run.info.run_id} has no step runs")
            for name in sorted(step_runs, key=steps.position):
                self._step(step_runs[name])
            self.graph.target = f"pipeline run {run.info.run_name or run.info.run_id}"
        elif tags.STEP in recorded:
            self._set_pipeline(self.store.parent(run))
            node = self._step(run)
            node.target = True
        elif tags.TRIAL_ID in recorded:
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
        candidates = targets.path_candidates(target)
        version = targets.version_at(self.store, candidates[0])
        if version is not None:
            self._model_version(version)
            return
        for forms in candidates:
            for candidate in forms:
                producer = targets.artifact_producer(self.store, candidate)
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

    # the model version -------------------------------------------------------------------------

    def _model_version(self, version: Any) -> None:
        push = targets.push_of(self.store, version)
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
                          if candidate.facts.get("digest") == version.tags.get(tags.VERSION_DIGEST)), None)
            if model is not None:
                self.graph.connect(model.id, node.id, "pushed")

    def _version_node(self, version: Any) -> Node:
        aliases = self.store.aliases(version)
        facts = {"model": version.name, "version": str(version.version), "source": version.source or "",
                 "served from": version.tags.get(tags.VERSION_PATH, "-"),
                 "aliases": ", ".join(f"@{alias}" for alias in aliases) or "-",
                 "serving version": version.tags.get(tags.VERSION_SERVING, "-"),
                 "forced": version.tags.get(tags.VERSION_FORCED, "-"),
                 "digest": version.tags.get(tags.VERSION_DIGEST, "-"),
                 "training run": version.run_id or "-", "registered": _format_time(_time(version.creation_timestamp))}
        summary = [f"source {version.source}"]
        if aliases:
            summary.insert(0, " ".join(f"@{alias}" for alias in aliases))
        if version.tags.get(tags.VERSION_FORCED) == tags.flag(True):
            summary.append("forced")
        label = f"{version.name} v{version.version}"
        return self.graph.add(Node(f"model:{version.name}:{version.version}", "model", label, facts, summary))

    # steps ----------------------------------------------------------------------------------

    def _set_pipeline(self, pipeline: Any | None) -> None:
        if self.pipeline is None and pipeline is not None:
            self.pipeline = pipeline
            self.graph.pipeline_run_id = pipeline.info.run_id

    def _steps(self, pipeline: Any | None) -> dict[str, Any]:
        return self.store.steps(pipeline) if pipeline is not None else {}

    def _prefer(self, run: Any) -> tuple[str | None, ...]:
        return (run.data.tags.get(tags.PARENT_RUN), self.graph.pipeline_run_id)

    def _step(self, record: Any) -> Node:
        """The node of the run that did `record`'s work, with everything upstream of it."""
        if record.data.tags.get(tags.STEP) == "resolve-source":
            return self._source_node(record, None)  # the source data is what resolve-source resolved
        cached = record.data.tags.get(tags.CACHED) == tags.flag(True)
        producer = self.store.effective(record, self._prefer(record)) if cached else record
        run = producer or record
        node = self.graph.nodes.get(f"step:{run.info.run_id}") or self.graph.add(self._step_node(run))
        if not cached:
            # Reached upstream by digest: did the traced pipeline run take this result from the cache?
            reuse = self._steps(self.pipeline).get(run.data.tags.get(tags.STEP, ""))
            if (reuse is not None and reuse.data.tags.get(tags.CACHED) == tags.flag(True)
                    and {d for _, d in outputs_of(reuse).values() if d} & {d for _, d in outputs_of(run).values()}):
                record, cached = reuse, True
        if cached and not node.cached:
            node.cached = True
            reused = (f"pipeline run {record.data.tags.get(tags.PARENT_RUN, '?')} reused this result from kfp's "
                      f"cache (its record: run {record.info.run_id})")
            node.facts["cached"] = (f"yes: {reused}" if producer is not None else
                                    f"yes, but no run in this store produced it: {reused}")
            node.summary.append("reused from cache")
        if run.info.run_id in self._expanded:
            return node
        self._expanded.add(run.info.run_id)
        step = run.data.tags.get(tags.STEP, "")
        for name, (uri, digest) in outputs_of(run).items():
            artifact = self._artifact_node(name, uri, digest, run)
            self.graph.connect(node.id, artifact.id, "produced")
        for name, (uri, digest) in inputs_of(run).items():
            # An item of a collected list (the merge's `worker_tunings.0`) is its producer's output.
            artifact = self._artifact_node(steps.produced_as(name), uri, digest, None)
            self.graph.connect(artifact.id, node.id, name)
            if digest and name in SERVED_INPUTS:
                # A model in production (evaluate's baseline, train's warm start): the registered
                # version it is, not the whole lineage behind it.
                for version in self.store.versions_with_digest(digest):
                    self.graph.connect(self._version_node(version).id, artifact.id, "served")
            elif digest:
                upstream = self.store.input_producer(run, name, digest, prefer=(self.graph.pipeline_run_id,))
                if upstream is not None:
                    upstream_node = self._step(upstream)
                    self.graph.connect(upstream_node.id, artifact.id, "produced")
        if step == "ingest":
            self._source(run, node)
        elif step == "tune":
            self._best_trial(run, node)
        elif step == "push":
            self._blessing(run, node)
            version = targets.registered_by(self.store, run)
            if version is not None:
                self.graph.connect(node.id, self._version_node(version).id, "registered")
        elif step == "evaluate":
            self._baseline_resolution(run, node)
        return node

    def _step_node(self, run: Any) -> Node:
        step = run.data.tags.get(tags.STEP, "?")
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
        # The step, whether it was cached and its artifacts are shown as their own facts and nodes.
        shown = (tags.INPUT + ".", tags.OUTPUT + ".")
        for key, value in sorted(run.data.tags.items()):
            if key.startswith(tags.PREFIX) and not key.startswith(shown) and key not in (tags.STEP, tags.CACHED):
                facts[key.removeprefix(tags.PREFIX)] = value
        summary = [f"run {run.info.run_id[:8]}"]
        if pipeline is not None and pipeline.info.run_id != self.graph.pipeline_run_id:
            summary.append(f"in {pipeline.info.run_name or pipeline.info.run_id[:8]}")
        if step in steps.BY_NAME and (line := steps.BY_NAME[step].summary(steps.Facts.of_run(run))):
            summary.append(line)
        return Node(f"step:{run.info.run_id}", "step", step, facts, summary, run_id=run.info.run_id)

    def _artifact_node(self, name: str, uri: str, digest: str, producer: Any | None) -> Node:
        node_id = _artifact_id(name, uri, digest)
        facts = {"name": name, "uri": uri or "-", "digest": digest or "-"}
        node = self.graph.add(Node(node_id, "artifact", name, facts, [_digest(digest)] if digest else []))
        if producer is not None:
            node.facts["produced by"] = f"{producer.data.tags.get(tags.STEP, '?')} run {producer.info.run_id}"
            if name == artifacts.EXAMPLES:
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
        took_it_from_cache = (reused is not None and reused.data.tags.get(tags.CACHED) == tags.flag(True)
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
                     "files": resolve.data.tags.get(tags.FILES, "-") if resolve is not None else "-",
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
        runs = [run for run in self.store.children(tune) if tags.TRIAL_ID in run.data.tags]
        rows = _best_first([_trial_row(run) for run in runs], _direction(tune, next(
            (run.data.tags.get(tags.OBJECTIVE) for run in runs if run.data.tags.get(tags.OBJECTIVE)), None)))
        if not rows or rows[0].score is None:
            return
        best = next(run for run in runs if run.info.run_id == rows[0].run_id)
        trial = self._trial_node(best, best=True, of=len(rows))
        self.graph.connect(tune_node.id, trial.id, f"best of {len(rows)} trials")
        tuning = next((self.graph.nodes[edge.target] for edge in self.graph.edges
                       if edge.source == tune_node.id and self.graph.nodes[edge.target].label == artifacts.TUNING),
                      None)
        if tuning is not None:
            self.graph.connect(trial.id, tuning.id, "best hyperparameters")

    def _trial_node(self, run: Any, best: bool, of: int | None = None) -> Node:
        row = _trial_row(run)
        objective = run.data.tags.get(tags.OBJECTIVE, "score")
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
                           if edge.source == evaluate_node.id
                           and self.graph.nodes[edge.target].label == artifacts.EVALUATION), None)
        if evaluation is not None:
            self.graph.connect(evaluation.id, push_node.id, "blessing")
        else:
            self.graph.connect(evaluate_node.id, push_node.id, "blessing")

    def _baseline_resolution(self, evaluate: Any, evaluate_node: Node) -> None:
        """The baseline evaluate compared against, and the resolve-baseline run that chose it."""
        baseline = next((self.graph.nodes[edge.source] for edge in self.graph.upstream(evaluate_node.id)
                         if self.graph.nodes[edge.source].label == steps.BASELINE), None)
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
