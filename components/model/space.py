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

    A choice (or a fixed value) may bring hyperparameters of its own with each value: `branches`
    maps a value to the hyperparameters that exist only when it is chosen (Keras Tuner's conditional
    scopes), declared as `<value>.<name>`, e.g. `residual.blocks`.
    """

    type: Literal["int", "float", "choice", "boolean", "fixed"]
    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = Field(None, gt=0)
    sampling: Literal["linear", "log"] | None = None
    values: tuple[ScalarOption, ...] | None = None
    value: ScalarOption | None = None
    default: ScalarOption | None = None
    branches: dict[str, dict[str, HyperparameterSpec]] | None = None

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
            "choice": {"values", "default", "branches"},
            "boolean": {"default"},
            "fixed": {"value", "branches"},
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
            if self.sampling == "log" and self.step is not None and self.step <= 1:
                raise ValueError("the step of log sampling multiplies: it must be above 1")
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
        if self.branches:
            strays = sorted(str(value) for value in self.branches if value not in map(str, self.candidates()))
            if strays:
                raise ValueError(f"branches name values the hyperparameter cannot take: {', '.join(strays)}")
        return self

    def branch(self, value: Any) -> dict[str, HyperparameterSpec]:
        """The hyperparameters that come with `value` (none when it brings none)."""
        return dict((self.branches or {}).get(str(value), {}))

    def grid_values(self, name: str) -> list[Any]:
        """Every value a grid search tries, as Keras Tuner's GridSearch enumerates them; a range
        needs a `step` (multiplicative for log sampling)."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "boolean":
            return [True, False]
        if self.type == "fixed":
            return [self.value]
        if self.step is None:
            raise ValueError(f"{name}: a grid search needs a step for the range {self.min:g}..{self.max:g}")
        found, current, index = [], self.min, 0
        while current <= self.max * (1 + 1e-9):
            found.append(current)
            index += 1
            current = self.min * self.step ** index if self.sampling == "log" else self.min + self.step * index
        return found

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
    if name in ("num_layers", "units", "blocks", "width"):
        if spec.type in ("float", "boolean") or not numbers or any(not float(v).is_integer() for v in values):
            return "must be whole numbers (type int, or a choice/fixed of integers)"
        low = 0 if name == "num_layers" else 1
        if min(values) < low:
            return f"must be at least {low}"
    elif name in ("dropout", "learning_rate", "weight_decay"):
        if spec.type == "boolean" or not numbers:
            return "must be numbers (type float, or a choice/fixed of numbers)"
        if name == "dropout" and not all(0 <= v < 1 for v in values):
            return "must be in [0, 1)"
        if name == "learning_rate" and not all(v > 0 for v in values):
            return "must be above 0"
        if name == "weight_decay" and not all(v >= 0 for v in values):
            return "must be 0 or more"
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
    elif name == "architecture":
        if spec.type not in ("choice", "fixed") or any(v not in ARCHITECTURES for v in values):
            return f"must be a choice or fixed value from: {', '.join(ARCHITECTURES)}"
        for value, branch in (spec.branches or {}).items():
            stray = sorted(set(branch) - set(ARCHITECTURES[value]))
            if stray:
                return (f"the {value} branch does not take {', '.join(stray)} "
                        f"(it takes: {', '.join(ARCHITECTURES[value])})")
            for knob, knob_spec in branch.items():
                problem = _spec_rule(knob, knob_spec)
                if problem:
                    return f"{value}.{knob} {problem}"
    return None


def _int(low: int, high: int, default: int, sampling: str | None = None) -> HyperparameterSpec:
    return HyperparameterSpec(type="int", min=low, max=high, default=default, sampling=sampling)


# The architectures the built-in model can build, and the hyperparameters each brings (their
# defaults; a config's branches override them key by key):
# - mlp: `num_layers` dense layers of `units_<i>` units each;
# - residual: `blocks` residual blocks of two dense layers of `width` units, the input projected to
#   `width` first, each block's output added to its input;
# - wide_deep: an MLP (the deep part) beside a linear layer over the encoded features (the wide
#   part), their outputs summed into the head.
ARCHITECTURES: dict[str, dict[str, HyperparameterSpec]] = {
    "mlp": {"num_layers": _int(1, 3, 2), "units": _int(8, 128, 32, "log")},
    "residual": {"blocks": _int(1, 3, 2), "width": _int(16, 128, 64, "log")},
    "wide_deep": {"num_layers": _int(1, 3, 2), "units": _int(8, 128, 32, "log")},
}


class SearchSpaceConfig(Section):
    """The hyperparameters of the built-in model (`components.model.network`) and the ranges the
    tuner searches. The default searches the architecture itself: a plain MLP, a residual MLP or a
    wide-and-deep network, each with hyperparameters of its own (conditional: the residual blocks
    exist only when `architecture` is residual), and the optimizer, learning rate, weight decay and
    dropout they share. Keys left out keep these defaults.

    `units` is declared once per hidden layer (`mlp.units_0`, `mlp.units_1`, ...), each searched over
    the same range.
    """

    architecture: HyperparameterSpec = HyperparameterSpec(type="choice", values=tuple(ARCHITECTURES), default="mlp")
    dropout: HyperparameterSpec = HyperparameterSpec(type="float", min=0.0, max=0.4, step=0.1, default=0.1)
    learning_rate: HyperparameterSpec = HyperparameterSpec(type="float", min=1e-4, max=1e-1, sampling="log",
                                                           default=1e-2)
    optimizer: HyperparameterSpec = HyperparameterSpec(type="choice", values=("adam", "rmsprop", "sgd"),
                                                       default="adam")
    # Decoupled weight decay, as the optimizer applies it (0: none).
    weight_decay: HyperparameterSpec = HyperparameterSpec(type="choice", values=(0.0, 1e-4, 1e-3), default=0.0)
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

    def branch(self, architecture: str) -> dict[str, HyperparameterSpec]:
        """The hyperparameters of one architecture: its defaults, with the config's branch over them."""
        return {**ARCHITECTURES[architecture], **self.architecture.branch(architecture)}
