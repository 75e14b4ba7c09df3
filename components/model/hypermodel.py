"""A user's own model: `tuner.hypermodel: path/to/model.py:build`, TFX `module_file` style.

`build(hp, inputs)` gets Keras Tuner's `hp` and a `ModelInputs`:

- `inputs.encoded`: every feature after the pipeline's preprocessing, concatenated (one tensor);
- `inputs.features`: column name -> that column's preprocessed tensor;
- `inputs.raw`: column name -> its raw input tensor (what the served model takes);
- `inputs.problem`: the kind (`binary`, `multiclass` or `regression`), the classes, the positive class.

It returns either a tensor, the body of the network: the pipeline adds the output head that fits
the problem and compiles it with the `optimizer`, `learning_rate` and `weight_decay`
hyperparameters (declared with the search space's defaults if the module does not declare them);
or a compiled `keras.Model` over `inputs.raw`, taking full control (its output must be what the
built-in head outputs: class probabilities, the positive class's probability, or the prediction in
the label's units). Every hyperparameter the module declares is searched, recorded per trial and
reused by train and retrain, like the built-in model's.

The module travels as its source text (a pipeline parameter), so on Kubeflow it reaches the pods
without a new image, and its digest keys the cache. An import error, a missing function or a wrong
return type is one line naming the file and line, found by building once before any trial.
"""
from __future__ import annotations

import hashlib
import json
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.errors import ConfigError, TunepipeError
from components.model.hyperparameters import DEFAULT_SEARCH_SPACE, Architecture, _declare
from components.model.space import SearchSpaceConfig
from components.transform import Transform


@dataclass(frozen=True)
class Problem:
    kind: str  # binary, multiclass or regression
    classes: tuple[str, ...]
    positive_class: str | None


@dataclass(frozen=True)
class ModelInputs:
    raw: dict[str, Any]
    features: dict[str, Any]
    encoded: Any
    problem: Problem


@dataclass(frozen=True)
class HypermodelSource:
    """A module's text and the function to call in it; `path` names it in messages."""

    path: str
    function: str
    source: str
    _module: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(f"{self.function}\0{self.source}".encode()).hexdigest()

    def as_parameter(self) -> str:
        """The module's text as one line (a JSON string), the pipeline parameter it travels in: kfp
        writes every parameter's default into the package's header comments, where a line break
        would end the comment and break the YAML."""
        return json.dumps(self.source)

    @staticmethod
    def from_parameter(parameter: str) -> str:
        """The module's text from its parameter (`as_parameter`)."""
        return json.loads(parameter) if parameter.startswith('"') else parameter

    @staticmethod
    def split(reference: str) -> tuple[str, str]:
        """`path/to/model.py:build` as (path, function); the function defaults to `build`."""
        path, _, function = reference.rpartition(":")
        return (path, function) if function.isidentifier() else (reference, "build")

    @classmethod
    def read(cls, reference: str) -> HypermodelSource:
        """The module `reference` names, read from disk."""
        path, function = cls.split(reference)
        try:
            source = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"tuner.hypermodel: {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"tuner.hypermodel: {path} cannot be read: {error}") from None
        return cls(path, function, source)

    def build_function(self):
        """The module's function, loaded once; import and lookup errors as one line."""
        if "function" not in self._module:
            namespace: dict[str, Any] = {"__name__": f"tunepipe_hypermodel_{self.digest[7:19]}",
                                         "__file__": self.path}
            try:
                code = compile(self.source, self.path, "exec")
            except SyntaxError as error:
                raise ConfigError(f"{self.path}:{error.lineno}: {error.msg}") from None
            module = types.ModuleType(namespace["__name__"])
            module.__dict__.update(namespace)
            try:
                exec(code, module.__dict__)  # noqa: S102 (the user's model module, as TFX runs a module_file)
            except Exception as error:
                raise ConfigError(f"{self._where(error)}: importing it failed: {type(error).__name__}: "
                                  f"{error}") from None
            function = getattr(module, self.function, None)
            if not callable(function):
                found = sorted(name for name, value in vars(module).items()
                               if isinstance(value, types.FunctionType) and not name.startswith("_"))
                raise ConfigError(f"{self.path}: no function {self.function!r} (functions: "
                                  f"{', '.join(found) or 'none'})")
            self._module["function"] = function
        return self._module["function"]

    def _where(self, error: BaseException) -> str:
        """`path:line` of the deepest frame of the traceback inside the module."""
        lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == self.path]
        return f"{self.path}:{lines[-1]}" if lines else self.path


def _shared(hp, space: SearchSpaceConfig, kind: str) -> Architecture:
    """The optimizer's hyperparameters the pipeline compiles with: the module's if it declared
    them, else declared here with the search space's defaults."""
    def value(name: str):
        return hp.values[name] if name in hp.values else _declare(hp, name, getattr(space, name))

    return Architecture(kind="hypermodel", units=(), dropout=0.0, activation="", batch_norm=False,
                        optimizer=str(value("optimizer")), learning_rate=float(value("learning_rate")),
                        weight_decay=float(value("weight_decay")),
                        loss=str(value("loss")) if kind == "regression" else None)


def build_model(hp, transform: Transform, source: HypermodelSource, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE):
    """The compiled Keras model of the user's `build(hp, inputs)`."""
    import keras

    from components.model import network
    from components.model.preprocessing import encode

    raw_by_key, encoded_by_name = encode(transform)
    raw = {feature.name: raw_by_key[feature.key] for feature in transform.features}
    tensors = list(encoded_by_name.values())
    encoded = tensors[0] if len(tensors) == 1 else keras.layers.Concatenate(name="features")(tensors)
    inputs = ModelInputs(raw, encoded_by_name, encoded,
                         Problem(transform.kind, transform.label_vocabulary, transform.positive_class))
    build = source.build_function()
    try:
        body = build(hp, inputs)
    except TunepipeError:
        raise
    except Exception as error:
        if not any(frame.filename == source.path for frame in traceback.extract_tb(error.__traceback__)):
            raise
        raise ValueError(f"{source._where(error)}: {type(error).__name__}: {error}") from error
    if isinstance(body, keras.Model):
        if body.optimizer is None or not body.compiled:
            raise ConfigError(f"{source.path}: {source.function} returned a keras.Model that is not compiled; "
                              f"compile it, or return a tensor and let the pipeline add the head")
        missing = sorted(set(raw_by_key) - {tensor.name.split(":")[0] for tensor in body.inputs})
        if missing and len(body.inputs) != len(raw_by_key):
            raise ConfigError(f"{source.path}: the keras.Model {source.function} returned does not take "
                              f"inputs.raw (missing {', '.join(missing[:3])})")
        return body
    if not isinstance(body, keras.KerasTensor):
        raise ConfigError(f"{source.path}: {source.function} returned {type(body).__name__}; expected a tensor "
                          f"(the network's body) or a compiled keras.Model over inputs.raw")
    shared = _shared(hp, space, transform.kind)
    outputs, loss, metrics = network.head([body], transform, shared.loss)
    return network.compile_model(keras.Model(raw_by_key, outputs, name="tunepipe"), shared, loss, metrics)


def check(source: HypermodelSource, transform: Transform, space: SearchSpaceConfig) -> None:
    """Build the module's model once with its defaults: whatever is wrong with it is a ConfigError
    now, not a failed trial an hour in."""
    import keras_tuner

    try:
        build_model(keras_tuner.HyperParameters(), transform, source, space)
    except ValueError as error:
        raise ConfigError(str(error).splitlines()[0]) from None
