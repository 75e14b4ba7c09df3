"""The blessing policy: which thresholds apply (configured, or the documented defaults), and how a
failure is measured and described. Plain functions over plain values: TFMA computes the metrics and
checks the thresholds on its own metrics (`components.evaluate.tfma_runner`); the thresholds on
per-class and derived metrics (`components.evaluate.metrics`), and every word a person reads about
the verdict, are decided here.

Defaults, when a kind of threshold is not configured (the blessing says so: `defaulted`, and each
threshold's `source`):

- value, classification: accuracy strictly above the share of the most frequent class in the
  evaluated split. That is what a model scores by always answering the commonest class: a model
  that does no better has learnt nothing, whatever the data (a fixed bar such as 0.5 is trivial
  for a 95/5 problem and unreachable for a hard 20-class one).
- value, regression: RMSE strictly below the standard deviation of the label on the evaluated
  split, which is the RMSE of always predicting the label's mean: the regression twin of the above.
- change, classification, with a baseline: accuracy not lower than the baseline's by more than
  0.01 (`DEFAULT_MAX_ACCURACY_DROP`), so noise on a small split does not block every retrain but
  a real regression does.
- change, regression, with a baseline: RMSE not above the baseline's by more than 1%
  (`DEFAULT_MAX_RMSE_RISE`, relative).

With no baseline (the first run) change thresholds are not applied: value thresholds alone decide,
and the blessing lists the change thresholds as skipped with the reason. A baseline that takes
other inputs or solves another problem than the candidate cannot be compared at all: the candidate
is not blessed over it (`incomparable`), and only `--force-push` puts it in production.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from components.errors import ConfigError
from components.evaluate import metrics as metric_table
from components.evaluate.config import EvaluationConfig
from components.problem import REGRESSION

# The verdict file of an evaluation artifact.
FILE = "blessing.json"

CANDIDATE = "candidate"
BASELINE = "baseline"
OVERALL = "overall"
DEFAULT_MAX_ACCURACY_DROP = 0.01
DEFAULT_MAX_RMSE_RISE = 0.01
INCOMPARABLE = "incomparable"  # the kind of a failure that is not a threshold: no fair comparison


@dataclass(frozen=True)
class Threshold:
    metric: str
    kind: str  # "value" or "change"
    source: str  # "config" or "default"
    lower: float | None = None
    upper: float | None = None
    direction: str | None = None  # change: higher_is_better / lower_is_better
    absolute: float | None = None
    relative: float | None = None
    above: float | None = None  # value: strictly above this (TFMA's bound is the next float up)
    below: float | None = None  # value: strictly below this
    reason: str | None = None  # why a default has the value it has

    def describe(self) -> str:
        if self.kind == "value":
            parts = []
            if self.above is not None:
                parts.append(f"> {self.above:.6g}")
            elif self.lower is not None:
                parts.append(f">= {self.lower:.6g}")
            if self.below is not None:
                parts.append(f"< {self.below:.6g}")
            elif self.upper is not None:
                parts.append(f"<= {self.upper:.6g}")
            return " and ".join(parts)
        comparison = ">=" if self.direction == "higher_is_better" else "<="
        parts = []
        if self.absolute is not None:
            parts.append(f"change {comparison} {self.absolute:+.6g} vs baseline")
        if self.relative is not None:
            parts.append(f"relative change {comparison} {self.relative:+.6g} vs baseline")
        return " and ".join(parts)

    def to_json(self) -> dict[str, Any]:
        fields = {key: value for key, value in self.__dict__.items() if value is not None}
        return {**fields, "threshold": self.describe()}


def thresholds(config: EvaluationConfig, kind: str, reference: float, has_baseline: bool
               ) -> tuple[list[Threshold], list[Threshold], list[str]]:
    """The thresholds to apply, those skipped, and notes saying which defaults were used and why.

    `reference` is what a model that learnt nothing scores: for a classifier the share of the most
    frequent class, for a regression the standard deviation of the label on the evaluated split.
    """
    known = metric_table.directions(kind)
    named = sorted(set(config.value_thresholds) | set(config.change_thresholds))
    unknown = [metric for metric in named if metric not in known]
    if unknown:
        raise ConfigError(f"evaluation thresholds: {', '.join(repr(metric) for metric in unknown)} "
                          f"{'is' if len(unknown) == 1 else 'are'} not a metric of a {kind} model "
                          f"(its metrics: {', '.join(known)})")
    applied: list[Threshold] = []
    skipped: list[Threshold] = []
    notes: list[str] = []
    if config.value_thresholds:
        applied += [Threshold(metric, "value", "config", lower=bounds.get("lower"), upper=bounds.get("upper"))
                    for metric, bounds in config.value_thresholds.items()]
    elif kind == REGRESSION:
        reason = "the standard deviation of the label: the RMSE of always predicting its mean"
        applied.append(Threshold("rmse", "value", "default", upper=math.nextafter(reference, -math.inf),
                                 below=reference, reason=reason))
        notes.append(f"no value thresholds configured: default rmse < {reference:.6g}, {reason}")
    else:
        # Strictly above: a model that always answers the commonest class scores exactly the share.
        reason = "the share of the most frequent class: what always answering it scores"
        applied.append(Threshold("accuracy", "value", "default", lower=math.nextafter(reference, math.inf),
                                 above=reference, reason=reason))
        notes.append(f"no value thresholds configured: default accuracy > {reference:.4f}, {reason}")
    if config.change_thresholds:
        change = [Threshold(metric, "change", "config", direction=str(spec.get("direction") or known[metric]),
                            absolute=float_or_none(spec.get("absolute")),
                            relative=float_or_none(spec.get("relative")))
                  for metric, spec in config.change_thresholds.items()]
    elif kind == REGRESSION:
        change = [Threshold("rmse", "change", "default", direction="lower_is_better", relative=DEFAULT_MAX_RMSE_RISE,
                            reason=f"rmse must not rise by more than {DEFAULT_MAX_RMSE_RISE:.0%} over the baseline's")]
    else:
        change = [Threshold("accuracy", "change", "default", direction="higher_is_better",
                            absolute=-DEFAULT_MAX_ACCURACY_DROP,
                            reason=f"accuracy must not drop by more than {DEFAULT_MAX_ACCURACY_DROP} vs the baseline")]
    if has_baseline:
        applied += change
        if not config.change_thresholds:
            notes.append(f"no change thresholds configured: default {change[0].reason}")
    else:
        skipped += [Threshold(**{**t.__dict__, "reason": "no baseline model (first run): change thresholds skipped"})
                    for t in change]
        notes.append("no baseline model: change thresholds skipped, value thresholds alone decide")
    return applied, skipped, notes


def float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def slice_name(slice_key: tuple) -> str:
    if not slice_key:
        return OVERALL
    return ", ".join(f"{column}={plain(value)}" for column, value in slice_key)


def plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def failure(threshold: Threshold | None, metric: str, class_name: str | None, slice_key: tuple, kind: str,
             value: float | None, by_model: dict[str, dict[str, Any]], message: str = "") -> dict[str, Any]:
    def lookup(role: str) -> float | None:
        found = by_model.get(role, {}).get(metric)
        return found.get(class_name) if isinstance(found, dict) else found

    candidate, baseline = lookup(CANDIDATE), lookup(BASELINE)
    record: dict[str, Any] = {
        "metric": metric, "class": class_name, "slice": slice_name(slice_key), "kind": kind,
        "threshold": threshold.describe() if threshold else "",
        "value": value, "candidate_value": candidate, "baseline_value": baseline,
        "by_how_much": shortfall(threshold, value, candidate, baseline) if threshold else None,
    }
    if message.strip():
        record["message"] = " ".join(message.split())
    return record


def own_failures(applied: list[Threshold], sliced: dict[tuple, dict[str, dict[str, Any]]], kind: str,
                 slices: tuple[str, ...], on_slices: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """The thresholds checked here on TFMA's numbers rather than by TFMA's validator: per-class ones
    (TFMA 0.52 keys a threshold without the metric's own top_k, so it cannot find the top-1
    precision and recall it computed) and derived ones (rmse, r2). A value that is undefined (a class
    absent from a slice, or never predicted; r2 off the overall slice) is not checked, and a note
    says so."""
    failures, undefined = [], []
    checked = set(metric_table.per_class(kind)) | set(metric_table.derived(kind))
    in_scope = [key for key in sliced if not key or (on_slices and len(key) == 1 and key[0][0] in slices)]
    for threshold in (t for t in applied if t.metric in checked):
        role = CANDIDATE if threshold.kind == "value" else "change"
        for slice_key in sorted(in_scope, key=lambda key: [(c, str(v)) for c, v in key]):
            by_model = sliced[slice_key]
            found = by_model.get(role, {}).get(threshold.metric)
            values = found if isinstance(found, dict) else {None: found}
            for class_name, value in values.items():
                if value is None:
                    of_class = f" of class {class_name}" if class_name is not None else ""
                    undefined.append(f"{threshold.metric}{of_class} on {slice_name(slice_key)}")
                    continue
                candidate, baseline = (_value(by_model, role_name, threshold.metric, class_name)
                                       for role_name in (CANDIDATE, BASELINE))
                if shortfall(threshold, value, candidate, baseline) is not None:
                    failures.append(failure(threshold, threshold.metric, class_name, slice_key, threshold.kind,
                                            value, by_model))
    notes = [f"undefined, so not held to thresholds: {', '.join(dict.fromkeys(undefined))}"] if undefined else []
    return failures, notes


def _value(by_model: dict[str, dict[str, Any]], role: str, metric: str, class_name: str | None) -> float | None:
    found = by_model.get(role, {}).get(metric)
    return found.get(class_name) if isinstance(found, dict) else found


def incomparable(reason: str) -> dict[str, Any]:
    """The failure of a candidate that cannot be fairly compared with the model in production."""
    return {"metric": "baseline", "class": None, "slice": OVERALL, "kind": INCOMPARABLE, "threshold": "",
            "value": None, "message": reason}


def shortfall(threshold: Threshold, value: float | None, candidate: float | None,
               baseline: float | None) -> float | None:
    """How far the metric is on the wrong side of the threshold (a positive number), or None if unknown."""
    if value is None:
        return None
    misses = []
    if threshold.kind == "value":
        if threshold.lower is not None and value < threshold.lower:
            misses.append(threshold.lower - value)
        if threshold.upper is not None and value > threshold.upper:
            misses.append(value - threshold.upper)
    else:
        higher = threshold.direction == "higher_is_better"
        if threshold.absolute is not None:
            misses.append((threshold.absolute - value) if higher else (value - threshold.absolute))
        if threshold.relative is not None and baseline:
            ratio = value / baseline
            misses.append((threshold.relative - ratio) if higher else (ratio - threshold.relative))
    missed = [miss for miss in misses if miss > 0]
    return float(max(missed)) if missed else None


def describe(failure: dict[str, Any]) -> str:
    """One failed threshold, as a person reads it: what, which class and slice, the value, the miss."""
    if failure.get("kind") == INCOMPARABLE:
        return failure["message"]
    metric = failure["metric"] + (f" of class {failure['class']}" if failure.get("class") else "")
    where = "" if failure["slice"] == OVERALL else f" on {failure['slice']}"
    got = "" if failure.get("value") is None else f" (got {failure['value']:+.4f})" if failure["kind"] == "change" \
        else f" (got {failure['value']:.4f})"
    by = "" if failure.get("by_how_much") is None else f", missed by {failure['by_how_much']:.4f}"
    return f"{metric} {failure['threshold']}{where}{got}{by}"


def reason(blessing: dict[str, Any]) -> str:
    """Why a blessing says no, in one line."""
    failures = blessing.get("failures") or []
    if not failures:
        return "the evaluation did not bless the model"
    return "; ".join(describe(failure) for failure in failures)
