"""The launcher and the tune step's hook as a pipeline task runs them: retraining reuses the last
search over the same search space, and searches again when the space changed or the search is old."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow

from components import artifacts
from components.model import hyperparameters as model
from components.tune import artifact, reuse
from pipeline import launcher, tags, trial_tracking
from tests.conftest import TaskArtifact
from tests.tiny_search import HYPERBAND_TRIALS, TINY_SPACE, tiny_config, trial_runs

def run_tune_task(inputs, tmp_path: Path, name: str, tuner: dict, reuse: bool) -> tuple[TaskArtifact, object]:
    """The tune task as a pipeline runs it, and the MLflow run it recorded."""
    tuning = TaskArtifact(str(tmp_path / name))
    launcher.run_step("tune", examples=TaskArtifact(str(inputs.examples)),
                      transform=TaskArtifact(str(inputs.transform)), options=tuner, work_root=str(tmp_path / "work"),
                      reuse_hyperparameters=reuse, code_version="test", tuning=tuning, hypermodel_source="",
                      report=TaskArtifact(str(tmp_path / f"{name}-report.html")))
    client = mlflow.MlflowClient()
    found = client.search_runs([os.environ["MLFLOW_EXPERIMENT_ID"]],
                               f"tags.`{tags.output('tuning', 'uri')}` = '{tuning.uri}'")
    return tuning, found[0]


def test_retraining_reuses_the_last_search_over_the_same_space(penguin_inputs, step_tracking, tmp_path):
    options = tiny_config().model_dump(mode="json", exclude_none=True)

    first, first_run = run_tune_task(penguin_inputs, tmp_path, "first", options, reuse=True)
    second, second_run = run_tune_task(penguin_inputs, tmp_path, "second", options, reuse=True)

    # Nothing to reuse on the first run: it searched, and says why.
    assert first_run.data.tags[tags.TUNING] == "searched"
    assert first_run.data.tags[tags.TUNING_WHY] == "no earlier search over this search space"
    assert len(trial_runs(step_tracking)) == HYPERBAND_TRIALS
    # The second reused it: the same hyperparameters, no new trial, and the first search as an input.
    assert second_run.data.tags[tags.TUNING] == "reused"
    assert second_run.data.tags[tags.REUSED_FROM] == first_run.info.run_id
    assert second.metadata["reused_from"] == first_run.info.run_id
    assert (model.read_hyperparameters(Path(second.path, artifact.BEST_HYPERPARAMETERS))
            == model.read_hyperparameters(Path(first.path, artifact.BEST_HYPERPARAMETERS)))
    assert len(trial_runs(step_tracking)) == HYPERBAND_TRIALS
    assert second_run.data.tags[tags.input('tuning', 'digest')] == first.metadata["digest"]
    assert second_run.data.metrics["best_score"] == first_run.data.metrics["best_score"]
    manifest = artifacts.read_manifest(second.path, artifacts.TUNING)
    assert manifest["reused_from"]["tune_run_id"] == first_run.info.run_id


def test_a_changed_search_space_or_an_old_search_is_searched_again(penguin_inputs, step_tracking, tmp_path):
    options = tiny_config().model_dump(mode="json", exclude_none=True)
    _, searched = run_tune_task(penguin_inputs, tmp_path, "first", options, reuse=False)
    assert searched.data.tags[tags.TUNING] == "searched"  # `tunepipe run` always searches

    # What the hook looks up with: the objective resolved for the penguins (a multiclass problem).
    previous = trial_tracking.last_search(step_tracking, tiny_config().for_problem("multiclass"))
    assert previous.run_id == searched.info.run_id
    assert reuse.reuse_decision(previous, tiny_config(), now=previous.started + 6.9 * 86400) is None
    assert reuse.reuse_decision(previous, tiny_config(), now=previous.started + 7.5 * 86400) == (
        f"the last search (run {searched.info.run_id}) is 7.5 days old, more than tuner.retune_after_days=7")
    never = tiny_config(retune_after_days=None)
    assert reuse.reuse_decision(previous, never, now=previous.started + 400 * 86400) is None

    wider = tiny_config(search_space={**TINY_SPACE, "architecture": {"type": "fixed", "value": "mlp", "branches": {
        "mlp": {"num_layers": 1, "units": {"type": "int", "min": 2, "max": 16}}}}})
    assert trial_tracking.last_search(step_tracking, wider.for_problem("multiclass")) is None
    options = wider.model_dump(mode="json", exclude_none=True)
    _, again = run_tune_task(penguin_inputs, tmp_path, "wider", options, reuse=True)
    assert again.data.tags[tags.TUNING] == "searched"
    assert again.data.tags[tags.TUNING_WHY] == "no earlier search over this search space"
