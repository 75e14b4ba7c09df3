"""The model's search space as the config declares it (`tuner.search_space`): one Keras Tuner
hyperparameter per knob of `components.model.network.build_model`, with the rules each knob's values
must follow, checked when the config is loaded."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from components.section import ScalarOption, Section

# Optimizers and activations the model module knows how to build; the search space may only name these.
OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")
ACTIVATIONS = ("relu", "gelu", "elu", "selu", "swish", "tanh")
# Regression losses, both on the standardized label (components.model.losses).
LOSSES = ("mse", "huber")


class HyperparameterSpec(Section):
    """One hyperparameter as Keras Tuner declares it.

    `int` and `float` search `min`..`max` (both included) with an optional `step` and `linear` or
    `log` sampling; `choice` picks one of `values`; `boolean` is true or false; `fixed` is always
    `value`. `default` is the value training uses when tuning is off. In YAML a plain value is
    shorthand for a fixed one, and a list for a choice: `dropout: 0.2`, `optimizer: [adam, sgd]`.
    """

    type: Literal["int", "float", "choice", "boolean", "fixed"]
    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = Field(None, gt=0)
    sampling: Literal["linear", "log"] | None = None
    values: tuple[ScalarOption, ...] | None = None
    value: ScalarOption | None = None
    default: ScalarOption | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, raw: Any) -> Any:
        if isinstance(raw, (list, tuple)):
            return {"type": "choice", "values": raw}
        if isinstance(raw, (str, int, float, bool)):
            return {"type": "fixed", "value": raw}
        return raw

    @model_validator(mode="after")
    def _keys_fit_the_type(self) -> HyperparameterSpec:
        applicable = {
            "int": {"min", "max", "step", "sampling", "default"},
            "float": {"min", "max", "step", "sampling", "default"},
            "choice": {"values", "default"},
            "boolean": {"default"},
            "fixed": {"value"},
        }[self.type]
        stray = sorted(self.model_fields_set - applicable - {"type"})
        if stray:
            raise ValueError(f"type {self.type} does not take {', '.join(stray)} "
                             f"(it takes: {', '.join(sorted(applicable))})")
        if self.type in ("int", "float"):
            if self.min is None or self.max is None:
                raise ValueError(f"type {self.type} needs min and max")
            if self.min >= self.max:
                raise ValueError(f"min ({self.min:g}) must be below max ({self.max:g}); "
                                 f"use a fixed value for a single value")
            if self.sampling == "log" and self.min <= 0:
                raise ValueError("log sampling needs min > 0")
            if self.type == "int":
                for key in ("min", "max", "step", "default"):
                    number = getattr(self, key)
                    if number is not None and (isinstance(number, bool) or not float(number).is_integer()):
                        raise ValueError(f"{key} of an int hyperparameter must be a whole number (got {number!r})")
            if self.default is not None and (isinstance(self.default, (bool, str))
                                             or not self.min <= self.default <= self.max):
                raise ValueError(f"default {self.default!r} is not between min {self.min:g} and max {self.max:g}")
        elif self.type == "choice":
            if not self.values:
                raise ValueError("type choice needs a non-empty list of values")
            if len(set(self.values)) != len(self.values):
                raise ValueError("values of a choice must be distinct")
            kinds = {"bool" if isinstance(v, bool) else "str" if isinstance(v, str) else "number" for v in self.values}
            if len(kinds) > 1:
                raise ValueError("values of a choice must all be numbers, all strings or all booleans")
            if self.default is not None and self.default not in self.values:
                raise ValueError(f"default {self.default!r} is not one of the values")
        elif self.type == "boolean":
            if self.default is not None and not isinstance(self.default, bool):
                raise ValueError(f"default of a boolean must be true or false (got {self.default!r})")
        elif self.value is None:
            raise ValueError("type fixed needs a value")
        return self

    def candidates(self) -> tuple[Any, ...]:
        """The values this hyperparameter can take, or its bounds for a range."""
        if self.type in ("int", "float"):
            return (self.min, self.max) + ((self.default,) if self.default is not None else ())
        if self.type == "choice":
            return self.values
        if self.type == "boolean":
            return (True, False)
        return (self.value,)


def _spec_rule(name: str, spec: HyperparameterSpec) -> str | None:
    """Why `spec` cannot be the model's hyperparameter `name`, or None when it can."""
    values = spec.candidates()
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if name in ("num_layers", "units"):
        if spec.type in ("float", "boolean") or not numbers or any(not float(v).is_integer() for v in values):
            return "must be whole numbers (type int, or a choice/fixed of integers)"
        low = 0 if name == "num_layers" else 1
        if min(values) < low:
            return f"must be at least {low}"
    elif name in ("dropout", "learning_rate"):
        if spec.type == "boolean" or not numbers:
            return "must be numbers (type float, or a choice/fixed of numbers)"
        if name == "dropout" and not all(0 <= v < 1 for v in values):
            return "must be in [0, 1)"
        if name == "learning_rate" and not all(v > 0 for v in values):
            return "must be above 0"
    elif name in ("optimizer", "activation"):
        allowed = OPTIMIZERS if name == "optimizer" else ACTIVATIONS
        if spec.type not in ("choice", "fixed") or any(v not in allowed for v in values):
            return f"must be a choice or fixed value from: {', '.join(allowed)}"
    elif name == "loss":
        if spec.type not in ("choice", "fixed") or any(v not in LOSSES for v in values):
            return f"must be a choice or fixed value from: {', '.join(LOSSES)}"
    elif name == "batch_norm":
        if spec.type not in ("boolean", "fixed") or not isinstance(values[0], bool):
            return "must be type boolean or a fixed true/false"
    return None


class SearchSpaceConfig(Section):
    """The hyperparameters of the model in components/model.py and the ranges the tuner searches.

    `units` is declared once per hidden layer (units_0, units_1, ...), each searched over the same range.
    Keys left out keep these defaults: a small dense network for tabular data.
    """

    num_layers: HyperparameterSpec = HyperparameterSpec(type="int", min=1, max=3, default=2)
    units: HyperparameterSpec = HyperparameterSpec(type="int", min=8, max=128, sampling="log", default=32)
    dropout: HyperparameterSpec = HyperparameterSpec(type="float", min=0.0, max=0.4, step=0.1, default=0.1)
    learning_rate: HyperparameterSpec = HyperparameterSpec(type="float", min=1e-4, max=1e-1, sampling="log",
                                                           default=1e-2)
    optimizer: HyperparameterSpec = HyperparameterSpec(type="choice", values=("adam", "rmsprop", "sgd"),
                                                       default="adam")
    activation: HyperparameterSpec = HyperparameterSpec(type="fixed", value="relu")
    batch_norm: HyperparameterSpec = HyperparameterSpec(type="fixed", value=False)
    # Regression only (a classifier's loss is cross-entropy): mean squared error or Huber.
    loss: HyperparameterSpec = HyperparameterSpec(type="fixed", value="mse")

    @field_validator("*", mode="wrap")
    @classmethod
    def _fits_the_model(cls, raw: Any, handler: Any, info: Any) -> HyperparameterSpec:
        spec = handler(raw)
        problem = _spec_rule(info.field_name, spec)
        if problem:
            raise ValueError(f"values of {info.field_name} {problem}")
        return spec

