"""When training stops: after `training.early_stopping_patience` epochs in which the monitored metric
did not beat its best by at least `training.early_stopping_min_delta`, keeping the weights of that
best epoch (Keras' `EarlyStopping`, whose rule `improves` states over plain values).

The margin is absolute, in units that mean the same on every table: the loss is a cross-entropy in
nats per example or the squared error of the standardized label, accuracy and AUC are fractions. A
regression's `mae` and `rmse` are in the label's own units, so there the margin is scaled by the
label's standard deviation (`mse`: by its variance). A relative margin would not do: once a
classifier gets every eval row right its loss keeps shrinking by a steady fraction per epoch
(0.001 to 0.0006 over 90 epochs on the penguins), which a relative margin counts as improvement
forever.
"""
from __future__ import annotations

from components import objectives

# Regression metrics in the label's units (components.model.network), and the power of the label's
# standard deviation that puts them in standardized units.
_LABEL_UNITS = {"mae": 1, "rmse": 1, "mse": 2}


def min_delta(monitor: str, delta: float, label_std: float | None) -> float:
    """`training.early_stopping_min_delta` in the units of `monitor`, for a model whose label has
    this standard deviation (None: a classifier)."""
    power = _LABEL_UNITS.get(monitor.removeprefix("val_"))
    if power is None or label_std is None:
        return delta
    return delta * label_std ** power


def improves(value: float, best: float | None, direction: str, delta: float) -> bool:
    """Whether an epoch's `value` counts as an improvement on `best` (None: the first epoch)."""
    if best is None:
        return True
    return objectives.better(value - delta if direction == objectives.MAX else value + delta, best, direction)


def callback(monitor: str, patience: int, delta: float):
    """Keras' EarlyStopping with this rule, restoring the best epoch's weights when training ends."""
    import keras

    return keras.callbacks.EarlyStopping(monitor=monitor, mode=objectives.direction(monitor), patience=patience,
                                         min_delta=delta, restore_best_weights=True)
