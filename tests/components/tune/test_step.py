"""The tune step: Keras Tuner searches on the penguins with tiny budgets, checked against Keras Tuner's
own saved trials and against what an in-memory observer heard (the MLflow observer is tested in
tests/pipeline/test_trial_tracking.py)."""
from __future__ import annotations

import pytest

from components import artifacts
from components.errors import ConfigError, TunepipeError
from components.model import hyperparameters as model, network
from components.tune import artifact, step as tune, trials
from components.tune.config import TunerConfig
from components.tune.observer import TrialObserver
from pipeline import config
from tests.tiny_search import (DIVERGING, HYPERBAND_TRIALS, TINY_SPACE, KillAtTraining, keras_tuner_trials,
                                tiny_config)

class Heard(TrialObserver):
    """Every event a search reports, in order, with made-up tracking ids."""

    def __init__(self):
        self.events: list[tuple] = []
        self.ended: dict[str, object] = {}

    def search_began(self, search_id):
        self.events.append(("search", search_id))

    def trial_began(self, trial):
        self.events.append(("began", trial.trial_id))
        return f"run-{trial.trial_id}"

    def epoch_ended(self, trial_id, epoch, logs):
        self.events.append(("epoch", trial_id, epoch, sorted(logs)))

    def trial_ended(self, trial):
        self.events.append(("ended", trial.trial_id, trial.status))
        self.ended[trial.trial_id] = trial

    def reconcile(self, finished):
        self.events.append(("reconcile", tuple(trial.trial_id for trial in finished)))
        return {}

    def interrupted(self):
        self.events.append(("interrupted",))

    def of(self, kind):
        return [event for event in self.events if event[0] == kind]


def test_every_hyperband_trial_is_reported_once_as_keras_tuner_ran_it(penguin_inputs, tmp_path):
    work_dir, out, heard = tmp_path / "work", tmp_path / "tuning", Heard()
    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tiny_config(), heard, work_dir=work_dir)

    saved = keras_tuner_trials(work_dir)
    assert len(saved) == HYPERBAND_TRIALS
    assert heard.events[0][0] == "search" and heard.events[-1] == ("reconcile", tuple(sorted(saved)))
    assert [event[1] for event in heard.of("began")] == sorted(saved)
    assert [event[1:] for event in heard.of("ended")] == [(trial_id, "completed") for trial_id in sorted(saved)]
    for trial_id, trial in saved.items():
        values = trial["hyperparameters"]["values"]
        ended = heard.ended[trial_id]
        assert ended.score == pytest.approx(trial["score"])
        assert ended.hyperparameters == model.model_values(values)
        assert (ended.facts["bracket"], ended.facts["round"]) == (values["tuner/bracket"], values["tuner/round"])
        assert ended.tracking_id == f"run-{trial_id}"
        # One epoch event per epoch this trial trained (Hyperband continues from initial_epoch).
        epochs = [event[2] for event in heard.of("epoch") if event[1] == trial_id]
        assert epochs == list(range(values["tuner/initial_epoch"], values["tuner/epochs"]))
        assert all("val_accuracy" in event[3] for event in heard.of("epoch"))
        assert ended.epochs == len(epochs) and ended.duration_s > 0

    table = {row["trial_id"]: row for row in trials.read_table(out / trials.TRIALS_TABLE)}
    assert set(table) == set(saved)
    for trial_id, row in table.items():
        assert float(row["score"]) == pytest.approx(saved[trial_id]["score"])
        assert row["tracking_id"] == f"run-{trial_id}"
        assert (out / artifact.TENSORBOARD_DIR / trial_id).is_dir()
    best_id = max(saved, key=lambda trial_id: saved[trial_id]["score"])
    assert result.best_score == pytest.approx(saved[best_id]["score"])
    assert result.best_hyperparameters == model.model_values(saved[best_id]["hyperparameters"]["values"])
    assert model.read_hyperparameters(out / artifact.BEST_HYPERPARAMETERS) == result.best_hyperparameters
    assert artifacts.read_manifest(out, artifacts.TUNING)["best_trial_id"] == result.best_trial_id


def test_a_killed_search_resumes_without_rerunning_or_reporting_finished_trials_again(penguin_inputs, tmp_path):
    work_dir, out, ledger = tmp_path / "work", tmp_path / "tuning", tmp_path / "trainings.txt"
    first = Heard()
    with pytest.raises(KeyboardInterrupt):
        tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tiny_config(), first, work_dir=work_dir,
                 callbacks=[KillAtTraining(ledger, kill_at=3)])
    assert not out.exists()
    assert [event[1:] for event in first.of("ended")] == [("0000", "completed"), ("0001", "completed")]
    assert first.events[-1] == ("interrupted",)

    # The rerun, e.g. the next pipeline run: the same search (its id), resumed.
    again = Heard()
    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tiny_config(), again,
                      work_dir=work_dir, callbacks=[KillAtTraining(ledger)])

    trainings = ledger.read_text().splitlines()
    # 3 trainings before the kill (the third cut short), then only the 3 trials that had not finished.
    assert len(trainings) == 3 + (HYPERBAND_TRIALS - 2)
    assert again.of("search") == first.of("search")
    assert again.of("reconcile")[0] == ("reconcile", ("0000", "0001"))
    assert "0000" not in [event[1] for event in again.of("began")]
    assert "0001" not in [event[1] for event in again.of("began")]
    assert len(again.of("began")) == HYPERBAND_TRIALS - 2
    assert len(result.trials) == HYPERBAND_TRIALS and all(t.status == "completed" for t in result.trials)


def test_a_diverging_trial_is_reported_failed_and_the_search_goes_on(penguin_inputs, tmp_path):
    space = {**TINY_SPACE, "optimizer": "sgd", "learning_rate": [0.05, DIVERGING]}
    tuner_config = tiny_config(algorithm="random", max_trials=4, max_consecutive_failed_trials=4, search_space=space)
    out, heard = tmp_path / "tuning", Heard()
    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, out, tuner_config, heard,
                      work_dir=tmp_path / "work")

    failed = [trial for trial in result.trials if trial.status == "failed"]
    completed = [trial for trial in result.trials if trial.status == "completed"]
    assert failed and completed
    assert all(trial.hyperparameters["learning_rate"] == DIVERGING for trial in failed)
    assert all(trial.hyperparameters["learning_rate"] != DIVERGING for trial in completed)
    assert all("diverged" in trial.error and trial.score is None for trial in failed)
    assert result.best_hyperparameters["learning_rate"] != DIVERGING
    assert {heard.ended[trial.trial_id].status for trial in failed} == {"failed"}
    rows = {row["trial_id"]: row for row in trials.read_table(out / trials.TRIALS_TABLE)}
    assert {trial_id for trial_id, row in rows.items() if row["status"] == "failed"} == {t.trial_id for t in failed}


def test_hyperparameters_that_cannot_build_a_model_make_an_invalid_trial(penguin_inputs, tmp_path, monkeypatch):
    build_model = network.build_model

    def build_or_refuse(hp, transform, space=model.DEFAULT_SEARCH_SPACE):
        # A model module that cannot build some configurations, e.g. a layer size its hardware refuses.
        built = build_model(hp, transform, space)
        if hp.get("mlp.units_0") > 5:
            raise ValueError(f"cannot build {hp.get('mlp.units_0')} units")
        return built

    monkeypatch.setattr(network, "build_model", build_or_refuse)
    tuner_config = tiny_config(algorithm="random", max_trials=6, max_consecutive_failed_trials=6)
    heard = Heard()
    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tuner_config, heard,
                      work_dir=tmp_path / "work")

    invalid = [trial for trial in result.trials if trial.hyperparameters["mlp.units_0"] > 5]
    assert invalid and len(invalid) < len(result.trials)
    for trial in result.trials:
        if trial in invalid:
            assert trial.status == "invalid" and trial.epochs == 0
            assert trial.error == f"ValueError: cannot build {trial.hyperparameters['mlp.units_0']} units"
            assert heard.ended[trial.trial_id].status == "invalid"
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
    tuner_config = TunerConfig.model_validate({"enabled": False, "search_space": {"architecture": {
        "type": "fixed", "value": "mlp", "branches": {"mlp": {"units": {"type": "int", "min": 4, "max": 64,
                                                                        "default": 16}, "num_layers": 1}}}}})
    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tuner_config)
    assert result.best_hyperparameters["mlp.units_0"] == 16 and result.best_hyperparameters["mlp.num_layers"] == 1
    best = model.read_hyperparameters(tmp_path / "tuning" / artifact.BEST_HYPERPARAMETERS)
    assert best == result.best_hyperparameters
    assert result.trials == () and trials.read_table(tmp_path / "tuning" / trials.TRIALS_TABLE) == []


SEARCH_SPACE_YAML = """
data: {source: penguins.csv, label: species}
tuner:
  search_space:
    architecture:
      type: choice
      values: [mlp, residual]
      branches:
        mlp:
          num_layers: {type: int, min: 1, max: 4, step: 1}
          units: {type: int, min: 16, max: 256, sampling: log, default: 32}
        residual:
          blocks: 3
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
    hp = model.for_values(None, space)
    declared = {item.name: item for item in hp.space}
    assert isinstance(declared["mlp.units_0"], keras_tuner.engine.hyperparameters.Int)
    units = declared["mlp.units_0"]
    assert (units.min_value, units.max_value, units.sampling) == (16, 256, "log")
    # Conditional: the MLP's units exist only for the MLP (and enough layers), the blocks for residual.
    assert [condition.name for condition in units.conditions] == ["architecture", "mlp.num_layers"]
    assert list(declared["residual.blocks"].conditions[0].values) == ["residual"]
    assert isinstance(declared["residual.blocks"], keras_tuner.engine.hyperparameters.Fixed)
    assert list(declared["architecture"].values) == ["mlp", "residual"]
    assert isinstance(declared["learning_rate"], keras_tuner.engine.hyperparameters.Float)
    assert declared["learning_rate"].sampling == "log"
    assert declared["dropout"].step == 0.25
    assert isinstance(declared["optimizer"], keras_tuner.engine.hyperparameters.Choice)
    assert list(declared["optimizer"].values) == ["adam", "sgd"]
    assert isinstance(declared["batch_norm"], keras_tuner.engine.hyperparameters.Boolean)
    assert isinstance(declared["activation"], keras_tuner.engine.hyperparameters.Fixed)
    assert model.default_hyperparameters(space) == {
        "architecture": "mlp", "mlp.num_layers": 1, "mlp.units_0": 32, "dropout": 0.0, "activation": "gelu",
        "batch_norm": True, "optimizer": "adam", "learning_rate": 0.0001, "weight_decay": 0.0}


@pytest.mark.parametrize("search_space, message", [
    ({"optimizer": "adagrad"}, "tuner.search_space.optimizer: values of optimizer must be a choice or fixed value "
                               "from: adam, adamw, nadam, rmsprop, sgd"),
    ({"dropout": {"type": "float", "min": 0, "max": 0.5, "values": [1, 2]}},
     "tuner.search_space.dropout: type float does not take values"),
    ({"architecture": {"type": "choice", "values": ["mlp", "transformer"]}},
     "values of architecture must be a choice or fixed value from: mlp, residual, wide_deep"),
    ({"architecture": {"type": "fixed", "value": "mlp", "branches": {"mlp": {"blocks": 2}}}},
     "the mlp branch does not take blocks (it takes: num_layers, units)"),
    ({"architecture": {"type": "fixed", "value": "mlp", "branches": {"residual": {"blocks": 2}}}},
     "branches name values the hyperparameter cannot take: residual"),
    ({"learning_rate": {"type": "float", "min": 0, "max": 1, "sampling": "log"}},
     "tuner.search_space.learning_rate: log sampling needs min > 0"),
    ({"layers": 2}, "tuner.search_space.layers: unknown key"),
])
def test_a_bad_search_space_is_a_config_error_naming_the_key(search_space, message):
    with pytest.raises(ConfigError) as raised:
        config.from_dict({"data": {"source": "x.csv", "label": "y"}, "tuner": {"search_space": search_space}})
    assert message in str(raised.value)


def test_a_grid_search_counts_its_points_first_and_max_trials_caps_it(penguin_inputs, tmp_path, capsys):
    space = {**TINY_SPACE, "architecture": {"type": "fixed", "value": "mlp", "branches": {"mlp": {
        "num_layers": 1, "units": [4, 8]}}}, "learning_rate": [0.01, 0.05]}
    result = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning",
                      tiny_config(algorithm="grid", max_trials=3, search_space=space), work_dir=tmp_path / "work")
    assert "tune: grid search over 4 points, capped at tuner.max_trials=3" in capsys.readouterr().out
    tried = {(trial.hyperparameters["mlp.units_0"], trial.hyperparameters["learning_rate"]) for trial in result.trials}
    assert len(result.trials) == len(tried) == 3 and tried <= {(4, 0.01), (4, 0.05), (8, 0.01), (8, 0.05)}
