"""The algorithm table: every algorithm the config accepts, its Keras Tuner class and arguments, and
the number of trials a search is expected to run, computed without Keras Tuner."""
from __future__ import annotations

import pytest

from components.errors import ConfigError
from components.tune.algorithms import ALGORITHMS, grid_assignments, grid_points, hyperband_bracket_sizes
from components.tune.config import TunerConfig
from pipeline import config


@pytest.mark.parametrize("settings, trials", [
    ({}, 10),  # the default: 5 of 3 epochs, 2 of them continued to 8, 3 of 8 (bench/tuning)
    ({"max_epochs": 2, "factor": 2}, 5),  # the tests' tiny search
    ({"max_epochs": 8, "factor": 3, "hyperband_iterations": 3}, 30),
    ({"max_epochs": 27, "factor": 3}, 70),  # four brackets: 4, 6+2, 12+4+2, 27+9+3+1
])
def test_hyperband_trial_counts(settings, trials):
    assert ALGORITHMS["hyperband"].expected_trials(TunerConfig(**settings)) == trials


def test_hyperband_brackets_shrink_by_the_factor():
    sizes = hyperband_bracket_sizes(max_epochs=81, factor=3)
    assert [len(rounds) for rounds in sizes] == [1, 2, 3, 4, 5]
    for rounds in sizes:
        assert all(earlier >= later for earlier, later in zip(rounds, rounds[1:]))


def test_random_and_bayesian_run_max_trials_and_bayesian_starts_random():
    tuner = TunerConfig(algorithm="bayesian", max_trials=12)
    assert ALGORITHMS["random"].expected_trials(tuner) == ALGORITHMS["bayesian"].expected_trials(tuner) == 12
    assert ALGORITHMS["bayesian"].arguments(tuner) == {"max_trials": 12, "num_initial_points": 4}
    assert ALGORITHMS["bayesian"].arguments(tuner.model_copy(update={"bayesian_initial_trials": 7})) == {
        "max_trials": 12, "num_initial_points": 7}
    assert ALGORITHMS["hyperband"].arguments(TunerConfig()) == {"max_epochs": 8, "factor": 3, "hyperband_iterations": 1}


def test_an_unknown_algorithm_is_a_config_error_listing_the_table():
    with pytest.raises(ConfigError) as raised:
        config.from_dict({"data": {"source": "x.csv", "label": "y"}, "tuner": {"algorithm": "annealing"}})
    assert f"tuner.algorithm: unknown algorithm (allowed: {', '.join(ALGORITHMS)})" in str(raised.value)


def test_the_counts_agree_with_keras_tuners_own_oracle():
    """The one slow test here: Keras Tuner's HyperbandOracle sizes the same brackets."""
    import keras_tuner

    for max_epochs, factor in ((8, 3), (2, 2), (27, 3), (100, 4)):
        oracle = keras_tuner.oracles.HyperbandOracle(objective="val_loss", max_epochs=max_epochs, factor=factor)
        expected = [[oracle._get_size(bracket, round_number) for round_number in range(bracket + 1)]
                    for bracket in range(oracle._get_num_brackets())]
        assert hyperband_bracket_sizes(max_epochs, factor) == expected


def test_grid_points_multiply_only_where_a_hyperparameter_is_active():
    space = [("architecture", ["mlp", "residual"], []),
             ("mlp.num_layers", [1, 2], [("architecture", ["mlp"])]),
             ("mlp.units_0", [8, 16, 32], [("architecture", ["mlp"]), ("mlp.num_layers", [1, 2])]),
             ("mlp.units_1", [8, 16, 32], [("architecture", ["mlp"]), ("mlp.num_layers", [2])]),
             ("residual.blocks", [1, 2, 3], [("architecture", ["residual"])]),
             ("learning_rate", [0.01, 0.1], [])]
    # mlp: 3 (one layer) + 9 (two layers) = 12; residual: 3; times 2 learning rates.
    assert grid_points(space) == (12 + 3) * 2
    assert grid_points([("a", list(range(1000)), []), ("b", list(range(1000)), []), ("c", [1, 2], [])],
                       limit=10**5) == 10**5 + 1


def test_a_grid_needs_steps_and_says_which_range_lacks_one():
    with pytest.raises(ConfigError) as raised:
        config.from_dict({"data": {"source": "x.csv", "label": "y"}, "tuner": {"algorithm": "grid"}})
    assert "search_space.learning_rate: a grid search needs a step for the range 0.0001..0.1" in str(raised.value)
    space = {"architecture": {"type": "fixed", "value": "mlp", "branches": {"mlp": {
        "num_layers": {"type": "int", "min": 1, "max": 2, "step": 1},
        "units": {"type": "int", "min": 8, "max": 32, "step": 2, "sampling": "log"}}}},
        "learning_rate": [0.01, 0.1], "dropout": 0.0}
    grid = config.from_dict({"data": {"source": "x.csv", "label": "y"},
                             "tuner": {"algorithm": "grid", "search_space": space}}).tuner
    assert grid.search_space.branch("mlp")["units"].grid_values("units") == [8, 16, 32]


def test_a_huge_grid_is_dealt_from_its_first_points_without_listing_it():
    space = [(f"h{index}", list(range(10)), []) for index in range(12)]  # 10**12 points
    first = grid_assignments(space, 5)
    assert len(first) == 5 and first[0] == {f"h{index}": 0 for index in range(12)}
    assert [point["h11"] for point in first] == [0, 1, 2, 3, 4]
