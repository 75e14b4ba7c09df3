"""The metrics an evaluation computes and thresholds can name: each with the TFMA metric that
computes it, whether it is computed per class, and which way is better."""
from __future__ import annotations

from typing import Any

from components import objectives

# Metric name -> the TFMA metric computing it, and whether it is computed per class.
METRICS = {
    "example_count": ("ExampleCount", False),
    "accuracy": ("SparseCategoricalAccuracy", False),
    "loss": ("SparseCategoricalCrossentropy", False),
    "macro_auc": ("AUC", False),
    "precision": ("Precision", True),
    "recall": ("Recall", True),
    "auc": ("AUC", True),
    "calibration": ("Calibration", True),
}
PER_CLASS = tuple(name for name, (_, per_class) in METRICS.items() if per_class)
OVERALL_ORDER = ("example_count", "accuracy", "loss", "macro_auc")
# Which way is better, where the name alone does not say it (`components.objectives` says the rest);
# None: no natural direction (a threshold on it must say which way).
_DIRECTIONS = {"example_count": objectives.HIGHER_IS_BETTER, "calibration": None}


def directions() -> dict[str, str | None]:
    """The metrics thresholds can name, and which way is better (None: no natural direction)."""
    return {name: _DIRECTIONS.get(name, objectives.threshold_direction(name)) for name in METRICS}


def ordered(values: dict[str, Any]) -> dict[str, Any]:
    order = list(OVERALL_ORDER) + list(PER_CLASS)
    per_class_order = {name: index for index, name in enumerate(order)}
    return {name: values[name] for name in sorted(values, key=lambda name: per_class_order.get(name, 99))}
