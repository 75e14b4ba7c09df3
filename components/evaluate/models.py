"""The models an evaluation compares: what each is (a classifier of which classes, or a regression)
and what it takes as input, read from its files, and whether the baseline can be compared with
the candidate at all.

The candidate is a `model` artifact. The baseline is one too, or a SavedModel as push copied it to
the serving directory (no manifest and no label vocabulary there): what it is and what it takes is
then read from its signatures. Reading saved_model.pb loads no graph, so a wrong directory fails
here in one line rather than deep inside the Beam pipeline.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import artifacts
from components.errors import DataError
from components.problem import REGRESSION
from components.serving import (EXAMPLES_INPUT, LABEL_VOCABULARY, PREDICTIONS, PROBABILITIES, RAW_SIGNATURE,
                                SAVED_MODEL, SERVING_SIGNATURE)


@dataclass(frozen=True)
class ModelToEvaluate:
    path: str
    kind: str  # binary, multiclass or regression
    label_vocabulary: tuple[str, ...] | None  # None for regression
    known_vocabulary: bool = True  # False: only the number of classes is known (a served copy)
    inputs: tuple[tuple[str, str], ...] = ()  # the raw signature's (input, dtype), sorted
    positive_index: int = 1


def _signatures(path: Path, role: str) -> dict[str, Any]:
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    try:
        saved_model.ParseFromString((path / SAVED_MODEL).read_bytes())
    except Exception as error:  # protobuf raises its own DecodeError
        raise DataError(f"the {role} {path}: saved_model.pb cannot be read ({error})") from None
    return {name: signature for graph in saved_model.meta_graphs for name, signature in graph.signature_def.items()}


def _described(path: Path, role: str) -> tuple[str, int | None, tuple[tuple[str, str], ...]]:
    """What the SavedModel's signatures say: regression or classification, its number of classes,
    and its raw inputs."""
    from tensorflow.core.framework import types_pb2

    signatures = _signatures(path, role)
    serving = signatures.get(SERVING_SIGNATURE)
    if serving is None or EXAMPLES_INPUT not in serving.inputs or not (
            PROBABILITIES in serving.outputs or PREDICTIONS in serving.outputs):
        raise DataError(f"the {role} {path} has no {SERVING_SIGNATURE!r} signature taking serialized tf.Examples "
                        f"({EXAMPLES_INPUT!r}) and returning {PROBABILITIES!r} or {PREDICTIONS!r}: not a model "
                        f"tunepipe exported")
    raw = signatures.get(RAW_SIGNATURE)
    inputs = tuple(sorted((name, types_pb2.DataType.Name(tensor.dtype)) for name, tensor in raw.inputs.items())
                   ) if raw is not None else ()
    if PREDICTIONS in serving.outputs:
        return REGRESSION, None, inputs
    dims = serving.outputs[PROBABILITIES].tensor_shape.dim
    classes = dims[-1].size if dims and dims[-1].size > 0 else None
    return ("binary" if classes == 2 else "multiclass"), classes, inputs


def _vocabulary(path: Path, manifest: dict[str, Any] | None) -> tuple[str, ...] | None:
    if manifest and manifest.get("label_vocabulary"):
        return tuple(str(label) for label in manifest["label_vocabulary"])
    if (path / LABEL_VOCABULARY).is_file():
        return tuple(line for line in (path / LABEL_VOCABULARY).read_text().splitlines() if line)
    return None


def candidate(model: str | os.PathLike[str]) -> ModelToEvaluate:
    path = Path(model)
    manifest = artifacts.read_manifest(path, artifacts.MODEL)
    if not (path / SAVED_MODEL).is_file():
        raise DataError(f"{path}: the model artifact has no saved_model.pb")
    kind, _, inputs = _described(path, "model")
    vocabulary = _vocabulary(path, manifest)
    if kind != REGRESSION and not vocabulary:
        raise DataError(f"{path}: the model artifact has no label vocabulary ({LABEL_VOCABULARY})")
    positive = manifest.get("positive_class")
    positive_index = vocabulary.index(positive) if vocabulary and positive in vocabulary else 1
    return ModelToEvaluate(str(path), kind, vocabulary if kind != REGRESSION else None, True, inputs, positive_index)


def baseline(model: str | os.PathLike[str]) -> ModelToEvaluate:
    """A `model` artifact, or a SavedModel as pushed to the serving directory (no manifest there)."""
    path = Path(model)
    if not path.is_dir():
        raise DataError(f"the baseline model {path} does not exist")
    manifest = artifacts.read_manifest(path, artifacts.MODEL) if (path / artifacts.MANIFEST).is_file() else None
    if not (path / SAVED_MODEL).is_file():
        raise DataError(f"the baseline {path} is neither a model artifact nor a SavedModel directory "
                        f"(no saved_model.pb)")
    kind, classes, inputs = _described(path, "baseline")
    if kind == REGRESSION:
        return ModelToEvaluate(str(path), kind, None, True, inputs)
    vocabulary = _vocabulary(path, manifest)
    if vocabulary is None and classes is not None:
        # A served copy has no vocabulary file: the class count is all that can be compared.
        return ModelToEvaluate(str(path), kind, tuple(f"class {index}" for index in range(classes)), False, inputs)
    return ModelToEvaluate(str(path), kind, vocabulary, True, inputs)


def incomparable(candidate_model: ModelToEvaluate, baseline_model: ModelToEvaluate) -> str | None:
    """Why the baseline cannot be fairly compared with the candidate (another problem, other
    inputs), or None. The candidate is then never blessed over it."""
    where = f"the model in production ({baseline_model.path})"
    if (candidate_model.kind == REGRESSION) != (baseline_model.kind == REGRESSION):
        solves = {True: "a regression", False: "a classification"}
        return (f"{where} solves {solves[baseline_model.kind == REGRESSION]}, the candidate "
                f"{solves[candidate_model.kind == REGRESSION]}: they cannot be compared, and the candidate is not "
                f"pushed over it without --force-push")
    if baseline_model.inputs and candidate_model.inputs and baseline_model.inputs != candidate_model.inputs:
        theirs, mine = dict(baseline_model.inputs), dict(candidate_model.inputs)
        changes = ([f"new {name}" for name in sorted(set(mine) - set(theirs))]
                   + [f"no longer {name}" for name in sorted(set(theirs) - set(mine))]
                   + [f"{name} {theirs[name]} -> {mine[name]}" for name in sorted(set(mine) & set(theirs))
                      if mine[name] != theirs[name]])
        return (f"{where} takes other inputs than the candidate ({', '.join(changes[:4])}): they cannot be compared, "
                f"and the candidate is not pushed over it without --force-push")
    return None


def other_classes(candidate_model: ModelToEvaluate, baseline_model: ModelToEvaluate) -> bool:
    """True when the baseline's class i is not the candidate's class i (as far as can be known)."""
    if candidate_model.kind == REGRESSION or baseline_model.label_vocabulary is None:
        return False
    if not baseline_model.known_vocabulary:
        return len(baseline_model.label_vocabulary) != len(candidate_model.label_vocabulary)
    return baseline_model.label_vocabulary != candidate_model.label_vocabulary
