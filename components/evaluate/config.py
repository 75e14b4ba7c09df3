"""The `evaluation` config section: TFMA evaluation and the thresholds that decide the blessing,
owned by the evaluate step."""
from __future__ import annotations

import difflib

from pydantic import field_validator

from components.evaluate.metrics import directions
from components.section import Section


class EvaluationConfig(Section):
    """Model evaluation with TFMA and the thresholds that decide the blessing. Owned by the evaluate step.

    Thresholds are keyed by metric, those of the problem's kind (`components.evaluate.metrics`): a
    classifier's accuracy, loss, macro_auc, example_count, roc_auc and pr_auc (binary), and the
    per-class precision, recall, auc and calibration (a threshold on those holds for every class); a
    regression's rmse, mae, mse, r2, mean_label, mean_prediction, calibration. A value threshold
    bounds the candidate's metric (`lower`, `upper`); a change threshold bounds candidate minus
    baseline (`absolute`) or that difference over the baseline (`relative`), in the metric's
    `direction` (the usual one when left out):
    {accuracy: {absolute: -0.01}} means "not worse than the baseline by more than 0.01". Without a
    baseline (the first run) change thresholds are skipped. Left empty, each kind has a default,
    documented in components/evaluate/blessing.py and reported in the blessing.
    """

    # Feature (or passthrough) columns to slice by, besides the overall slice.
    slices: tuple[str, ...] = ()
    # e.g. {accuracy: {lower: 0.9}} or {rmse: {upper: 50}}; the defaults when empty: evaluate/blessing.py.
    value_thresholds: dict[str, dict[str, float]] = {}
    # e.g. {accuracy: {direction: higher_is_better, absolute: -0.01}}: not worse than the baseline by more.
    change_thresholds: dict[str, dict[str, float | str]] = {}
    # Thresholds hold on the overall slice; with this, on every slice of `slices` as well.
    thresholds_on_slices: bool = False

    @staticmethod
    def metric_directions() -> dict[str, str | None]:
        """The metrics thresholds can name, and which way is better (None: no natural direction)."""
        return directions()

    @field_validator("slices")
    @classmethod
    def _distinct_slices(cls, slices: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(slices)) != len(slices):
            raise ValueError("each column may be listed once")
        return slices

    @field_validator("value_thresholds")
    @classmethod
    def _value_thresholds(cls, thresholds: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for metric, bounds in thresholds.items():
            cls._known_metric(metric)
            stray = sorted(set(bounds) - {"lower", "upper"})
            if stray:
                raise ValueError(f"{metric}: unknown key {', '.join(stray)} (allowed: lower, upper)")
            if not bounds:
                raise ValueError(f"{metric}: give lower, upper or both")
            if "lower" in bounds and "upper" in bounds and bounds["lower"] > bounds["upper"]:
                raise ValueError(f"{metric}: lower ({bounds['lower']:g}) is above upper ({bounds['upper']:g})")
        return thresholds

    @field_validator("change_thresholds")
    @classmethod
    def _change_thresholds(cls, thresholds: dict[str, dict[str, float | str]]) -> dict[str, dict[str, float | str]]:
        directions = ("higher_is_better", "lower_is_better")
        for metric, spec in thresholds.items():
            cls._known_metric(metric)
            stray = sorted(set(spec) - {"direction", "absolute", "relative"})
            if stray:
                raise ValueError(f"{metric}: unknown key {', '.join(stray)} (allowed: direction, absolute, relative)")
            if "absolute" not in spec and "relative" not in spec:
                raise ValueError(f"{metric}: give absolute, relative or both")
            for key in ("absolute", "relative"):
                if key in spec and (isinstance(spec[key], (str, bool)) or not -float("inf") < spec[key] < float("inf")):
                    raise ValueError(f"{metric}: {key} must be a number (got {spec[key]!r})")
            direction = spec.get("direction")
            if direction is not None and direction not in directions:
                raise ValueError(f"{metric}: direction must be one of {', '.join(directions)} (got {direction!r})")
            if direction is None and cls.metric_directions()[metric] is None:
                raise ValueError(f"{metric}: has no natural direction; set direction ({', '.join(directions)})")
        return thresholds

    @classmethod
    def _known_metric(cls, metric: str) -> None:
        if metric not in cls.metric_directions():
            close = difflib.get_close_matches(metric, list(cls.metric_directions()), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown metric {metric!r} ({hint}allowed: {', '.join(cls.metric_directions())})")

