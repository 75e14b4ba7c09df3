"""Which way a metric is better, decided in one place."""
import pytest

from components import objectives


@pytest.mark.parametrize("metric, way", [
    ("val_accuracy", "max"), ("accuracy", "max"), ("val_auc", "max"), ("val_pr_auc", "max"), ("recall", "max"),
    ("val_loss", "min"), ("loss", "min"), ("val_mae", "min"), ("val_rmse", "min"), ("mean_squared_error", "min"),
    ("val_binary_crossentropy", "min"),
])
def test_losses_and_errors_are_minimised_everything_else_maximised(metric, way):
    assert objectives.direction(metric) == way
    assert objectives.threshold_direction(metric) == ("lower_is_better" if way == "min" else "higher_is_better")


def test_better_follows_the_direction():
    assert objectives.better(0.9, 0.8, "max") and objectives.better(0.1, 0.2, "min")
    assert not objectives.better(0.8, 0.8, "max")
