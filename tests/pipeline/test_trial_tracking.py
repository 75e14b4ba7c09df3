"""The tuner's trials in MLflow: `pipeline.trial_tracking.MlflowTrials` as the tune step's observer,
checked against Keras Tuner's own saved trials, across a kill, and on its own with no training."""
from __future__ import annotations

import collections
from pathlib import Path

import mlflow
import pytest

from components.model import hyperparameters as model
from components.tune import step as tune, trials
from components.tune.observer import TrialEnd, TrialStart
from pipeline import tags
from pipeline.trial_tracking import MlflowTrials
from tests.tiny_search import HYPERBAND_TRIALS, KillAtTraining, keras_tuner_trials, tiny_config, trial_runs

def search(inputs, out: Path, work_dir: Path, experiment_id: str, callbacks=()):
    """One attempt of the tune step: its own step run, the trials nested under it."""
    with mlflow.start_run(experiment_id=experiment_id) as parent:
        observer = MlflowTrials(parent.info.run_id, "val_accuracy")
        return parent, tune.run(inputs.examples, inputs.transform, out, tiny_config(), observer, work_dir=work_dir,
                                callbacks=list(callbacks))


def test_every_hyperband_trial_is_one_nested_mlflow_run_matching_keras_tuner(penguin_inputs, mlflow_experiment,
                                                                             tmp_path):
    work_dir, out = tmp_path / "work", tmp_path / "tuning"
    parent, _ = search(penguin_inputs, out, work_dir, mlflow_experiment)

    saved = keras_tuner_trials(work_dir)
    runs = trial_runs(mlflow_experiment)
    by_trial = {run.data.tags[tags.TRIAL_ID]: run for run in runs}
    assert len(runs) == len(by_trial) == len(saved) == HYPERBAND_TRIALS
    client = mlflow.MlflowClient()
    for trial_id, trial in saved.items():
        run = by_trial[trial_id]
        values = trial["hyperparameters"]["values"]
        assert run.data.tags[tags.PARENT_RUN] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags[tags.TRIAL_STATUS] == "completed"
        assert run.data.metrics["score"] == pytest.approx(trial["score"])
        assert {name: run.data.params[name] for name in model.model_values(values)} == {
            name: str(value) for name, value in model.model_values(values).items()}
        assert run.data.params["bracket"] == str(values["tuner/bracket"])
        assert run.data.params["round"] == str(values["tuner/round"])
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(values["tuner/initial_epoch"], values["tuner/epochs"]))
        assert run.data.metrics["duration_s"] > 0
    table = {row["trial_id"]: row for row in trials.read_table(out / trials.TRIALS_TABLE)}
    assert {trial_id: row["tracking_id"] for trial_id, row in table.items()} == {
        trial_id: run.info.run_id for trial_id, run in by_trial.items()}


def test_a_killed_search_resumes_without_recording_finished_trials_again(penguin_inputs, mlflow_experiment,
                                                                         tmp_path):
    work_dir, out, ledger = tmp_path / "work", tmp_path / "tuning", tmp_path / "trainings.txt"
    with pytest.raises(KeyboardInterrupt):
        search(penguin_inputs, out, work_dir, mlflow_experiment, [KillAtTraining(ledger, kill_at=3)])
    before = {run.data.tags[tags.TRIAL_ID]: run for run in trial_runs(mlflow_experiment)}
    finished_before = {trial_id: run.info.run_id for trial_id, run in before.items()
                       if run.data.tags.get(tags.TRIAL_STATUS) == "completed"}
    assert len(finished_before) == 2
    assert [run.info.status for run in before.values() if run.info.run_id not in finished_before.values()] == ["KILLED"]

    # The rerun, e.g. the next pipeline run, under a new step run.
    rerun, _ = search(penguin_inputs, out, work_dir, mlflow_experiment, [KillAtTraining(ledger)])

    runs = trial_runs(mlflow_experiment)  # deleted runs (the killed attempt) are not listed
    counts = collections.Counter(run.data.tags[tags.TRIAL_ID] for run in runs)
    assert set(counts) == set(keras_tuner_trials(work_dir)) and set(counts.values()) == {1}
    after = {run.data.tags[tags.TRIAL_ID]: run for run in runs}
    assert {trial_id: after[trial_id].info.run_id for trial_id in finished_before} == finished_before
    assert all(run.data.tags[tags.TRIAL_STATUS] == "completed" for run in runs)
    # One search on the record: the trials the killed attempt finished moved under the rerun's step run.
    assert {run.data.tags[tags.PARENT_RUN] for run in runs} == {rerun.info.run_id}


def ended(trial_id: str, status: str = "completed", score: float | None = 0.9) -> TrialEnd:
    return TrialEnd(trial_id, status, score, {"units_0": 4}, {"bracket": 0, "round": 0}, epochs=2, best_epoch=2,
                    duration_s=1.5, error=None if status == "completed" else "ValueError: no", tracking_id=None)


def test_reconcile_records_a_trial_that_finished_without_its_run_exactly_once(mlflow_experiment):
    with mlflow.start_run(experiment_id=mlflow_experiment) as parent:
        observer = MlflowTrials(parent.info.run_id, "val_accuracy")
        observer.search_began("search-1")
        recorded = observer.trial_began(TrialStart("0000", {"units_0": 4}, {"bracket": 0}))
        observer.trial_ended(ended("0000"))
        # Trial 0001 finished in Keras Tuner, but the kill came before its run was closed (or made).
        made = observer.reconcile([ended("0000"), ended("0001", "invalid", None)])
        again = observer.reconcile([ended("0000"), ended("0001", "invalid", None)])

    assert set(made) == {"0001"} and again == {}
    runs = {run.data.tags[tags.TRIAL_ID]: run for run in trial_runs(mlflow_experiment)}
    assert set(runs) == {"0000", "0001"} and runs["0000"].info.run_id == recorded
    assert runs["0001"].data.tags[tags.TRIAL_STATUS] == "invalid" and runs["0001"].info.status == "FAILED"
    assert runs["0001"].data.tags[tags.ERROR] == "ValueError: no"
    assert runs["0000"].data.metrics["score"] == 0.9 and runs["0000"].data.tags[tags.SEARCH_ID] == "search-1"


URI = "file:///out/run-1/tune/tuning"


def finished_attempt(experiment_id: str, tuning_uri: str | None) -> str:
    """A tune step run of a pipeline run that searched (trials 0000 and 0001), recorded its output
    at `tuning_uri` and finished; the step run's id."""
    client = mlflow.MlflowClient()
    pipeline = client.create_run(experiment_id, tags={tags.KIND: tags.PIPELINE})
    output = {tags.output("tuning", "uri"): tuning_uri} if tuning_uri else {}
    step = client.create_run(experiment_id, tags={tags.PARENT_RUN: pipeline.info.run_id, tags.STEP: "tune", **output})
    observer = MlflowTrials(step.info.run_id, "val_accuracy")
    observer.search_began("search-1")
    for trial_id in ("0000", "0001"):
        observer.trial_began(TrialStart(trial_id, {"units_0": 4}, {"bracket": 0}))
        observer.trial_ended(ended(trial_id))
    client.set_terminated(step.info.run_id, "FINISHED")
    return step.info.run_id


def train_took(experiment_id: str, tuning_uri: str) -> None:
    mlflow.MlflowClient().create_run(experiment_id, tags={tags.STEP: "train", tags.input("tuning", "uri"): tuning_uri})


def resume(experiment_id: str) -> str:
    """The tune step of the next pipeline run, resuming search-1 (finished: it runs no trial)."""
    client = mlflow.MlflowClient()
    pipeline = client.create_run(experiment_id, tags={tags.KIND: tags.PIPELINE})
    step = client.create_run(experiment_id, tags={tags.PARENT_RUN: pipeline.info.run_id, tags.STEP: "tune"})
    MlflowTrials(step.info.run_id, "val_accuracy").search_began("search-1")
    return step.info.run_id


def parents(experiment_id: str) -> set[str]:
    return {run.data.tags[tags.PARENT_RUN] for run in trial_runs(experiment_id)}


@pytest.mark.parametrize("recorded, taken", [
    (URI, None),  # its pipeline run killed before kfp.local cached the output: the next run ran the step again
    (URI, "file:///out/run-0/tune/tuning"),  # a step took another search's output
    (None, None),  # it recorded no output
])
def test_a_finished_search_whose_output_nothing_took_gives_its_trials_to_the_attempt_resuming_it(
        mlflow_experiment, recorded, taken):
    finished_attempt(mlflow_experiment, recorded)
    if taken:
        train_took(mlflow_experiment, taken)
    rerun = resume(mlflow_experiment)
    assert parents(mlflow_experiment) == {rerun} and len(trial_runs(mlflow_experiment)) == 2


def test_a_finished_search_whose_output_train_took_keeps_its_trials(mlflow_experiment):
    # A model came from it (its pipeline run may still have been killed later, in push): a run of the
    # step again (e.g. --no-cache) does not take its trials.
    kept = finished_attempt(mlflow_experiment, URI)
    train_took(mlflow_experiment, URI)
    resume(mlflow_experiment)
    assert parents(mlflow_experiment) == {kept}
