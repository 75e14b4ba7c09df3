"""The problem a label poses, decided on plain column summaries: the documented auto rule, what a
configured type overrides, the order of classes, the positive class, what each kind of model logs."""
from __future__ import annotations

import pytest

from components import problem
from components.errors import ConfigError, DataError


def numeric(distinct, integral=True, variance=1.0, count=100, minimum=0.0):
    return {"kind": "numeric", "count": count, "distinct": distinct, "integral": integral, "variance": variance,
            "min": minimum}


TEXT = {"kind": "categorical", "count": 100, "distinct": 3, "values": [{"value": "Adelie", "count": 50}]}


@pytest.mark.parametrize("summary, decided", [
    (TEXT, problem.CLASSIFICATION),                              # text
    ({**TEXT, "distinct": 2}, problem.CLASSIFICATION),           # true/false are text in a CSV
    (numeric(2), problem.CLASSIFICATION),                        # a 0/1 flag
    (numeric(problem.MAX_AUTO_CLASSES), problem.CLASSIFICATION),  # ratings, class codes
    (numeric(problem.MAX_AUTO_CLASSES + 1), problem.REGRESSION),  # counts, prices in whole units
    (numeric(None), problem.REGRESSION),                         # more distinct values than were counted
    (numeric(5, integral=False), problem.REGRESSION),            # 0.5, 1.5, ...: a measurement
])
def test_auto_decides_from_the_train_splits_label(summary, decided):
    found = problem.decide(problem.AUTO, "y", summary)
    assert found.type == decided and found.reason.startswith("auto: ")


def test_a_configured_type_overrides_auto_but_a_text_label_cannot_be_a_regression():
    assert problem.decide(problem.CLASSIFICATION, "y", numeric(None, integral=False)).type == problem.CLASSIFICATION
    assert problem.decide(problem.REGRESSION, "y", numeric(3)).reason == "configured"
    with pytest.raises(DataError, match="the label 'y' holds text \\(e.g. 'Adelie'\\)"):
        problem.decide(problem.REGRESSION, "y", TEXT)


def test_nothing_to_learn_is_one_line():
    with pytest.raises(DataError, match="the label 'y' is constant on the train split \\(every row is 3\\)"):
        problem.check_learnable("y", problem.REGRESSION, numeric(1, variance=0.0, minimum=3.0))
    with pytest.raises(DataError, match="a classifier needs two or more"):
        problem.check_learnable("y", problem.CLASSIFICATION, TEXT, ("Adelie",))
    problem.check_learnable("y", problem.CLASSIFICATION, TEXT, ("Adelie", "Gentoo"))


def test_classes_are_ordered_by_value_when_they_are_numbers():
    assert problem.label_vocabulary(["10", "2", "1"]) == ("1", "2", "10")
    assert problem.label_vocabulary(["b", "a", "10"]) == ("10", "a", "b")


def test_the_positive_class_is_the_second_one_unless_configured():
    assert problem.positive_class(("no", "yes"), None, "y") == "yes"
    assert problem.positive_class(("no", "yes"), "no", "y") == "no"
    assert problem.positive_class(("a", "b", "c"), None, "y") is None
    with pytest.raises(DataError, match="'maybe' is not a class of the label 'y' \\(classes: no, yes\\)"):
        problem.positive_class(("no", "yes"), "maybe", "y")
    with pytest.raises(DataError, match="is for a binary label; 'y' has 3 classes"):
        problem.positive_class(("a", "b", "c"), "a", "y")


def test_each_kind_offers_its_own_metrics_as_objectives():
    assert "val_auc" in problem.logged_metrics("binary") and "val_pr_auc" in problem.logged_metrics("binary")
    assert "val_rmse" in problem.logged_metrics("regression")
    problem.check_metric("val_mae", "regression", "tuner.objective")
    with pytest.raises(ConfigError, match="tuner.objective: a regression model does not log 'val_accuracy'; "
                                          "it logs val_loss, val_mae, val_mse, val_rmse"):
        problem.check_metric("val_accuracy", "regression", "tuner.objective")
    assert problem.default_objective("regression") == "val_loss"
    assert problem.default_objective("binary") == problem.default_objective("multiclass") == "val_accuracy"
