"""The problem a table poses: classification or regression, and what follows from it (the metrics a
model logs, the default objective).

`data.problem_type: auto` decides from the label column of the train split:

- a label that is text (or true/false) is a classification label;
- a numeric label is a classification label when every value is a whole number and there are at
  most `MAX_AUTO_CLASSES` distinct ones (0/1 flags, ratings 1..5, class codes);
- any other numeric label is a regression target.

The decision is recorded (in the schema, the run's output and lineage) with the reason, and
`data.problem_type: classification | regression` overrides it. A classification label with two
classes is binary: its positive class is the second value of the sorted vocabulary unless
`data.positive_class` names one.
"""
from __future__ import annotations

from dataclasses import dataclass

from components.errors import ConfigError, DataError

AUTO = "auto"
CLASSIFICATION = "classification"
REGRESSION = "regression"
MAX_AUTO_CLASSES = 10

# What the model logs (Keras metric names) by kind of problem; validation metrics add `val_`.
_LOGGED = {
    "multiclass": ("loss", "accuracy"),
    "binary": ("loss", "accuracy", "auc", "pr_auc"),
    REGRESSION: ("loss", "mae", "mse", "rmse"),
}
ALL_METRICS = tuple(dict.fromkeys(name for names in _LOGGED.values() for name in names))


@dataclass(frozen=True)
class Problem:
    """The decided problem: its type, why, and for classification the number of classes."""

    type: str  # CLASSIFICATION or REGRESSION
    reason: str
    classes: int | None = None

    @property
    def binary(self) -> bool:
        return self.type == CLASSIFICATION and self.classes == 2

    @property
    def kind(self) -> str:
        """`binary`, `multiclass` or `regression`: what the output head and the metrics depend on."""
        return REGRESSION if self.type == REGRESSION else "binary" if self.binary else "multiclass"


def logged_metrics(kind: str) -> tuple[str, ...]:
    """Every metric name a model of this kind logs while training: train and validation."""
    names = _LOGGED[kind]
    return tuple(f"val_{name}" for name in names) + names


def logged_everywhere() -> tuple[str, ...]:
    """Every metric some kind of model logs: what a config may name before the problem is known."""
    return tuple(dict.fromkeys(name for kind in _LOGGED for name in logged_metrics(kind)))


def check_metric(metric: str, kind: str, key: str) -> None:
    """A ConfigError naming the config `key` when `metric` is not one a model of this kind logs."""
    offered = logged_metrics(kind)
    if metric not in offered:
        raise ConfigError(f"{key}: a {kind} model does not log {metric!r}; it logs {', '.join(offered)}")


def label_vocabulary(values: list[str]) -> tuple[str, ...]:
    """The classes in the order the model's outputs use: by value when every class is a number
    (2 before 10), else alphabetically; the same order on every run."""
    def number(value: str) -> float | None:
        try:
            return float(value)
        except ValueError:
            return None

    if all(number(value) is not None for value in values):
        return tuple(sorted(values, key=lambda value: (number(value), value)))
    return tuple(sorted(values))


def positive_class(vocabulary: tuple[str, ...], configured: str | None, label: str) -> str | None:
    """The class a binary model's AUC and PR-AUC are about: `configured`, else the second class."""
    if len(vocabulary) != 2:
        if configured is not None:
            raise DataError(f"data.positive_class {configured!r} is for a binary label; {label!r} has "
                            f"{len(vocabulary)} classes")
        return None
    if configured is None:
        return vocabulary[1]
    if configured not in vocabulary:
        raise DataError(f"data.positive_class {configured!r} is not a class of the label {label!r} "
                        f"(classes: {', '.join(vocabulary)})")
    return configured


def default_objective(kind: str) -> str:
    """The tuner's objective when none is configured: accuracy for a classifier, the loss for a
    regression (`kind` is a problem type or kind)."""
    return "val_loss" if kind == REGRESSION else "val_accuracy"


def decide(configured: str, label: str, summary: dict) -> Problem:
    """The problem for a label whose train-split column summary (`components.analyzers`) is `summary`.

    Raises DataError for a label that cannot be what was asked: a text label for regression. (A
    label with one class or one value is refused where the label is analyzed, in preprocess:
    `check_learnable`.)
    """
    numeric = summary["kind"] == "numeric"
    distinct = summary.get("distinct")
    integral = summary.get("integral", False)
    if configured == REGRESSION:
        if not numeric:
            raise DataError(f"data.problem_type is regression, but the label {label!r} holds text "
                            f"(e.g. {_example(summary)!r}): a regression label must be a number")
        return Problem(REGRESSION, "configured")
    if configured == CLASSIFICATION:
        return Problem(CLASSIFICATION, "configured", distinct)
    if not numeric:
        return Problem(CLASSIFICATION, "auto: the label is text", distinct)
    if integral and distinct is not None and distinct <= MAX_AUTO_CLASSES:
        return Problem(CLASSIFICATION, f"auto: {distinct} distinct whole numbers (at most {MAX_AUTO_CLASSES} "
                                       f"make classes)", distinct)
    many = f"more than {MAX_AUTO_CLASSES}" if distinct is None else str(distinct)
    why = f"auto: {many} distinct values" if integral else "auto: numbers with fractions"
    return Problem(REGRESSION, why)


def check_learnable(label: str, problem_type: str, summary: dict, classes: tuple[str, ...] = ()) -> None:
    """A DataError when the train split's label leaves nothing to learn: one class, or one value."""
    if problem_type == REGRESSION:
        if summary.get("count") and not summary.get("variance"):
            raise DataError(f"the label {label!r} is constant on the train split (every row is {summary['min']:g}): "
                            f"a regression has nothing to learn")
    elif len(classes) < 2:
        raise DataError(f"the train split has {len(classes)} label value(s) {list(classes)}: "
                        f"a classifier needs two or more")


def _example(summary: dict) -> str:
    values = summary.get("values") or [{"value": "?"}]
    return str(values[0]["value"])
