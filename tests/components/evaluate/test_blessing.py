"""The blessing policy on plain values, in milliseconds: which thresholds apply (configured or the
documented defaults), skipped change thresholds on a first run, how far a metric misses, per-class
thresholds on TFMA-shaped metric dicts, and the words a person reads."""
from __future__ import annotations

import pytest

from components.errors import ConfigError
from components.evaluate import blessing
from components.evaluate.blessing import BASELINE, CANDIDATE, Threshold
from components.evaluate.config import EvaluationConfig


def by_kind(thresholds: list[Threshold]) -> dict[tuple[str, str], Threshold]:
    return {(threshold.kind, threshold.metric): threshold for threshold in thresholds}


def test_without_configured_thresholds_the_defaults_apply_and_say_why():
    applied, skipped, notes = blessing.thresholds(EvaluationConfig(), "multiclass", reference=0.44, has_baseline=True)
    value, change = by_kind(applied)[("value", "accuracy")], by_kind(applied)[("change", "accuracy")]
    # Strictly better than always answering the commonest class.
    assert value.above == 0.44 and value.lower > 0.44 and value.source == "default"
    assert change.absolute == -blessing.DEFAULT_MAX_ACCURACY_DROP and change.direction == "higher_is_better"
    assert skipped == [] and len(notes) == 2
    assert value.describe() == "> 0.44" and change.describe() == "change >= -0.01 vs baseline"


def test_a_first_run_skips_change_thresholds_and_value_thresholds_alone_decide():
    config = EvaluationConfig(value_thresholds={"accuracy": {"lower": 0.9}},
                              change_thresholds={"loss": {"absolute": 0.05}})
    applied, skipped, notes = blessing.thresholds(config, "multiclass", reference=0.5, has_baseline=False)
    assert [(t.kind, t.metric, t.source, t.lower) for t in applied] == [("value", "accuracy", "config", 0.9)]
    assert [(t.kind, t.metric, t.direction) for t in skipped] == [("change", "loss", "lower_is_better")]
    assert "first run" in skipped[0].reason and any("no baseline" in note for note in notes)


@pytest.mark.parametrize("threshold, value, baseline, missed", [
    (Threshold("accuracy", "value", "config", lower=0.9), 0.85, None, 0.05),
    (Threshold("accuracy", "value", "config", lower=0.9), 0.95, None, None),
    (Threshold("loss", "value", "config", upper=0.3), 0.5, None, 0.2),
    (Threshold("accuracy", "change", "config", direction="higher_is_better", absolute=-0.01), -0.03, 0.9, 0.02),
    (Threshold("loss", "change", "config", direction="lower_is_better", absolute=0.0), -0.1, 0.5, None),
    (Threshold("auc", "change", "config", direction="higher_is_better", relative=1.0), 0.72, 0.8, 0.1),
])
def test_shortfall_is_how_far_on_the_wrong_side(threshold, value, baseline, missed):
    found = blessing.shortfall(threshold, value, None, baseline)
    assert found == (pytest.approx(missed) if missed is not None else None)


def test_per_class_thresholds_hold_for_every_class_and_skip_undefined_values():
    recall = Threshold("recall", "value", "config", lower=0.8)
    sliced = {(): {CANDIDATE: {"recall": {"Adelie": 0.95, "Gentoo": 0.6, "Chinstrap": None}}},
              (("island", "Dream"),): {CANDIDATE: {"recall": {"Adelie": 0.1}}}}
    failures, notes = blessing.own_failures([recall], sliced, "multiclass", slices=("island",), on_slices=False)
    assert [(f["class"], f["slice"], f["value"]) for f in failures] == [("Gentoo", "overall", 0.6)]
    assert failures[0]["by_how_much"] == pytest.approx(0.2)
    assert notes == ["undefined, so not held to thresholds: recall of class Chinstrap on overall"]
    # With thresholds on slices, the Dream slice is held to it too.
    failures, _ = blessing.own_failures([recall], sliced, "multiclass", slices=("island",), on_slices=True)
    assert {f["slice"] for f in failures} == {"overall", "island=Dream"}


def test_a_regression_is_held_to_the_rmse_of_predicting_the_mean_and_to_its_baseline():
    applied, _, notes = blessing.thresholds(EvaluationConfig(), "regression", reference=12.5, has_baseline=True)
    value, change = by_kind(applied)[("value", "rmse")], by_kind(applied)[("change", "rmse")]
    assert value.below == 12.5 and value.describe() == "< 12.5" and value.source == "default"
    assert (change.direction, change.relative) == ("lower_is_better", blessing.DEFAULT_MAX_RMSE_RISE)
    # rmse is derived from TFMA's mse: checked here, on the overall slice.
    sliced = {(): {CANDIDATE: {"rmse": 12.6}, BASELINE: {"rmse": 11.0}, "change": {"rmse": 1.6}}}
    failures, _ = blessing.own_failures(applied, sliced, "regression", slices=(), on_slices=False)
    assert [(f["kind"], f["metric"]) for f in failures] == [("value", "rmse"), ("change", "rmse")]
    assert failures[0]["by_how_much"] == pytest.approx(0.1, abs=1e-9)
    assert failures[1]["by_how_much"] == pytest.approx(1.6 / 11.0 - 0.01)
    good = {(): {CANDIDATE: {"rmse": 10.0}, BASELINE: {"rmse": 10.05}, "change": {"rmse": -0.05}}}
    assert blessing.own_failures(applied, good, "regression", slices=(), on_slices=False) == ([], [])


def test_a_threshold_on_a_metric_the_model_does_not_have_is_a_config_error():
    config = EvaluationConfig(value_thresholds={"accuracy": {"lower": 0.9}})
    with pytest.raises(ConfigError, match="'accuracy' is not a metric of a regression model"):
        blessing.thresholds(config, "regression", reference=1.0, has_baseline=False)


def test_a_baseline_that_cannot_be_compared_is_a_failure_that_says_why():
    failure = blessing.incomparable("the model in production takes other inputs")
    assert blessing.reason({"failures": [failure]}) == "the model in production takes other inputs"


def test_a_change_threshold_per_class_compares_with_the_baseline():
    drop = Threshold("precision", "change", "config", direction="higher_is_better", absolute=-0.05)
    sliced = {(): {CANDIDATE: {"precision": {"a": 0.7, "b": 0.9}}, BASELINE: {"precision": {"a": 0.9, "b": 0.9}},
                   "change": {"precision": {"a": -0.2, "b": 0.0}}}}
    failures, _ = blessing.own_failures([drop], sliced, "multiclass", slices=(), on_slices=False)
    assert len(failures) == 1
    failure = failures[0]
    assert (failure["class"], failure["candidate_value"], failure["baseline_value"]) == ("a", 0.7, 0.9)
    assert blessing.describe(failure) == ("precision of class a change >= -0.05 vs baseline (got -0.2000), "
                                          "missed by 0.1500")


def test_the_reason_a_model_is_not_blessed_is_one_line():
    assert blessing.reason({"blessed": False, "failures": []}) == "the evaluation did not bless the model"
    failures = [{"metric": "accuracy", "slice": "overall", "kind": "value", "threshold": "> 0.44", "value": 0.4},
                {"metric": "accuracy", "slice": "island=Dream", "kind": "change", "threshold": "change >= -0.01",
                 "value": -0.2, "by_how_much": 0.19}]
    assert blessing.reason({"blessed": False, "failures": failures}) == (
        "accuracy > 0.44 (got 0.4000); accuracy change >= -0.01 on island=Dream (got -0.2000), missed by 0.1900")
