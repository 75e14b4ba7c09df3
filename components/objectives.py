"""Which way a metric is better: the one place that decides it.

Keras names losses and errors `loss`, `val_loss`, `mae`, `val_mean_squared_error`, ...: those are
minimised; everything else a model logs (accuracy, AUC, precision, recall) is maximised. The tuner's
objective, early stopping's monitor, the trials table's ranking and the thresholds' default
directions all ask here.
"""
from __future__ import annotations

MAX = "max"
MIN = "min"
# Keras Tuner and Keras write these into metric names; TFMA's threshold directions use the long form.
HIGHER_IS_BETTER = "higher_is_better"
LOWER_IS_BETTER = "lower_is_better"

_MINIMISED_SUFFIXES = ("loss", "error", "mae", "mse", "rmse", "mape", "msle", "crossentropy", "hinge",
                       "huber", "logcosh")


def direction(metric: str) -> str:
    """`min` for a loss or an error, `max` for anything else."""
    name = metric.lower().removeprefix("val_")
    return MIN if name.endswith(_MINIMISED_SUFFIXES) else MAX


def threshold_direction(metric: str) -> str:
    """The same decision, in the words of TFMA's change thresholds."""
    return LOWER_IS_BETTER if direction(metric) == MIN else HIGHER_IS_BETTER


def better(score: float, than: float, way: str) -> bool:
    """Whether `score` beats `than` when the metric is better `way` (max or min)."""
    return score > than if way == MAX else score < than
