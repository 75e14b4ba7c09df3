"""A tiny Keras Tuner search the tune tests share: its space and budget, Keras Tuner's own record
of its trials, and a callback that kills it mid-trial."""
from __future__ import annotations

import json
from pathlib import Path

import keras

from components.tune.config import TunerConfig

# Hyperband with max_epochs=2 and factor=2: two brackets, 5 trials (2 of 1 epoch, 1 continuing the
# better to epoch 2, 2 of 2 epochs), 7 epochs in all.
HYPERBAND_TRIALS = 5
TINY_SPACE = {
    "architecture": {"type": "fixed", "value": "mlp",
                     "branches": {"mlp": {"num_layers": 1, "units": {"type": "int", "min": 2, "max": 8}}}},
    "dropout": 0.0,
    "weight_decay": 0.0,
    "learning_rate": {"type": "float", "min": 1e-3, "max": 1e-1, "sampling": "log"},
    "optimizer": "adam",
}
DIVERGING = 1e12  # with SGD the loss is NaN within the first epoch


def tiny_config(**overrides) -> TunerConfig:
    return TunerConfig.model_validate({"max_epochs": 2, "factor": 2, "batch_size": 64, "search_space": TINY_SPACE,
                                       **overrides})


def keras_tuner_trials(work_dir: Path) -> dict[str, dict]:
    """The trials as Keras Tuner itself saved them (trial.json in each trial directory)."""
    return {saved["trial_id"]: saved for saved in
            (json.loads(path.read_text()) for path in Path(work_dir).glob("*/trial_*/trial.json"))}


def trial_runs(experiment_id: str) -> list:
    """The experiment's trial runs in MLflow (the step runs they nest under have no trial id)."""
    import mlflow

    from pipeline import tags

    runs = mlflow.MlflowClient().search_runs([experiment_id], max_results=1000)
    return [run for run in runs if tags.TRIAL_ID in run.data.tags]


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
