"""The `training` config section as a config file gives it: its defaults and the one-line errors of
bad values."""
from __future__ import annotations

import pytest

from components.errors import ConfigError
from components.train.config import TrainingConfig
from pipeline import config


def loaded(training: dict) -> TrainingConfig:
    return config.from_dict({"data": {"source": "x.csv", "label": "y"}, "training": training}).training


def test_early_stopping_needs_a_small_improvement_by_default():
    assert loaded({}).early_stopping_min_delta == 0.001
    assert loaded({"early_stopping_min_delta": 0}).early_stopping_min_delta == 0.0  # any improvement counts
    assert loaded({"early_stopping_min_delta": 0.01}).early_stopping_min_delta == 0.01


@pytest.mark.parametrize("value, message", [
    (-0.001, "greater than or equal to 0"),
    (1, "less than 1"),
    ("lots", "number"),
    (float("nan"), "(got nan)"),
])
def test_a_bad_min_delta_is_one_line_naming_the_key(value, message):
    with pytest.raises(ConfigError) as raised:
        loaded({"early_stopping_min_delta": value})
    line = str(raised.value)
    assert "training.early_stopping_min_delta: " in line and message in line
    assert "\n" not in line
