"""The tune step: Keras Tuner searches on the penguins with tiny budgets, checked against Keras Tuner's
own saved trials and against what MLflow recorded."""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path

import keras
import mlflow
import pytest

from components import artifacts, model, tune
from pipeline import config, launcher
from pipeline.config import TunerConfig
from pipeline.errors import ConfigError, TunepipeError

# Hyperband with max_epochs=2 and factor=2: two brackets, 5 trials (2 of 1 epoch, 1 continuing the
# better to epoch 2, 2 of 2 epochs), 7 epochs in all.
HYPERBAND_TRIALS = 5
TINY_SPACE = {
    "num_layers": 1,
    "units": {"type": "int", "min": 2, "max": 8},
    "dropout": 0.0,
    "learning_rate": {"type": "float", "min": 1e-3, "max": 1e-1, "sampling": "log"},
    "optimizer": "adam",
}
DIVERGING = 1e12  # with SGD the loss is NaN within the first epoch


def tiny_config(**overrides) -> TunerConfig:
    return TunerConfig.model_validate({"max_epochs": 2, "factor": 2, "batch_size": 64, "search_space": TINY_SPACE,
                                       **overrides})


def keras_tuner_trials(work_dir: Path) -> dict[str, dict]:
    """The trials as Keras Tuner itself saved them (trial.json in each trial directory)."""
    trials = {}
    for path in work_dir.glob("*/trial_*/trial.json"):
        saved = json.loads(path.read_text())
        trials[saved["trial_id"]] = saved
    return trials


def trial_runs(experiment_id: str) -> list:
    """The experiment's trial runs (the step runs they nest under have no trial id)."""
    runs = mlflow.MlflowClient().search_runs([experiment_id], max_results=1000)
    return [run for run in runs if tune.TAG_TRIAL_ID in run.data.tags]


class KillAtTraining(keras.callbacks.Callback):
    """Counts trainings in a ledger file and raises KeyboardInterrupt in the first batch of training
    number `kill_at`, as a Ctrl-C or a pod eviction would. A file, because Keras Tuner deep-copies
    callbacks for every trial."""

    def __init__(self, ledger: Path, kill_at: int | None = None):
        super().__init__()
        self.ledger = str(ledger)
        self.kill_at = kill_at
        self.number = 0

    def on_train_begin(self, logs=None):
        with open(self.ledger, "a+") as ledger:
            ledger.seek(0)
            self.number = len(ledger.read().splitlines()) + 1
            ledger.write(f"training {self.number}\n")

    def on_train_batch_end(self, batch, logs=None):
        if self.number == self.kill_at:
            raise KeyboardInterrupt


def test_every_hyperband_trial_is_one_nested_mlflow_run_matching_keras_tuner(penguin_inputs, mlflow_experiment,
                                                                             tmp_path):
    work_dir, out = tmp_path / "work", tmp_path / "tuning"
    with mlflow.start_run(experiment_id=mlflow_experiment) as parent:
        result = tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tiny_config(), work_dir=work_dir)

    saved = keras_tuner_trials(work_dir)
    assert len(saved) == HYPERBAND_TRIALS
    runs = trial_runs(mlflow_experiment)
    by_trial = {run.data.tags[tune.TAG_TRIAL_ID]: run for run in runs}
    assert len(runs) == len(by_trial) == HYPERBAND_TRIALS
    assert set(by_trial) == set(saved)
    client = mlflow.MlflowClient()
    for trial_id, trial in saved.items():
        run = by_trial[trial_id]
        values = trial["hyperparameters"]["values"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags[tune.TAG_STATUS] == "completed"
        assert run.data.metrics["score"] == pytest.approx(trial["score"])
        assert {name: run.data.params[name] for name in model.model_values(values)} == {
            name: str(value) for name, value in model.model_values(values).items()}
        assert run.data.params["bracket"] == str(values["tuner/bracket"])
        assert run.data.params["round"] == str(values["tuner/round"])
        # Per-epoch eval metrics at the epochs this trial trained (Hyperband continues from initial_epoch).
        steps = [metric.step for metric in client.get_metric_history(run.info.run_id, "val_accuracy")]
        assert sorted(steps) == list(range(values["tuner/initial_epoch"], values["tuner/epochs"]))
        assert run.data.metrics["duration_s"] > 0

    table = {row["trial_id"]: row for row in tune.read_trials_table(out / tune.TRIALS_TABLE)}
    assert set(table) == set(saved)
    for trial_id, row in table.items():
        assert float(row["score"]) == pytest.approx(saved[trial_id]["score"])
        assert row["mlflow_run_id"] == by_trial[trial_id].info.run_id
        assert (out / tune.TENSORBOARD_DIR / trial_id).is_dir()
    best_id = max(saved, key=lambda trial_id: saved[trial_id]["score"])
    assert result.best_score == pytest.approx(saved[best_id]["score"])
    assert result.best_hyperparameters == model.model_values(saved[best_id]["hyperparameters"]["values"])
    assert model.read_hyperparameters(out / tune.BEST_HYPERPARAMETERS) == result.best_hyperparameters
    assert artifacts.read_manifest(out, tune.KIND)["best_trial_id"] == result.best_trial_id


def test_a_killed_search_resumes_without_rerunning_or_recording_finished_trials_again(penguin_inputs,
                                                                                    mlflow_experiment, tmp_path):
    work_dir, out, ledger = tmp_path / "work", tmp_path / "tuning", tmp_path / "trainings.txt"
    with mlflow.start_run(experiment_id=mlflow_experiment):
        with pytest.raises(KeyboardInterrupt):
            tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tiny_config(), work_dir=work_dir,
                     callbacks=[KillAtTraining(ledger, kill_at=3)])
    assert not out.exists()
    before = {run.data.tags[tune.TAG_TRIAL_ID]: run for run in trial_runs(mlflow_experiment)}
    finished_before = {trial_id: run.info.run_id for trial_id, run in before.items()
                       if run.data.tags.get(tune.TAG_STATUS) == "completed"}
    assert len(finished_before) == 2
    assert [run.info.status for run in before.values() if run.info.run_id not in finished_before.values()] == ["KILLED"]

    # The rerun, e.g. the next pipeline run, under a new step run.
    with mlflow.start_run(experiment_id=mlflow_experiment):
        result = tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tiny_config(), work_dir=work_dir,
                          callbacks=[KillAtTraining(ledger)])

    trainings = ledger.read_text().splitlines()
    # 3 trainings before the kill (the third cut short), then only the 3 trials that had not finished.
    assert len(trainings) == 3 + (HYPERBAND_TRIALS - 2)
    assert len(result.trials) == HYPERBAND_TRIALS and all(t.status == "completed" for t in result.trials)
    runs = trial_runs(mlflow_experiment)  # deleted runs (the killed attempt) are not listed
    counts = collections.Counter(run.data.tags[tune.TAG_TRIAL_ID] for run in runs)
    assert set(counts) == set(keras_tuner_trials(work_dir)) and set(counts.values()) == {1}
    after = {run.data.tags[tune.TAG_TRIAL_ID]: run for run in runs}
    assert {trial_id: after[trial_id].info.run_id for trial_id in finished_before} == finished_before
    assert all(run.data.tags[tune.TAG_STATUS] == "completed" for run in runs)


def test_a_diverging_trial_is_recorded_failed_and_the_search_goes_on(penguin_inputs, mlflow_experiment, tmp_path):
    space = {**TINY_SPACE, "optimizer": "sgd", "learning_rate": [0.05, DIVERGING]}
    tuner_config = tiny_config(algorithm="random", max_trials=4, max_consecutive_failed_trials=4, search_space=space)
    out = tmp_path / "tuning"
    with mlflow.start_run(experiment_id=mlflow_experiment):
        result = tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tuner_config,
                          work_dir=tmp_path / "work")

    failed = [trial for trial in result.trials if trial.status == "failed"]
    completed = [trial for trial in result.trials if trial.status == "completed"]
    assert failed and completed
    assert all(trial.hyperparameters["learning_rate"] == DIVERGING for trial in failed)
    assert all(trial.hyperparameters["learning_rate"] != DIVERGING for trial in completed)
    assert all("diverged" in trial.error and trial.score is None for trial in failed)
    assert result.best_hyperparameters["learning_rate"] != DIVERGING
    runs = {run.data.tags[tune.TAG_TRIAL_ID]: run for run in trial_runs(mlflow_experiment)}
    for trial in failed:
        assert runs[trial.trial_id].info.status == "FAILED"
        assert runs[trial.trial_id].data.tags[tune.TAG_STATUS] == "failed"
        assert "diverged" in runs[trial.trial_id].data.tags[tune.TAG_ERROR]
    rows = {row["trial_id"]: row for row in tune.read_trials_table(out / tune.TRIALS_TABLE)}
    assert {trial_id for trial_id, row in rows.items() if row["status"] == "failed"} == {t.trial_id for t in failed}


def test_hyperparameters_that_cannot_build_a_model_make_an_invalid_trial(penguin_inputs, mlflow_experiment,
                                                                          tmp_path, monkeypatch):
    build_model = model.build_model

    def build_or_refuse(hp, transform, space=model.DEFAULT_SEARCH_SPACE):
        # A model module that cannot build some configurations, e.g. a layer size its hardware refuses.
        built = build_model(hp, transform, space)
        if hp.get("units_0") % 2:
            raise ValueError(f"cannot build {hp.get('units_0')} units")
        return built

    monkeypatch.setattr(model, "build_model", build_or_refuse)
    tuner_config = tiny_config(algorithm="random", max_trials=4, max_consecutive_failed_trials=4)
    with mlflow.start_run(experiment_id=mlflow_experiment):
        result = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tuner_config,
                          work_dir=tmp_path / "work")

    invalid = [trial for trial in result.trials if trial.hyperparameters["units_0"] % 2]
    assert invalid and len(invalid) < len(result.trials)
    runs = {run.data.tags[tune.TAG_TRIAL_ID]: run for run in trial_runs(mlflow_experiment)}
    for trial in result.trials:
        if trial in invalid:
            assert trial.status == "invalid" and trial.epochs == 0
            assert trial.error == f"ValueError: cannot build {trial.hyperparameters['units_0']} units"
            assert runs[trial.trial_id].data.tags[tune.TAG_STATUS] == "invalid"
            assert runs[trial.trial_id].info.status == "FAILED"
        else:
            assert trial.status == "completed" and trial.epochs > 0


def test_a_search_whose_trials_all_fail_ends_in_one_line(penguin_inputs, tmp_path):
    space = {**TINY_SPACE, "optimizer": "sgd", "learning_rate": DIVERGING}
    tuner_config = tiny_config(algorithm="random", max_trials=3, max_consecutive_failed_trials=2, search_space=space)
    with pytest.raises(TunepipeError) as raised:
        tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tuner_config,
                 work_dir=tmp_path / "work")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("tuning failed: 2 trials in a row failed") and "diverged" in message
    assert not (tmp_path / "tuning").exists()


def test_tuning_off_gives_the_search_space_defaults(penguin_inputs, tmp_path):
    tuner_config = TunerConfig.model_validate({"enabled": False, "search_space": {"units": {
        "type": "int", "min": 4, "max": 64, "default": 16}, "num_layers": 1}})
    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tuner_config)
    assert result.best_hyperparameters["units_0"] == 16 and result.best_hyperparameters["num_layers"] == 1
    assert model.read_hyperparameters(tmp_path / "tuning" / tune.BEST_HYPERPARAMETERS) == result.best_hyperparameters
    assert result.trials == () and tune.read_trials_table(tmp_path / "tuning" / tune.TRIALS_TABLE) == []


@dataclasses.dataclass
class TaskArtifact:
    """What a kfp task hands the launcher for an artifact: a path, a URI and metadata."""

    path: str
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def uri(self) -> str:
        return self.path


def run_tune_task(inputs, tmp_path: Path, name: str, tuner: dict, reuse: bool) -> tuple[TaskArtifact, object]:
    """The tune task as a pipeline runs it, and the MLflow run it recorded."""
    tuning = TaskArtifact(str(tmp_path / name))
    launcher.tune(TaskArtifact(str(inputs.examples)), TaskArtifact(str(inputs.transform)), tuner,
                  str(tmp_path / "work"), reuse, tuning)
    client = mlflow.MlflowClient()
    found = client.search_runs([os.environ["MLFLOW_EXPERIMENT_ID"]],
                               f"tags.`tunepipe.output.tuning.uri` = '{tuning.uri}'")
    return tuning, found[0]


@pytest.fixture
def step_tracking(mlflow_experiment, monkeypatch):
    """Tracking as a pipeline step sees it: the store and experiment in the environment."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", mlflow_experiment)
    return mlflow_experiment


def test_retraining_reuses_the_last_search_over_the_same_space(penguin_inputs, step_tracking, tmp_path):
    options = tiny_config().model_dump(mode="json", exclude_none=True)

    first, first_run = run_tune_task(penguin_inputs, tmp_path, "first", options, reuse=True)
    second, second_run = run_tune_task(penguin_inputs, tmp_path, "second", options, reuse=True)

    # Nothing to reuse on the first run: it searched, and says why.
    assert first_run.data.tags["tunepipe.tuning"] == "searched"
    assert first_run.data.tags["tunepipe.tuning.why"] == "no earlier search over this search space"
    assert len(trial_runs(step_tracking)) == HYPERBAND_TRIALS
    # The second reused it: the same hyperparameters, no new trial, and the first search as an input.
    assert second_run.data.tags["tunepipe.tuning"] == "reused"
    assert second_run.data.tags["tunepipe.tuning.reused_from"] == first_run.info.run_id
    assert second.metadata["reused_from"] == first_run.info.run_id
    assert (model.read_hyperparameters(Path(second.path, tune.BEST_HYPERPARAMETERS))
            == model.read_hyperparameters(Path(first.path, tune.BEST_HYPERPARAMETERS)))
    assert len(trial_runs(step_tracking)) == HYPERBAND_TRIALS
    assert second_run.data.tags["tunepipe.input.tuning.digest"] == first.metadata["digest"]
    assert second_run.data.metrics["best_score"] == first_run.data.metrics["best_score"]
    manifest = artifacts.read_manifest(second.path, tune.KIND)
    assert manifest["reused_from"]["tune_run_id"] == first_run.info.run_id


def test_a_changed_search_space_or_an_old_search_is_searched_again(penguin_inputs, step_tracking, tmp_path):
    options = tiny_config().model_dump(mode="json", exclude_none=True)
    _, searched = run_tune_task(penguin_inputs, tmp_path, "first", options, reuse=False)
    assert searched.data.tags["tunepipe.tuning"] == "searched"  # `tunepipe run` always searches

    previous = tune.last_search(step_tracking, tiny_config())
    assert previous.run_id == searched.info.run_id
    assert tune.reuse_decision(previous, tiny_config(), now=previous.started + 6.9 * 86400) is None
    assert tune.reuse_decision(previous, tiny_config(), now=previous.started + 7.5 * 86400) == (
        f"the last search (run {searched.info.run_id}) is 7.5 days old, more than tuner.retune_after_days=7")
    assert tune.reuse_decision(previous, tiny_config(retune_after_days=None), now=previous.started + 400 * 86400) is None

    wider = tiny_config(search_space={**TINY_SPACE, "units": {"type": "int", "min": 2, "max": 16}})
    assert tune.last_search(step_tracking, wider) is None
    _, again = run_tune_task(penguin_inputs, tmp_path, "wider", wider.model_dump(mode="json", exclude_none=True), reuse=True)
    assert again.data.tags["tunepipe.tuning"] == "searched"
    assert again.data.tags["tunepipe.tuning.why"] == "no earlier search over this search space"


SEARCH_SPACE_YAML = """
data: {source: penguins.csv, label: species}
tuner:
  search_space:
    num_layers: {type: int, min: 1, max: 4, step: 1}
    units: {type: int, min: 16, max: 256, sampling: log, default: 32}
    dropout: {type: float, min: 0.0, max: 0.5, step: 0.25}
    learning_rate: {type: float, min: 0.0001, max: 0.1, sampling: log}
    optimizer: [adam, sgd]
    batch_norm: {type: boolean, default: true}
    activation: gelu
"""


def test_a_yaml_search_space_declares_the_keras_tuner_hyperparameters(tmp_path):
    import keras_tuner

    path = tmp_path / "pipeline.yaml"
    path.write_text(SEARCH_SPACE_YAML)
    space = config.load(path).tuner.search_space
    hp = model.hyperparameters(None, space)
    declared = {item.name: item for item in hp.space}
    assert isinstance(declared["units_0"], keras_tuner.engine.hyperparameters.Int)
    units = declared["units_0"]
    assert (units.min_value, units.max_value, units.sampling) == (16, 256, "log")
    assert isinstance(declared["learning_rate"], keras_tuner.engine.hyperparameters.Float)
    assert declared["learning_rate"].sampling == "log"
    assert declared["dropout"].step == 0.25
    assert isinstance(declared["optimizer"], keras_tuner.engine.hyperparameters.Choice)
    assert list(declared["optimizer"].values) == ["adam", "sgd"]
    assert isinstance(declared["batch_norm"], keras_tuner.engine.hyperparameters.Boolean)
    assert isinstance(declared["activation"], keras_tuner.engine.hyperparameters.Fixed)
    assert model.default_hyperparameters(space) == {
        "num_layers": 1, "units_0": 32, "dropout": 0.0, "activation": "gelu", "batch_norm": True,
        "optimizer": "adam", "learning_rate": 0.0001}


@pytest.mark.parametrize("search_space, message", [
    ({"optimizer": "adagrad"}, "tuner.search_space.optimizer: values of optimizer must be a choice or fixed value "
                               "from: adam, adamw, nadam, rmsprop, sgd"),
    ({"units": {"type": "int", "min": 1, "max": 8, "values": [1, 2]}}, "tuner.search_space.units: type int does "
                                                                          "not take values"),
    ({"learning_rate": {"type": "float", "min": 0, "max": 1, "sampling": "log"}},
     "tuner.search_space.learning_rate: log sampling needs min > 0"),
    ({"layers": 2}, "tuner.search_space.layers: unknown key"),
])
def test_a_bad_search_space_is_a_config_error_naming_the_key(search_space, message):
    with pytest.raises(ConfigError) as raised:
        config.from_dict({"data": {"source": "x.csv", "label": "y"}, "tuner": {"search_space": search_space}})
    assert message in str(raised.value)
