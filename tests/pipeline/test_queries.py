"""`tunepipe runs / trials / lineage` against a tracking store written the way a pipeline run writes it.

The store is built with `pipeline.tracking`'s own functions (the pipeline run, the step runs, the
records of cached steps) and, for the rest, MlflowClient calls with the same tags, params and
metrics as `pipeline.trial_tracking.MlflowTrials` (trial runs) and `pipeline.registry.register`
(model versions and the `production` alias). Every tag, trial param and registry tag written here
is named through `pipeline.tags`, as the queries read them. Three pipeline runs:

1. everything ran; the model was not blessed, so nothing was pushed;
2. the same data, with --force-push: ingest, preprocess, tune and train came from kfp's cache
   (records of run 1's outputs), evaluate and push ran: model version 1 (forced);
3. a new span: everything ran, blessed, pushed: model version 2, now in production.
"""
from __future__ import annotations

import hashlib
import socket
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import click
import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from pipeline import cli_lineage, queries, tags, tracking
from pipeline.cli import _Group
from components.errors import TunepipeError

SOURCE = "/data/penguins/*.csv"
EXPERIMENT = "penguins"


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class PipelineRecord:
    """The ids a test needs of one recorded pipeline run."""

    run_id: str = ""
    steps: dict[str, str] = field(default_factory=dict)  # step name -> its run id in this pipeline run
    trials: dict[str, str] = field(default_factory=dict)  # trial id -> trial run id
    uris: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)


@dataclass
class Store:
    uri: str
    root: Path
    serving: Path
    runs: list[PipelineRecord]


def record_trial(tune_run_id: str, search_id: str, trial_id: str, hyperparameters: dict, score: float | None,
                 epochs: int, duration_s: float, status: str = "completed", continued_from: str | None = None) -> str:
    """A tuner trial as pipeline.trial_tracking.MlflowTrials records it."""
    client = MlflowClient()
    experiment_id = client.get_run(tune_run_id).info.experiment_id
    run = client.create_run(experiment_id, run_name=f"trial-{trial_id}", tags={
        tags.PARENT_RUN: tune_run_id, tags.SEARCH_ID: search_id, tags.TRIAL_ID: trial_id,
        tags.OBJECTIVE: "val_accuracy"})
    # Hyperband's bookkeeping, under the names the queries tell apart from the hyperparameters.
    values = (trial_id, 1, 1 if continued_from else 0, 3 if continued_from else 0, 8 if continued_from else 3,
              continued_from)
    facts = {name: value for name, value in zip(tags.TRIAL_FACTS, values, strict=True) if value is not None}
    client.log_batch(run.info.run_id, params=[Param(name, str(value))
                                              for name, value in {**facts, **hyperparameters}.items()])
    metrics = {"duration_s": duration_s, "epochs": epochs, "score": score, "best_epoch": epochs}
    client.log_batch(run.info.run_id, metrics=[Metric(name, float(value), 0, 0) for name, value in metrics.items()
                                               if value is not None])
    client.set_tag(run.info.run_id, tags.TRIAL_STATUS, status)
    if status != "completed":
        client.set_tag(run.info.run_id, tags.ERROR, "ValueError: the model could not be built")
    client.set_terminated(run.info.run_id, "FINISHED" if status == "completed" else "FAILED")
    return run.info.run_id


def register(serving: Path, version: int, train_run_id: str, model_digest: str, forced: bool) -> str:
    """A pushed model version as pipeline.registry.register registers it."""
    client = MlflowClient()
    try:
        client.get_registered_model("penguins")
    except mlflow.exceptions.MlflowException:
        client.create_registered_model("penguins", description="Pushed by tunepipe")
    registered = client.create_model_version(
        "penguins", source=str(serving / "penguins" / str(version)), run_id=train_run_id,
        tags={tags.VERSION_SERVING: str(version), tags.VERSION_FORCED: tags.flag(forced),
              tags.VERSION_DIGEST: model_digest})
    client.set_registered_model_alias("penguins", tags.PRODUCTION_ALIAS, registered.version)
    return str(registered.version)


TRIALS_RUN_1 = [  # trial id, hyperparameters, score, epochs, duration, status, continued from
    ("0000", {"num_layers": 1, "units_0": 8, "learning_rate": 0.001, "optimizer": "adam"}, 0.81, 3, 2.5, "completed",
     None),
    ("0001", {"num_layers": 2, "units_0": 32, "learning_rate": 0.01, "optimizer": "sgd"}, 0.93, 3, 3.1, "completed",
     None),
    ("0002", {"num_layers": 2, "units_0": 32, "learning_rate": 0.01, "optimizer": "sgd"}, 0.97, 5, 4.0, "completed",
     "0001"),
    ("0003", {"num_layers": 3, "units_0": 512, "learning_rate": 0.5, "optimizer": "sgd"}, None, 0, 0.2, "invalid",
     None),
]


def record_full_run(root: Path, serving: Path, name: str, fingerprint: str, spans: str, trials: list, blessed: bool,
                    push_version: int | None, accuracy: float) -> PipelineRecord:
    """A pipeline run in which every step ran."""
    record = PipelineRecord()
    pipelines = root / "pipelines" / name
    for artifact, step in (("examples", "ingest"), ("transform", "preprocess"), ("tuning", "tune"),
                           ("model", "train"), ("evaluation", "evaluate")):
        record.uris[artifact] = str(pipelines / step / artifact)
        record.digests[artifact] = digest(f"{name}/{artifact}")
    uris, digests = record.uris, record.digests

    def pair(artifact):
        return uris[artifact], digests[artifact]

    params = {"source": SOURCE, "label": "species", "code_version": f"0.1.0+{name}", "cache": True,
              "force_push": False}
    with tracking.pipeline_run(EXPERIMENT, str(root), None, params, run_name=name) as parent:
        record.run_id = parent.info.run_id
        with tracking.step_run("resolve-source", {"source": SOURCE, "fingerprint": fingerprint}) as step:
            step.tags({tags.SPANS: spans, tags.FILES: str(len(spans.split(",")))})
            record.steps["resolve-source"] = step.run_id
        with tracking.step_run("ingest", {"source": SOURCE, "label": "species", "data": {"split": {"train": 0.8}},
                                          "beam": {"runner": "DirectRunner"}}, inputs={}) as step:
            step.output("examples", *pair("examples"))
            step.metrics({"rows_read": 344, "rejected": 0, "missing_label": 0, "rows_train": 281, "rows_eval": 63})
            record.steps["ingest"] = step.run_id
        with tracking.step_run("preprocess", {"preprocess": {"vocabulary_top_k": 100}},
                               inputs={"examples": pair("examples")}) as step:
            step.output("transform", *pair("transform"))
            step.metrics({"features": 6, "classes": 3, "train_rows": 281})
            record.steps["preprocess"] = step.run_id
        with tracking.step_run("tune", {"tuner": {"algorithm": "hyperband", "objective": "val_accuracy"},
                                        "work_dir": str(root / "work")},
                               inputs={"examples": pair("examples"), "transform": pair("transform")}) as step:
            record.steps["tune"] = step.run_id
            for trial_id, hyperparameters, score, epochs, duration, status, continued in trials:
                record.trials[trial_id] = record_trial(step.run_id, f"search-{name}", trial_id, hyperparameters,
                                                       score, epochs, duration, status, continued)
            step.output("tuning", *pair("tuning"))
            best = max(trial[2] for trial in trials if trial[2] is not None)
            step.metrics({"trials": len(trials), "best_score": best})
        with tracking.step_run("train", {"training": {"epochs": 100}, "warm_start": ""},
                               inputs={name: pair(name) for name in ("examples", "transform", "tuning")}) as step:
            step.output("model", *pair("model"))
            step.metrics({"eval_accuracy": accuracy, "eval_loss": 0.2, "epochs_trained": 40, "best_epoch": 30})
            record.steps["train"] = step.run_id
        with tracking.step_run("resolve-baseline", {"serving_dir": str(serving), "model_name": "penguins"}) as step:
            record.steps["resolve-baseline"] = step.run_id
        with tracking.step_run("evaluate", {"evaluation": {}, "beam": {}},
                               inputs={"examples": pair("examples"), "model": pair("model")}) as step:
            step.output("evaluation", *pair("evaluation"))
            step.metrics({"eval_accuracy": accuracy, "eval_loss": 0.2, "eval_example_count": 63})
            step.tags({tags.BLESSED: tags.flag(blessed)})
            record.steps["evaluate"] = step.run_id
        if push_version is not None:
            with tracking.step_run("push", {"serving_dir": str(serving), "model_name": "penguins", "force_push": False},
                                   inputs={"model": pair("model")}) as step:
                step.tags({tags.PUSHED: tags.flag(True), tags.PUSH_REASON: "blessed",
                           tags.PUSH_VERSION: str(push_version), tags.PUSH_FORCED: tags.flag(False)})
                record.steps["push"] = step.run_id
    if push_version is not None:
        register(serving, push_version, record.steps["train"], digests["model"], forced=False)
    return record


def record_cached_run(root: Path, serving: Path, name: str, fingerprint: str, spans: str,
                      reused: PipelineRecord) -> PipelineRecord:
    """Run 2: the same data again with --force-push; kfp's cache answered ingest, preprocess, tune, train."""
    record = PipelineRecord()
    record.uris = dict(reused.uris)
    record.digests = dict(reused.digests)
    record.uris["evaluation"] = str(root / "pipelines" / name / "evaluate" / "evaluation")
    record.digests["evaluation"] = digest(f"{name}/evaluation")
    uris, digests = record.uris, record.digests
    params = {"source": SOURCE, "label": "species", "code_version": f"0.1.0+{name}", "cache": True,
              "force_push": True}
    with tracking.pipeline_run(EXPERIMENT, str(root), None, params, run_name=name) as parent:
        record.run_id = parent.info.run_id
        with tracking.step_run("resolve-source", {"source": SOURCE, "fingerprint": fingerprint}) as step:
            step.tags({tags.SPANS: spans})
            record.steps["resolve-source"] = step.run_id
        facts = {"ingest": {"rows_read": 344, "rejected": 0, "rows_train": 281, "rows_eval": 63},
                 "preprocess": {"features": 6, "classes": 3},
                 "tune": {"trials": 4, "best_score": 0.97, "objective": "val_accuracy"},
                 "train": {"eval_accuracy": 0.9, "epochs_trained": 40, "warm_started": False}}
        for step_name, artifact in (("ingest", "examples"), ("preprocess", "transform"), ("tune", "tuning"),
                                    ("train", "model")):
            tracking.record_cached_step(step_name, {artifact: (uris[artifact], digests[artifact])},
                                        {**facts[step_name], "digest": digests[artifact]})
        with tracking.step_run("resolve-baseline", {"serving_dir": str(serving), "model_name": "penguins"}) as step:
            record.steps["resolve-baseline"] = step.run_id
        with tracking.step_run("evaluate", {"evaluation": {}, "beam": {}},
                               inputs={"examples": (uris["examples"], digests["examples"]),
                                       "model": (uris["model"], digests["model"])}) as step:
            step.output("evaluation", uris["evaluation"], digests["evaluation"])
            step.metrics({"eval_accuracy": 0.9, "eval_loss": 0.25})
            step.tags({tags.BLESSED: tags.flag(False)})
            record.steps["evaluate"] = step.run_id
        with tracking.step_run("push", {"serving_dir": str(serving), "model_name": "penguins", "force_push": True},
                               inputs={"model": (uris["model"], digests["model"])}) as step:
            step.tags({tags.PUSHED: tags.flag(True),
                       tags.PUSH_REASON: "forced by --force-push although not blessed",
                       tags.PUSH_VERSION: "1", tags.PUSH_FORCED: tags.flag(True)})
            record.steps["push"] = step.run_id
    client = MlflowClient()
    for run in client.search_runs([parent.info.experiment_id], f"tags.`{tags.PARENT_RUN}` = '{record.run_id}'"):
        record.steps.setdefault(run.data.tags[tags.STEP], run.info.run_id)
    # The model metadata kfp's cache returned names run 1's training run.
    register(serving, 1, reused.steps["train"], digests["model"], forced=True)
    return record


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """The three pipeline runs, written once for the module (creating an MLflow schema takes seconds)."""
    root = tmp_path_factory.mktemp("tunepipe-out")
    serving = root / "serving"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        try:
            first = record_full_run(root, serving, "penguins-run-1", digest("files-v1"), "span-1,span-2",
                                    TRIALS_RUN_1, blessed=False, push_version=None, accuracy=0.9)
            second = record_cached_run(root, serving, "penguins-run-2", digest("files-v1"), "span-1,span-2", first)
            third = record_full_run(root, serving, "penguins-run-3", digest("files-v2"), "span-1,span-2,span-3",
                                    TRIALS_RUN_1[:2], blessed=True, push_version=2, accuracy=0.95)
        finally:
            mlflow.set_tracking_uri(None)  # forget it again (it also set the env var, which the patch restores)
    return Store(uri, root, serving, [first, second, third])


@pytest.fixture(autouse=True)
def tracking_store(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)


class ClientSpy:
    """The MLflow client as a query uses it, noting every call it makes; the real client answers."""

    def __init__(self, client: MlflowClient):
        self._client = client
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        method = getattr(self._client, name)

        def noted(*args, **kwargs):
            asked = {key: value for key, value in kwargs.items() if key != "page_token"}
            self.calls.append(f"{name}{args}{sorted(asked.items())}")
            return method(*args, **kwargs)

        return noted


def spied_store(uri: str) -> tuple[queries.Store, ClientSpy]:
    opened = queries.Store(uri)
    opened.client = spy = ClientSpy(opened.client)
    return opened, spy


def step_nodes(graph: queries.LineageGraph) -> dict[str, queries.Node]:
    return {node.facts["step"]: node for node in graph.of_kind("step")}


def edge_labels(graph: queries.LineageGraph) -> set[tuple[str, str, str]]:
    return {(graph.nodes[edge.source].label, graph.nodes[edge.target].label, edge.label) for edge in graph.edges}


# -- lineage ---------------------------------------------------------------------------------------

def test_lineage_of_the_version_pushed_by_a_cached_run_follows_digests_to_the_runs_that_did_the_work(store):
    first, second, third = store.runs

    graph = queries.lineage("penguins:1")

    model = graph.nodes["model:penguins:1"]
    assert model.target and model.facts["forced"] == "true"
    assert model.facts["source"] == str(store.serving / "penguins" / "1")
    assert graph.pipeline_run_id == second.run_id
    steps = step_nodes(graph)
    # What ran in run 2 is run 2's; what the cache answered is run 1's, found by digest.
    assert steps["push"].run_id == second.steps["push"] and not steps["push"].cached
    assert steps["evaluate"].run_id == second.steps["evaluate"] and not steps["evaluate"].cached
    for reused in ("ingest", "preprocess", "tune", "train"):
        assert steps[reused].run_id == first.steps[reused], reused
        assert steps[reused].cached, reused
        assert first.run_id in steps[reused].facts["pipeline run"]
        assert second.steps[reused] in steps[reused].facts["cached"]
    assert steps["tune"].facts["code_version"] == "0.1.0+penguins-run-1"
    # The source is what run 2's resolve-source saw.
    (source,) = graph.of_kind("source")
    assert source.label == SOURCE
    assert source.run_id == second.steps["resolve-source"]
    assert source.facts["spans"] == "span-1, span-2"
    assert source.facts["fingerprint"] == digest("files-v1")
    assert source.facts["rows_read"] == "344"
    # The best trial of run 1's search, and what it fed.
    (trial,) = graph.of_kind("trial")
    assert trial.run_id == first.trials["0002"]
    assert trial.facts["score"] == "0.9700" and trial.facts["hp units_0"] == "32"
    assert {
        (SOURCE, "ingest", "read"), ("ingest", "examples", "produced"), ("examples", "tune", "examples"),
        ("tune", "best trial 0002", "best of 4 trials"), ("best trial 0002", "tuning", "best hyperparameters"),
        ("tuning", "train", "tuning"), ("train", "model", "produced"), ("model", "push", "model"),
        ("evaluation", "push", "blessing"), ("push", "penguins v1", "registered"),
    } <= edge_labels(graph)
    examples = next(node for node in graph.of_kind("artifact") if node.label == "examples")
    assert examples.facts["digest"] == first.digests["examples"] and examples.facts["rows_train"] == "281"
    # Nothing of run 3 (newer data, version 2) leaks in.
    all_runs = {node.run_id for node in graph.nodes.values()}
    assert not all_runs & (set(third.steps.values()) | set(third.trials.values()))
    # Source first, the model version last.
    ordered = [node.id for node in graph.ordered()]
    assert ordered[0] == source.id and ordered[-1] == model.id


def test_lineage_of_production_and_of_the_serving_path(store):
    _, second, third = store.runs

    production = queries.lineage("penguins@production")
    assert production.nodes["model:penguins:2"].target
    assert "@production" in production.nodes["model:penguins:2"].facts["aliases"]
    steps = step_nodes(production)
    assert {node.run_id for node in steps.values()} <= set(third.steps.values())
    assert not any(node.cached for node in production.nodes.values())
    (source,) = production.of_kind("source")
    assert source.facts["spans"] == "span-1, span-2, span-3"
    assert production.of_kind("trial")[0].run_id == third.trials["0001"]

    by_path = queries.lineage(str(store.serving / "penguins" / "1"))
    assert by_path.nodes["model:penguins:1"].target
    assert step_nodes(by_path)["push"].run_id == second.steps["push"]
    assert queries.lineage("models:/penguins/1").nodes.keys() == by_path.nodes.keys()


def test_lineage_of_an_artifact_and_of_runs(store):
    first, second, _ = store.runs

    tuning = queries.lineage(first.uris["tuning"])
    target = next(node for node in tuning.nodes.values() if node.target)
    assert target.kind == "artifact" and target.label == "tuning"
    assert set(step_nodes(tuning)) == {"ingest", "preprocess", "tune"}
    assert tuning.of_kind("trial")[0].run_id == first.trials["0002"]
    inside = queries.lineage(first.uris["tuning"] + "/best_hyperparameters.json")
    assert [node.id for node in inside.nodes.values() if node.target] == [target.id]

    cached_train = queries.lineage(second.steps["train"])
    train = step_nodes(cached_train)["train"]
    assert train.target and train.cached and train.run_id == first.steps["train"]
    assert "push" not in step_nodes(cached_train)

    whole = queries.lineage(second.run_id)
    assert set(step_nodes(whole)) == {"ingest", "preprocess", "tune", "train", "resolve-baseline", "evaluate", "push"}
    assert "model:penguins:1" in whole.nodes
    assert queries.lineage("penguins-run-2").nodes.keys() == whole.nodes.keys()


def test_lineage_asks_the_store_each_question_once(store):
    """Every step after ingest takes the same examples: their producer is looked up once, not per step."""
    opened, spy = spied_store(store.uri)

    graph = queries.lineage("penguins:1", store=opened)

    assert graph.nodes.keys() == queries.lineage("penguins:1").nodes.keys()
    assert len(spy.calls) == len(set(spy.calls)), sorted(spy.calls)


@pytest.mark.parametrize("target, message", [
    ("penguins:9", "registered model 'penguins' has no version 9 (versions: 1, 2)"),
    ("penguins@staging", "registered model 'penguins' has no alias 'staging' (aliases: @production)"),
    ("ravens:1", "no registered model 'ravens'"),
    ("0" * 32, f"no MLflow run {'0' * 32} in sqlite:///"),
    ("/nowhere/model", "/nowhere/model is not a model version, a run or an artifact that"),
])
def test_unknown_targets_are_one_line_errors(target, message):
    with pytest.raises(TunepipeError) as raised:
        queries.lineage(target)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


# -- trials ----------------------------------------------------------------------------------------

def test_trials_are_best_first_and_follow_a_cached_tune_step(store):
    first, second, _ = store.runs

    search = queries.trials(second.run_id)

    assert search.tune_run_id == first.steps["tune"]
    assert search.reused_by == second.run_id
    assert search.objective == "val_accuracy" and search.direction == "max"
    assert [row.trial_id for row in search] == ["0002", "0001", "0000", "0003"]
    best = search[0]
    assert best.run_id == first.trials["0002"]
    assert (best.score, best.epochs, best.duration_s, best.status) == (0.97, 5, 4.0, "completed")
    assert best.hyperparameters == {"num_layers": 2, "units_0": 32, "learning_rate": 0.01, "optimizer": "sgd"}
    assert best.continued_from == "0001" and best.bracket == 1 and best.round == 1
    assert search[-1].status == "invalid" and search[-1].score is None
    assert "could not be built" in search[-1].error
    # The same search from the tune step's own run, from run 2's cache record of it, and from run 1.
    for reference in (first.steps["tune"], second.steps["tune"], first.run_id, "penguins-run-1"):
        assert [row.run_id for row in queries.trials(reference)] == [row.run_id for row in search]
    assert queries.trials(first.run_id).reused_by is None


def test_trials_of_a_run_that_is_not_a_pipeline_or_tune_run_is_an_error(store):
    with pytest.raises(TunepipeError, match="is the train step: give a pipeline run or a tune step run"):
        queries.trials(store.runs[0].steps["train"])


# -- runs ------------------------------------------------------------------------------------------

def test_pipeline_runs_rows(store):
    first, second, third = store.runs

    rows = queries.pipeline_runs(EXPERIMENT)

    assert [row.run_id for row in rows] == [third.run_id, second.run_id, first.run_id]
    newest, cached, oldest = rows
    assert newest.name == "penguins-run-3" and newest.status == "FINISHED"
    assert newest.spans == ("span-1", "span-2", "span-3")
    assert newest.pushed_version == "2" and newest.push_reason == "blessed" and newest.blessed is True
    assert newest.cached_steps == () and newest.accuracy == 0.95
    assert cached.cached_steps == ("ingest", "preprocess", "tune", "train")
    assert cached.best_score == 0.97 and cached.objective == "val_accuracy"
    assert cached.pushed_version == "1" and cached.push_reason == "forced by --force-push although not blessed"
    assert cached.blessed is False and cached.accuracy == 0.9
    assert cached.fingerprint == digest("files-v1") and cached.source == SOURCE
    assert cached.code_version == "0.1.0+penguins-run-2"
    assert oldest.pushed_version is None and oldest.push_reason == "not blessed"
    assert oldest.trials == 4 and oldest.started < cached.started < newest.started
    assert len(queries.pipeline_runs(EXPERIMENT, limit=1)) == 1
    assert [row.run_id for row in queries.pipeline_runs()] == [row.run_id for row in rows]


def test_runs_fetches_the_steps_of_every_row_in_one_search(store):
    opened, spy = spied_store(store.uri)

    rows = queries.pipeline_runs(EXPERIMENT, store=opened)

    assert [row.run_id for row in rows] == [run.run_id for run in reversed(store.runs)]
    assert not [call for call in spy.calls if tags.PARENT_RUN in call]  # no search for the steps of each row
    assert len(spy.calls) == len(set(spy.calls)), sorted(spy.calls)


def test_runs_rows_keep_their_own_steps_when_pipeline_runs_overlap_or_the_clock_went_back(tmp_path):
    """Rows take their steps from one search over a time window: each row still gets its own steps,
    also those recorded while an older run was still going and those stamped before their pipeline run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("overlap")
    start = 1_700_000_000_000

    def pipeline_run(name: str, at: int) -> str:
        return client.create_run(experiment_id, start_time=at, run_name=name,
                                 tags={tags.KIND: tags.PIPELINE}).info.run_id

    def step_run(pipeline_id: str, step: str, at: int, **recorded: str) -> None:
        client.create_run(experiment_id, start_time=at, run_name=step, tags={
            tags.PARENT_RUN: pipeline_id, tags.STEP: step, tags.CACHED: tags.flag(False), **recorded})

    first = pipeline_run("first", start)
    step_run(first, "resolve-source", start + 1_000, **{tags.SPANS: "span-1"})
    second = pipeline_run("second", start + 60_000)
    step_run(second, "resolve-source", start + 61_000, **{tags.SPANS: "span-2"})
    step_run(first, "evaluate", start + 120_000, **{tags.BLESSED: tags.flag(True)})  # the first run, still going
    third = pipeline_run("third", start + 180_000)
    step_run(third, "resolve-source", start + 179_000, **{tags.SPANS: "span-3"})  # its clock set back a second
    fourth = pipeline_run("fourth", start + 240_000)
    step_run(fourth, "resolve-source", start + 240_000 - 3_600_000, **{tags.SPANS: "span-4"})  # ... an hour

    newest = {row.name: row for row in queries.pipeline_runs("overlap", limit=3, tracking_uri=uri)}
    assert {name: row.spans for name, row in newest.items()} == {
        "fourth": ("span-4",), "third": ("span-3",), "second": ("span-2",)}
    assert newest["second"].blessed is None  # the first run's evaluate is not the second's
    every = {row.name: row for row in queries.pipeline_runs("overlap", tracking_uri=uri)}
    assert every["first"].spans == ("span-1",) and every["first"].blessed is True


def test_an_unknown_experiment_names_the_ones_there():
    with pytest.raises(TunepipeError, match="no experiment 'ravens' in sqlite:///.*; experiments there: penguins"):
        queries.pipeline_runs("ravens")


def test_the_queries_read_what_tracking_and_the_registry_write(tmp_path, monkeypatch):
    """The pipeline, step and cache records written by `pipeline.tracking` and the model version by
    `pipeline.registry.register` (not by this module's imitations of them), the step facts set through
    the step recorder as the hooks set them: a tag the writer and the reader name differently fails here."""
    from components.push import PushResult
    from pipeline import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = (str(tmp_path / "model"), digest("writers/model"))
    try:
        with tracking.pipeline_run("writers", str(tmp_path), None, {"source": SOURCE}, run_name="writers-1"):
            with tracking.step_run("resolve-source", {"source": SOURCE, "fingerprint": digest("files")}) as step:
                step.tags({tags.SPANS: "span-7", tags.FILES: "1"})
            tracking.record_cached_step("train", {"model": model}, {"eval_accuracy": 0.9})
            with tracking.step_run("evaluate", {}, inputs={"model": model}) as step:
                step.metrics({"eval_accuracy": 0.9})
                step.tags({tags.BLESSED: tags.flag(True)})
            with tracking.step_run("push", {"model_name": "writers"}, inputs={"model": model}) as step:
                step.tags({tags.PUSHED: tags.flag(True), tags.PUSH_VERSION: "7", tags.PUSH_REASON: "blessed",
                           tags.PUSH_FORCED: tags.flag(False)})
                pushed = PushResult(True, "blessed", version=7, path=str(tmp_path / "serving" / "writers" / "7"),
                                    digest=model[1])
                registry.register("writers", pushed, step.run_id)
        with pytest.raises(ValueError, match="no examples"):
            with tracking.pipeline_run("writers", str(tmp_path), None, {"source": SOURCE}, run_name="writers-2"):
                with tracking.step_run("ingest", {"source": SOURCE}):
                    raise ValueError("no examples")
    finally:
        mlflow.set_tracking_uri(None)

    failed, pushed_run = queries.pipeline_runs("writers", tracking_uri=uri)
    assert pushed_run.name == "writers-1"
    assert pushed_run.pushed_version == "7" and pushed_run.push_reason == "blessed" and pushed_run.blessed is True
    assert pushed_run.spans == ("span-7",) and pushed_run.fingerprint == digest("files")
    assert pushed_run.cached_steps == ("train",) and pushed_run.accuracy == 0.9
    assert failed.failed_step == "ingest" and failed.error == "no examples"
    assert failed.push_reason == "failed in ingest: no examples"

    graph = queries.lineage("writers@production", tracking_uri=uri)
    version = graph.nodes["model:writers:1"]
    assert version.target and version.facts["serving version"] == "7" and version.facts["digest"] == model[1]
    assert "@production" in version.facts["aliases"] and version.facts["forced"] == "false"
    assert step_nodes(graph)["push"].facts["pipeline run"] == f"writers-1 ({pushed_run.run_id})"
    assert {("push", "writers v1", "registered"), ("evaluate", "push", "blessing"),
            ("model", "push", "model")} <= edge_labels(graph)


# -- renderers -------------------------------------------------------------------------------------

def test_dot_mermaid_html_and_json_name_the_chain(store):
    first, second, _ = store.runs
    graph = queries.lineage("penguins:1")

    dot = queries.to_dot(graph)
    assert dot.startswith('digraph "lineage" {') and dot.rstrip().endswith("}")
    for node in graph.nodes.values():
        assert f'"{node.id}" [label="{node.kind}: {node.label}' in dot
    assert f'"step:{second.steps["push"]}" -> "model:penguins:1" [label="registered"];' in dot
    assert "style=\"filled,dashed\"" in dot  # the cached steps

    mermaid = queries.to_mermaid(graph)
    assert mermaid.startswith("flowchart LR\n")
    for label in ("source: /data/penguins/*.csv", "step: tune", "trial: best trial 0002", "model: penguins v1",
                  "artifact: tuning", "spans span-1, span-2",
                  "4 trials, best val_accuracy 0.9700"):  # the step registry's summary of the tune step
        assert label in mermaid, label
    assert "-->|blessing|" in mermaid and "class " in mermaid
    assert '"' not in mermaid.replace('["', "").replace('"]', "").replace('[("', "").replace('")]', "") \
        .replace('[/"', "").replace('"/]', "").replace('(["', "").replace('"])', "").replace('{{"', "") \
        .replace('"}}', "")  # quotes only delimit labels

    page = queries.to_html(graph)
    assert page.startswith("<!DOCTYPE html>")
    assert '<pre class="mermaid">' in page and "flowchart LR" in page
    # The table is in the page itself: every node, with its run ids and digests, readable offline.
    for node in graph.nodes.values():
        assert f'id="{node.id}"' in page
    assert first.steps["tune"] in page and first.digests["tuning"] in page and "span-1, span-2" in page
    assert page.count("http") == page.count(queries.MERMAID_SCRIPT)  # the graph's script is the only fetch

    data = queries.to_json(graph)
    assert '"target": "penguins:1"' in data and first.trials["0002"] in data


# -- the commands ----------------------------------------------------------------------------------

def tunepipe(*args: str):
    group = _Group(name="tunepipe", commands={command.name: command for command in cli_lineage.COMMANDS})
    return CliRunner().invoke(group, list(args), catch_exceptions=False, env={"COLUMNS": "250"})


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tunepipe: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_the_commands_are_click_commands_named_as_the_cli_shows_them():
    assert [command.name for command in cli_lineage.COMMANDS] == ["runs", "trials", "lineage"]
    assert all(isinstance(command, click.Command) for command in cli_lineage.COMMANDS)


def test_runs_command_from_the_config(store, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"name": "penguins", "output_root": str(store.root),
                                      "data": {"source": SOURCE, "label": "species"}}))

    result = tunepipe("runs", "--config", str(config))

    assert result.exit_code == 0, result.output
    for row in store.runs:
        assert row.run_id in result.stdout
    lines = result.stdout.splitlines()
    cached_row = next(line for line in lines if "penguins-run-2" in line)
    assert "ingest, preprocess, tune, train" in cached_row and "v1: forced" not in cached_row
    assert "v1 (forced by --force-push although not blessed)" in cached_row
    assert "0.9700 val_accuracy" in cached_row
    assert "not blessed" in next(line for line in lines if "penguins-run-1" in line)
    assert "span-1, span-2, span-3" in next(line for line in lines if "penguins-run-3" in line)


def test_trials_command_lists_best_first(store):
    first, second, _ = store.runs
    result = tunepipe("trials", second.run_id)
    assert result.exit_code == 0, result.output
    assert f"4 trials of tune run {first.steps['tune']}" in result.stdout
    assert f"pipeline run {second.run_id} reused this search's result" in " ".join(result.stdout.split())
    positions = [result.stdout.index(f" {trial_id} ") for trial_id in ("0002", "0001", "0000", "0003")]
    assert positions == sorted(positions)


def test_trials_command_writes_the_tuning_report_of_a_recorded_search(store, tmp_path):
    first, second, _ = store.runs
    result = tunepipe("trials", second.run_id, "--format", "html", "-o", str(tmp_path / "report.html"))
    assert result.exit_code == 0, result.output
    assert f"wrote the tuning report of tune run {first.steps['tune']}" in result.stdout
    page = (tmp_path / "report.html").read_text()
    assert "4 trials (3 completed, 1 invalid); best val_accuracy 0.9700 in trial 0002" in page
    assert 'id="plot-parallel"' in page and "the model could not be built" in page


def test_lineage_command_writes_each_format(store, tmp_path):
    text = tunepipe("lineage", "penguins:1")
    assert text.exit_code == 0, text.output
    assert "lineage of penguins:1" in text.stdout and "reused from cache" in text.stdout
    assert "best trial 0002" in text.stdout and "← target" in text.stdout

    for output_format in ("dot", "mermaid", "html"):
        path = tmp_path / f"lineage.{output_format}"
        result = tunepipe("lineage", "penguins:1", "--format", output_format, "-o", str(path))
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"wrote the {output_format} lineage of penguins:1 (")
        assert "penguins v1" in path.read_text()

    mermaid = tunepipe("lineage", "penguins@production", "--format", "mermaid")
    assert mermaid.exit_code == 0 and mermaid.stdout.startswith("flowchart LR")


@pytest.fixture
def closed_port_url():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("args, fragments", [
    (["lineage", "penguins:9"], ["registered model 'penguins' has no version 9"]),
    (["trials", "f" * 32], [f"no MLflow run {'f' * 32} in sqlite:///"]),
    (["trials", "penguins-run-9"], ["no MLflow run penguins-run-9 in sqlite:///"]),
    (["runs", "--experiment", "ravens"], ["no experiment 'ravens'"]),
])
def test_command_errors_are_one_line(args, fragments):
    assert_one_line_error(tunepipe(*args), *fragments)


@pytest.mark.parametrize("command", [["runs"], ["trials", "f" * 32], ["lineage", "penguins@production"]])
def test_an_unreachable_tracking_server_is_one_line(closed_port_url, command):
    result = tunepipe(*command, "--tracking-uri", closed_port_url)
    assert_one_line_error(result, f"cannot reach the MLflow tracking server at {closed_port_url}")


def test_the_commands_leave_the_garbage_collector_collecting(store, tmp_path):
    """They pause it while the store opens, then freeze what exists (see `cli_lineage._store`): after
    a command, or one that failed, garbage made in the process is still collected."""
    import gc

    class Cycle:
        def __init__(self):
            self.itself = self

    for args in (["runs"], ["lineage", "penguins:1"], ["trials", "f" * 32],
                 ["runs", "--tracking-uri", f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"]):
        tunepipe(*args)
        assert gc.isenabled(), args
        garbage = weakref.ref(Cycle())
        gc.collect()
        assert garbage() is None, args


def test_no_store_yet_is_one_line_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    result = tunepipe("runs")
    assert_one_line_error(result, f"no tracking store at {tmp_path / 'tunepipe-out' / 'mlflow.db'}")
    assert not (tmp_path / "tunepipe-out").exists()
