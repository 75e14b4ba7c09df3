"""The metrics an evaluation computes, by kind of problem, and which of them thresholds can name.

Each metric is computed by TFMA (its metric class, overall or per class), or derived here from what
TFMA computed (`rmse` from `mse`; `r2` from `mse` and the label's variance on the evaluated split),
and is better one way. Thresholds on a TFMA metric are checked by TFMA's validator; thresholds on a
per-class or derived metric by `components.evaluate.blessing`.

| kind        | metrics                                                                                   |
| ----------- | ----------------------------------------------------------------------------------------- |
| multiclass  | example_count, accuracy, loss, macro_auc; per class precision, recall, auc, calibration    |
| binary      | the multiclass ones, and roc_auc and pr_auc of the positive class                         |
| regression  | example_count, mse, rmse, mae, r2, mean_label, mean_prediction, calibration, squared_pearson |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components import objectives
from components.problem import REGRESSION


@dataclass(frozen=True)
class Metric:
    name: str
    tfma: str | None  # the TFMA metric class; None: derived from TFMA's numbers
    per_class: bool = False
    direction: str | None = "auto"  # "auto": from the name (components.objectives); None: no natural one


_CLASSIFIER = (
    Metric("example_count", "ExampleCount", direction=objectives.HIGHER_IS_BETTER),
    Metric("accuracy", "SparseCategoricalAccuracy"),
    Metric("loss", "SparseCategoricalCrossentropy"),
    Metric("macro_auc", "AUC"),
    Metric("precision", "Precision", per_class=True),
    Metric("recall", "Recall", per_class=True),
    Metric("auc", "AUC", per_class=True),
    Metric("calibration", "Calibration", per_class=True, direction=None),
)
_BINARY = _CLASSIFIER + (Metric("roc_auc", "AUC"), Metric("pr_auc", "AUCPrecisionRecall"))
_REGRESSION = (
    Metric("example_count", "ExampleCount", direction=objectives.HIGHER_IS_BETTER),
    Metric("mse", "MeanSquaredError"),
    Metric("rmse", None),
    Metric("mae", "MeanAbsoluteError"),
    Metric("r2", None, direction=objectives.HIGHER_IS_BETTER),
    Metric("mean_label", "MeanLabel", direction=None),
    Metric("mean_prediction", "MeanPrediction", direction=None),
    Metric("calibration", "Calibration", direction=None),
    Metric("squared_pearson", "SquaredPearsonCorrelation", direction=objectives.HIGHER_IS_BETTER),
)
BY_KIND: dict[str, dict[str, Metric]] = {kind: {metric.name: metric for metric in table} for kind, table in (
    ("multiclass", _CLASSIFIER), ("binary", _BINARY), (REGRESSION, _REGRESSION))}
# The overall metrics in the order reports show them.
OVERALL_ORDER = {"multiclass": ("example_count", "accuracy", "loss", "macro_auc"),
                 "binary": ("example_count", "accuracy", "loss", "roc_auc", "pr_auc", "macro_auc"),
                 REGRESSION: ("example_count", "rmse", "mae", "mse", "r2", "mean_label", "mean_prediction",
                              "calibration", "squared_pearson")}


def per_class(kind: str) -> tuple[str, ...]:
    return tuple(name for name, metric in BY_KIND[kind].items() if metric.per_class)


def derived(kind: str) -> tuple[str, ...]:
    return tuple(name for name, metric in BY_KIND[kind].items() if metric.tfma is None)


def direction(metric: Metric) -> str | None:
    return objectives.threshold_direction(metric.name) if metric.direction == "auto" else metric.direction


def directions(kind: str | None = None) -> dict[str, str | None]:
    """The metrics thresholds can name (for `kind`, or for any kind), and which way is better."""
    kinds = [kind] if kind else list(BY_KIND)
    return {name: direction(metric) for each in kinds for name, metric in BY_KIND[each].items()}


def ordered(values: dict[str, Any], kind: str) -> dict[str, Any]:
    order = {name: index for index, name in enumerate([*OVERALL_ORDER[kind], *BY_KIND[kind]])}
    return {name: values[name] for name in sorted(values, key=lambda name: order.get(name, len(order)))}
