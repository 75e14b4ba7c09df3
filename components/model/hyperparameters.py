"""The model's hyperparameters: the search space declared on Keras Tuner's `hp`, the values a
trial or a tuning result gives, and each hyperparameter's default (what training uses when tuning is
off, as the penguin example's `_get_hyperparameters` does).

The search space is declared in the config (`tuner.search_space`, `components.model.space`, whose
defaults are the default space for tabular data) and turned into Keras Tuner hyperparameters here.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import DataError
from components.model.space import HyperparameterSpec, SearchSpaceConfig
from components.problem import REGRESSION

DEFAULT_SEARCH_SPACE = SearchSpaceConfig()
# Keras Tuner's own bookkeeping values (Hyperband epochs, brackets): not model hyperparameters.
TUNER_KEYS_PREFIX = "tuner/"


@dataclass(frozen=True)
class Architecture:
    """The values `build_model` reads from the hyperparameters."""

    kind: str  # mlp, residual or wide_deep (components.model.space.ARCHITECTURES)
    units: tuple[int, ...]  # mlp, wide_deep: one entry per hidden layer; residual: the width of each block
    dropout: float
    activation: str
    batch_norm: bool
    optimizer: str
    learning_rate: float
    weight_decay: float = 0.0
    loss: str | None = None  # regression: mse or huber


def _declare(hp, name: str, spec: HyperparameterSpec):
    """Register one hyperparameter with Keras Tuner and return its value for this trial (None when a
    condition it is declared under does not hold)."""
    if spec.type == "int":
        return hp.Int(name, int(spec.min), int(spec.max), step=int(spec.step) if spec.step else None,
                      sampling=spec.sampling or "linear",
                      default=int(spec.default) if spec.default is not None else None)
    if spec.type == "float":
        return hp.Float(name, float(spec.min), float(spec.max), step=spec.step, sampling=spec.sampling or "linear",
                        default=float(spec.default) if spec.default is not None else None)
    if spec.type == "choice":
        return hp.Choice(name, list(spec.values), default=spec.default)
    if spec.type == "boolean":
        return hp.Boolean(name, default=bool(spec.default))
    return hp.Fixed(name, spec.value)


def _possible_values(spec: HyperparameterSpec) -> list[int]:
    if spec.type == "int":
        return list(range(int(spec.min), int(spec.max) + 1))
    return [int(value) for value in spec.candidates()]


def _layers(hp, prefix: str, branch: dict[str, HyperparameterSpec]) -> tuple[int, ...]:
    """`<prefix>.num_layers` and one `<prefix>.units_<i>` per layer that many layers can have, each
    active only when there are enough layers (so a Bayesian search does not model the units of
    layers the network does not have)."""
    counts = _possible_values(branch["num_layers"])
    chosen = _declare(hp, f"{prefix}.num_layers", branch["num_layers"])
    units = []
    for index in range(max(counts)):
        with hp.conditional_scope(f"{prefix}.num_layers", [count for count in counts if count > index]):
            value = _declare(hp, f"{prefix}.units_{index}", branch["units"])
        if chosen is not None and index < int(chosen):
            units.append(int(value))
    return tuple(units)


def architecture(hp, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE, kind: str = "multiclass") -> Architecture:
    """Declare the search space on `hp` (a `keras_tuner.HyperParameters`) and read this trial's values.

    Every architecture's own hyperparameters are declared, each under the condition that its
    architecture is the one chosen, so the whole space is known after one call (what a grid search
    enumerates and a Bayesian search models). `loss` is declared for a regression model only
    (`kind`, `components.problem`).
    """
    chosen = str(_declare(hp, "architecture", space.architecture))
    units: tuple[int, ...] = ()
    for name in space.architecture.candidates():
        branch = space.branch(name)
        with hp.conditional_scope("architecture", [name]):
            if name == "residual":
                blocks = _declare(hp, "residual.blocks", branch["blocks"])
                width = _declare(hp, "residual.width", branch["width"])
                found = (int(width),) * int(blocks) if blocks is not None else ()
            else:
                found = _layers(hp, name, branch)
        if name == chosen:
            units = found
    return Architecture(
        kind=chosen,
        units=units,
        dropout=float(_declare(hp, "dropout", space.dropout)),
        activation=str(_declare(hp, "activation", space.activation)),
        batch_norm=bool(_declare(hp, "batch_norm", space.batch_norm)),
        optimizer=str(_declare(hp, "optimizer", space.optimizer)),
        learning_rate=float(_declare(hp, "learning_rate", space.learning_rate)),
        weight_decay=float(_declare(hp, "weight_decay", space.weight_decay)),
        loss=str(_declare(hp, "loss", space.loss)) if kind == REGRESSION else None,
    )


def for_values(values: dict[str, Any] | None = None, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE,
               kind: str = "multiclass"):
    """A `keras_tuner.HyperParameters` holding `values`, with the space's defaults for what they leave out."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.values.update(model_values(values or {}))
    architecture(hp, space, kind)
    # Keep only what the model read: e.g. units of a layer that `num_layers` leaves out are dropped.
    active = {declared.name for declared in hp.space if hp.is_active(declared)}
    hp.values = {name: value for name, value in hp.values.items() if name in active}
    return hp


def default_hyperparameters(space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE, kind: str = "multiclass"
                            ) -> dict[str, Any]:
    """Each hyperparameter's default: what training uses when tuning is off."""
    return dict(for_values(None, space, kind).values)


def model_values(values: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters that shape the model, without Keras Tuner's bookkeeping."""
    return {name: value for name, value in values.items() if not name.startswith(TUNER_KEYS_PREFIX)}


def write_hyperparameters(path: str | os.PathLike[str], values: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(model_values(values), indent=2, sort_keys=True) + "\n")


def read_hyperparameters(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Hyperparameter values from a JSON file of name -> value (e.g. best_hyperparameters.json)."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"the hyperparameters file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise DataError(f"the hyperparameters file {path} cannot be read: {error}") from None
    if not isinstance(values, dict) or not all(isinstance(name, str) for name in values):
        raise DataError(f"{path}: expected a JSON object of hyperparameter name -> value")
    return model_values(values)
