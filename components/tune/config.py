"""The `tuner` config section: the hyperparameter search (Keras Tuner), owned by the tune step."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components import objectives
from components.model.space import SearchSpaceConfig
from components.problem import REGRESSION, check_metric, default_objective, logged_everywhere
from components.section import Section
from components.tune.algorithms import ALGORITHMS


class TunerConfig(Section):
    """The hyperparameter search (Keras Tuner). Owned by the tune step.

    Hyperband runs trials of 1..`max_epochs` epochs in brackets shrinking by `factor`; random and
    bayesian run `max_trials` trials of up to `max_epochs` epochs. Every trial stops early after
    `early_stopping_patience` epochs without improving the objective.
    """

    enabled: bool = True
    algorithm: str = "hyperband"  # a name in components.tune.algorithms.ALGORITHMS
    # Defaults sized for a small table on two CPU cores: Hyperband runs 10 trials (5 of 3 epochs, 2 of
    # them continued to 8, 3 of 8), about 50 epochs; measured in bench/tuning/RESULTS.md.
    max_epochs: int = Field(8, ge=1)
    factor: int = Field(3, ge=2)
    hyperband_iterations: int = Field(1, ge=1)
    max_trials: int = Field(10, ge=1)
    # Bayesian: random trials before the Gaussian process proposes; None is a third of max_trials (at
    # least 3). Keras Tuner's own default, 3 per hyperparameter, would leave a small budget all random.
    bayesian_initial_trials: int | None = Field(None, ge=1)
    seed: int = 42
    # Any metric the model logs (components.problem); None: val_accuracy for a classifier, val_loss
    # for a regression.
    objective: str | None = None
    # None: minimize losses and errors, maximize the rest (components.objectives).
    direction: Literal["max", "min"] | None = None
    batch_size: int = Field(32, ge=1)
    early_stopping_patience: int = Field(3, ge=1)
    # The search stops (and fails) after this many failed trials in a row.
    max_consecutive_failed_trials: int = Field(3, ge=1)
    # When a run reuses hyperparameters (`tunepipe retrain`), it searches again anyway once the last
    # search over the same search space is older than this many days; null: reuse whatever its age.
    retune_after_days: float | None = Field(7, gt=0)
    search_space: SearchSpaceConfig = SearchSpaceConfig()
    # Trials run at once: N workers, each a pod on Kubeflow (a process locally), each its share of
    # the search (components.tune.workers says how each algorithm is shared), merged into one result.
    parallel_trials: int = Field(1, ge=1, le=64)
    # Your own model instead of the built-in one: `path/to/model.py:build` (relative to the config
    # file; the function defaults to `build`), see components.model.hypermodel.
    hypermodel: str | None = None

    @field_validator("objective")
    @classmethod
    def _a_metric_some_model_logs(cls, objective: str | None) -> str | None:
        if objective is not None and objective not in logged_everywhere():
            raise ValueError(f"unknown metric (models log: {', '.join(logged_everywhere())})")
        return objective

    @model_validator(mode="after")
    def _a_trial_for_every_worker(self) -> TunerConfig:
        if self.parallel_trials > 1 and self.algorithm != "hyperband" and self.parallel_trials > self.max_trials:
            raise ValueError(f"parallel_trials {self.parallel_trials} is more than max_trials {self.max_trials}: "
                             f"some workers would have no trial")
        return self

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, name: str) -> str:
        if name not in ALGORITHMS:
            raise ValueError(f"unknown algorithm (allowed: {', '.join(ALGORITHMS)})")
        return name

    @model_validator(mode="after")
    def _a_grid_has_steps(self) -> TunerConfig:
        if self.algorithm != "grid":
            return self
        space = self.search_space
        specs = [(name, spec) for name, spec in space]
        specs += [(f"architecture.branches.{value}.{knob}", knob_spec) for value in space.architecture.candidates()
                  for knob, knob_spec in space.branch(value).items()]
        if self.hypermodel is None:
            for where, found in specs:
                if found.type in ("int", "float") and found.step is None:
                    raise ValueError(f"search_space.{where}: a grid search needs a step for the range "
                                     f"{found.min:g}..{found.max:g} (multiplicative for log sampling)")
        return self

    @model_validator(mode="after")
    def _direction_fits_objective(self) -> TunerConfig:
        if self.objective is None:
            return self
        natural = objectives.direction(self.objective)
        if self.direction is not None and self.direction != natural:
            raise ValueError(f"direction {self.direction} contradicts the objective {self.objective}, which is "
                             f"{'maximized' if natural == objectives.MAX else 'minimized'}")
        return self

    def for_problem(self, kind: str) -> TunerConfig:
        """This config with its objective resolved for a model of `kind` (binary, multiclass or
        regression); a ConfigError when the configured objective is not one such a model logs."""
        objective = self.objective or default_objective(kind)
        check_metric(objective, kind, "tuner.objective")
        return self.model_copy(update={"objective": objective})

    @property
    def workers(self) -> int:
        """The tune workers a pipeline runs: `parallel_trials`, or 1 when tuning is off (nothing to share)."""
        return self.parallel_trials if self.enabled else 1

    @property
    def resolved_direction(self) -> str:
        return self.direction or objectives.direction(self.objective or default_objective(REGRESSION))

