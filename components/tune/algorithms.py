"""The search algorithms `tuner.algorithm` can name: one entry per Keras Tuner tuner, with the
arguments it takes from the config and the number of trials a search is expected to run.

Adding an algorithm is one entry here (and its test): the config accepts its name, the tune step
builds its Keras Tuner class with its arguments, the progress lines count towards its trials.
Nothing here imports Keras Tuner (which pulls in TensorFlow): the table is read by the config
loader and by tests that run in milliseconds.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Algorithm:
    name: str
    tuner: str  # the Keras Tuner class: keras_tuner.<tuner>
    arguments: Callable[[Any], dict[str, Any]]  # from the TunerConfig
    expected_trials: Callable[[Any], int]


def hyperband_bracket_sizes(max_epochs: int, factor: int, min_epochs: int = 1) -> list[list[int]]:
    """Trials per round of each Hyperband bracket, as Keras Tuner's HyperbandOracle sizes them
    (`_get_num_brackets`, `_get_size`): brackets hold about the same number of epochs, and each round
    keeps 1/factor of the trials of the round before."""
    brackets, epochs = 0, float(max_epochs)
    while epochs >= min_epochs:
        epochs /= factor
        brackets += 1
    last_round_trials = math.ceil(1 + math.log(max_epochs, factor))
    return [[math.ceil(last_round_trials / (bracket + 1) * factor ** (bracket - round_number))
             for round_number in range(bracket + 1)]
            for bracket in range(brackets)]


def _hyperband_trials(config: Any) -> int:
    per_iteration = sum(map(sum, hyperband_bracket_sizes(config.max_epochs, config.factor)))
    return per_iteration * config.hyperband_iterations


def _bayesian_arguments(config: Any) -> dict[str, Any]:
    # Random trials before the Gaussian process proposes; Keras Tuner's own default (3 per
    # hyperparameter) would leave a small budget all random.
    initial = config.bayesian_initial_trials or max(3, config.max_trials // 3)
    return {"max_trials": config.max_trials, "num_initial_points": initial}


def grid_points(space: list[tuple[str, list[Any], list[tuple[str, list[Any]]]]], limit: int = 10**6) -> int:
    """How many points a grid search over `space` has: each hyperparameter as (name, the values the
    grid tries, its conditions as (parent, the parent's values it is active for)), in declaration
    order, parents first. A conditional hyperparameter multiplies only the points where it is
    active. Counting stops past `limit` (returned as limit + 1)."""
    def count(index: int, assignment: dict[str, Any]) -> int:
        if index == len(space):
            return 1
        name, values, conditions = space[index]
        if all(assignment.get(parent) in allowed for parent, allowed in conditions):
            total = 0
            for value in values:
                total += count(index + 1, {**assignment, name: value})
                if total > limit:
                    return limit + 1
            return total
        return count(index + 1, assignment)

    return count(0, {})


def grid_assignments(space: list[tuple[str, list[Any], list[tuple[str, list[Any]]]]],
                     limit: int) -> list[dict[str, Any]]:
    """The first `limit` points of the grid (see `grid_points`), each as the values of its active
    hyperparameters, in a stable order; the walk stops there, however large the grid."""
    found: list[dict[str, Any]] = []

    def walk(index: int, assignment: dict[str, Any]) -> None:
        if len(found) >= limit:
            return
        if index == len(space):
            found.append(assignment)
            return
        name, values, conditions = space[index]
        if all(assignment.get(parent) in allowed for parent, allowed in conditions):
            for value in values:
                walk(index + 1, {**assignment, name: value})
        else:
            walk(index + 1, assignment)

    walk(0, {})
    return found


def _grid_arguments(config: Any) -> dict[str, Any]:
    return {"max_trials": config.max_trials}


ALGORITHMS: dict[str, Algorithm] = {algorithm.name: algorithm for algorithm in (
    Algorithm("hyperband", "Hyperband",
              lambda config: {"max_epochs": config.max_epochs, "factor": config.factor,
                              "hyperband_iterations": config.hyperband_iterations},
              _hyperband_trials),
    Algorithm("random", "RandomSearch", lambda config: {"max_trials": config.max_trials},
              lambda config: config.max_trials),
    Algorithm("bayesian", "BayesianOptimization", _bayesian_arguments, lambda config: config.max_trials),
    # Every point of the grid, up to max_trials (the tune step counts the points and says so).
    Algorithm("grid", "GridSearch", _grid_arguments, lambda config: config.max_trials),
)}
