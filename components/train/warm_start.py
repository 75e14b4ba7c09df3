"""Warm-starting a model from an earlier one: its weights, loaded when every weight matches by name
and shape. The preprocessing statistics are not weights and stay those of the current transform."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from components.serving import SAVED_MODEL

KERAS_MODEL = "model.keras"


def _previous_weights(source: Path) -> dict[str, np.ndarray]:
    """Weights by variable path from a `.keras` file, a directory holding one, or a SavedModel."""
    if source.is_file() and source.suffix == ".keras":
        keras_file = source
    elif (source / KERAS_MODEL).is_file():
        keras_file = source / KERAS_MODEL
    elif (source / SAVED_MODEL).is_file():
        import tensorflow as tf

        loaded = tf.saved_model.load(str(source))
        return {variable.name.removesuffix(":0"): variable.numpy() for variable in loaded.variables}
    else:
        raise FileNotFoundError(f"no {KERAS_MODEL} or {SAVED_MODEL} in it")
    import keras

    import components.model.preprocessing  # noqa: F401  (registers FillMissing for loading)

    previous = keras.models.load_model(keras_file, compile=False)
    return {weight.path: np.asarray(weight.numpy()) for weight in previous.weights}


def _model_weights(keras_model) -> dict[str, Any]:
    # Random-seed state of dropout layers is not a learned weight.
    return {weight.path: weight for weight in keras_model.weights if "seed_generator" not in weight.path}


def warm_start_from(keras_model, source: str | os.PathLike[str]) -> tuple[bool, str]:
    """Load an earlier model's weights into `keras_model` when every weight matches by name and shape.

    The preprocessing statistics are not weights and stay those of the current transform. Returns
    whether the weights were loaded and a sentence saying what happened.
    """
    try:
        previous = _previous_weights(Path(source))
    except Exception as error:  # an unreadable model must not stop training: say why and start fresh
        return False, f"no warm start from {source}: cannot read its weights ({str(error).splitlines()[0]})"
    previous = {name: value for name, value in previous.items() if "seed_generator" not in name}
    current = _model_weights(keras_model)
    missing, extra = sorted(set(current) - set(previous)), sorted(set(previous) - set(current))
    if missing or extra:
        differences = ([f"new {name}" for name in missing[:3]] + [f"no longer {name}" for name in extra[:3]])
        return False, (f"no warm start from {source}: the architecture differs ({', '.join(differences)}); "
                       f"training from scratch")
    reshaped = [f"{name} {tuple(previous[name].shape)} -> {tuple(weight.shape)}"
                for name, weight in current.items() if tuple(previous[name].shape) != tuple(weight.shape)]
    if reshaped:
        return False, (f"no warm start from {source}: weight shapes differ ({', '.join(reshaped[:3])}; a changed "
                       f"vocabulary or layer size); training from scratch")
    for name, weight in current.items():
        weight.assign(previous[name])
    return True, f"warm-started from {source} ({len(current)} weights)"
