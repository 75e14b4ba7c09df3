"""When training stops (`components.train.early_stopping`): the rule over plain values, checked
against Keras' own EarlyStopping fed the same values, and the margin in the monitored metric's units."""
from __future__ import annotations

import math

import keras
import pytest

from components.train import early_stopping
from components.train.config import TrainingConfig

# The penguins' val_loss over 100 epochs of the default training (`tunepipe run`, 2026-12-01): every
# eval row right from epoch 2 on, the loss creeping from 0.004 to 0.0015 over the last 75 epochs.
PENGUINS_VAL_LOSS = [
    0.27230, 0.04322, 0.01863, 0.01276, 0.00892, 0.00762, 0.00729, 0.00855, 0.00696, 0.00633, 0.00617, 0.00607,
    0.00627, 0.00573, 0.00555, 0.00542, 0.00499, 0.00574, 0.00610, 0.00473, 0.00447, 0.00469, 0.00447, 0.00477,
    0.00422, 0.00387, 0.00444, 0.00511, 0.00369, 0.00363, 0.00375, 0.00473, 0.00399, 0.00339, 0.00359, 0.00392,
    0.00393, 0.00316, 0.00327, 0.00314, 0.00299, 0.00299, 0.00328, 0.00300, 0.00289, 0.00307, 0.00295, 0.00273,
    0.00264, 0.00263, 0.00290, 0.00288, 0.00256, 0.00253, 0.00262, 0.00253, 0.00253, 0.00237, 0.00237, 0.00235,
    0.00253, 0.00225, 0.00226, 0.00221, 0.00229, 0.00222, 0.00210, 0.00209, 0.00213, 0.00223, 0.00204, 0.00201,
    0.00201, 0.00201, 0.00200, 0.00198, 0.00190, 0.00186, 0.00184, 0.00183, 0.00185, 0.00181, 0.00178, 0.00175,
    0.00173, 0.00171, 0.00178, 0.00174, 0.00171, 0.00172, 0.00164, 0.00162, 0.00162, 0.00158, 0.00158, 0.00154,
    0.00153, 0.00154, 0.00151, 0.00149,
]
ACCURACY = [0.6, 0.8, 0.85, 0.8505, 0.86, 0.86, 0.8602, 0.859, 0.8601, 0.86, 0.8599, 0.86]


def keras_stops(values: list[float], monitor: str, patience: int, delta: float) -> tuple[int, int]:
    """Epochs trained and the 1-based best epoch, as Keras' EarlyStopping decides them over `values`."""
    callback = early_stopping.callback(monitor, patience, delta)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.stop_training = False  # as fit() starts it
    callback.set_model(model)
    callback.on_train_begin()
    trained = 0
    for epoch, value in enumerate(values):
        trained += 1
        callback.on_epoch_end(epoch, {monitor: value})
        if model.stop_training:
            break
    return trained, callback.best_epoch + 1


def rule_stops(values: list[float], direction: str, patience: int, delta: float) -> tuple[int, int]:
    """The same by `improves`: stop after `patience` epochs that do not improve on the best."""
    best, best_epoch = None, 0
    for epoch, value in enumerate(values, start=1):
        if early_stopping.improves(value, best, direction, delta):
            best, best_epoch = value, epoch
        elif epoch - best_epoch >= patience:
            return epoch, best_epoch
    return len(values), best_epoch


@pytest.mark.parametrize("values, monitor, direction, patience, delta", [
    (PENGUINS_VAL_LOSS, "val_loss", "min", 10, 0.0),
    (PENGUINS_VAL_LOSS, "val_loss", "min", 10, 0.001),
    (PENGUINS_VAL_LOSS, "val_loss", "min", 3, 0.0001),
    (ACCURACY, "val_accuracy", "max", 3, 0.0),
    (ACCURACY, "val_accuracy", "max", 3, 0.001),
    (ACCURACY, "val_accuracy", "max", 2, 0.01),
])
def test_the_rule_is_keras_early_stopping(values, monitor, direction, patience, delta):
    assert rule_stops(values, direction, patience, delta) == keras_stops(values, monitor, patience, delta)


def test_the_penguins_loss_stops_creeping_with_the_default_margin_and_trains_on_without_one():
    patience, delta = TrainingConfig().early_stopping_patience, TrainingConfig().early_stopping_min_delta
    assert keras_stops(PENGUINS_VAL_LOSS, "val_loss", patience, 0.0) == (100, 100)
    assert keras_stops(PENGUINS_VAL_LOSS, "val_loss", patience, delta) == (36, 26)
    # A relative margin would not stop it: even 5% better than the best comes every few epochs.
    best, best_epoch = PENGUINS_VAL_LOSS[0], 1
    for epoch, loss in enumerate(PENGUINS_VAL_LOSS, start=1):
        assert epoch - best_epoch <= patience
        if loss < best * 0.95:
            best, best_epoch = loss, epoch


def test_the_margin_is_in_standardized_units_for_metrics_in_the_labels_units():
    assert early_stopping.min_delta("val_loss", 0.001, None) == 0.001
    assert early_stopping.min_delta("val_accuracy", 0.001, None) == 0.001
    assert early_stopping.min_delta("val_loss", 0.001, 50.0) == 0.001  # the loss is on the standardized label
    assert early_stopping.min_delta("val_mae", 0.001, 50.0) == pytest.approx(0.05)
    assert early_stopping.min_delta("rmse", 0.001, 50.0) == pytest.approx(0.05)
    assert early_stopping.min_delta("val_mse", 0.001, 50.0) == pytest.approx(2.5)
    assert math.isclose(early_stopping.min_delta("val_mae", 0.0, 50.0), 0.0)
