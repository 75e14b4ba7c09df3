"""The train step: train the model with the best hyperparameters (or the defaults), early-stopped on
the eval split, optionally warm-started from an earlier model, and export it for serving.

Output layout (a `model` artifact). The artifact directory is itself the SavedModel, so copying it
to `<serving_dir>/<model>/<version>/` gives TF Serving's layout:

    saved_model.pb, variables/, assets/, fingerprint.pb
                            the serving contract of `components.serving`: `serving_default` over
                            serialized tf.Examples, `serving_raw` over raw feature tensors
    model.keras             the Keras model (preprocessing included), for warm starts and notebooks
    label_vocabulary.txt    class i of `probabilities` is line i
    hyperparameters.json    the hyperparameters the model was built with
    metrics.json            accuracy and loss on the eval split
    history.csv             per-epoch train and eval metrics
    _manifest.json          written last

Warm starts are `components.train.warm_start`, the export `components.train.export`, when training
stops `components.train.early_stopping`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import artifacts
from components import problem as problems
from components.errors import DataError, TunepipeError
from components.model import data, hypermodel, network
from components.model.hyperparameters import (
    DEFAULT_SEARCH_SPACE,
    for_values,
    model_values,
    read_hyperparameters,
    write_hyperparameters,
)
from components.model.hypermodel import HypermodelSource
from components.model.space import SearchSpaceConfig
from components.serving import FEATURES_FILE, LABEL_VOCABULARY, RAW_SIGNATURE, SERVING_SIGNATURE
from components.train import early_stopping as stopping
from components.train.config import TrainingConfig
from components.train.export import export_saved_model, features_document
from components.train.warm_start import KERAS_MODEL, warm_start_from
from components.transform import Transform
from components.tune.artifact import BEST_HYPERPARAMETERS

log = logging.getLogger("tunepipe.train")

HYPERPARAMETERS = "hyperparameters.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
_PROGRESS_EVERY_EPOCHS = 10
# Called after each epoch with its number (0-based) and metrics, e.g. to record them.
EpochObserver = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    path: str
    metrics: dict[str, float]  # on the eval split: the loss and what the model logs (components.problem)
    hyperparameters: dict[str, Any]
    epochs_trained: int
    best_epoch: int  # 1-based; its weights are the ones exported
    warm_started: bool
    warm_start_note: str | None  # why a warm start was or was not used
    digest: str


# --- hyperparameters ----------------------------------------------------------------------------

def resolve_hyperparameters(given: dict[str, Any] | str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """Hyperparameter values from a dict, a JSON file, or a `tuning` artifact directory."""
    if given is None or isinstance(given, dict):
        return model_values(given) if given is not None else None
    path = Path(given)
    if path.is_dir():
        artifacts.read_manifest(path, artifacts.TUNING)
        path = path / BEST_HYPERPARAMETERS
    return read_hyperparameters(path)


def _epoch_callback(total_epochs: int, observer: EpochObserver | None):
    """A Keras callback that reports each epoch to `observer` and writes a progress line every few."""
    import keras

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            numbers = {name: float(value) for name, value in (logs or {}).items()
                       if isinstance(value, (int, float)) and math.isfinite(float(value))}
            if observer is not None:
                observer(epoch, numbers)
            if (epoch + 1) % _PROGRESS_EVERY_EPOCHS == 0:
                shown = ", ".join(f"{name} {value:.4f}" for name, value in sorted(numbers.items()))
                log.info("train: epoch %d/%d: %s", epoch + 1, total_epochs, shown)

    return Report()


def _write_history(path: Path, history: dict[str, list[float]]) -> None:
    names = sorted(history)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *names])
        for index in range(len(history[names[0]]) if names else 0):
            writer.writerow([index + 1, *(history[name][index] for name in names)])


def run(examples: str | os.PathLike[str], transform: str | os.PathLike[str], out: str | os.PathLike[str],
        config: TrainingConfig, hyperparameters: dict[str, Any] | str | os.PathLike[str] | None = None,
        warm_start: str | os.PathLike[str] | None = None, *, search_space: SearchSpaceConfig | None = None,
        epoch_observer: EpochObserver | None = None, hypermodel_source: HypermodelSource | None = None
        ) -> TrainResult:
    """Train, evaluate on the eval split and export the `model` artifact at `out`.

    `hyperparameters` is a dict, a JSON file or a `tuning` artifact; values it leaves out (all of
    them when it is None: tuning off) are the defaults of `search_space`. `warm_start` is an earlier
    model (a model artifact, a SavedModel directory or a .keras file) whose weights are loaded when
    the architecture matches. `epoch_observer` hears of every epoch's metrics. `hypermodel_source`
    is the user's model module, whose declared defaults fill what the hyperparameters leave out.
    """
    out = Path(out)
    examples_manifest = artifacts.read_manifest(examples, artifacts.EXAMPLES)
    transform_manifest = artifacts.read_manifest(transform, artifacts.TRANSFORM)
    loaded = Transform.read(transform)
    space = search_space or DEFAULT_SEARCH_SPACE
    given = resolve_hyperparameters(hyperparameters)

    import keras

    problems.check_metric(config.resolved_monitor, loaded.kind, "training.monitor")
    if hypermodel_source is not None:
        import keras_tuner

        hp = keras_tuner.HyperParameters()
        hp.values.update(given or {})
        keras_model = hypermodel.build_model(hp, loaded, hypermodel_source, space)
        active = {found.name for found in hp.space if hp.is_active(found)}
        hp.values = {name: value for name, value in hp.values.items() if name in active}
    else:
        hp = for_values(given, space, loaded.kind)
    values = model_values(hp.values)
    unused = sorted(set(given or {}) - set(values))
    if unused:
        log.warning("train: ignoring hyperparameters the model does not have: %s", ", ".join(unused))
    source = "the given hyperparameters" if given else "the default hyperparameters (no tuning result)"
    log.info("train: building the model from %s: %s", source, json.dumps(values, sort_keys=True))
    keras.utils.set_random_seed(config.seed)
    keras_model = (hypermodel.build_model(hp, loaded, hypermodel_source, space) if hypermodel_source
                   else network.build_model(hp, loaded, space))

    warm_started, warm_start_note = False, None
    if warm_start is not None:
        warm_started, warm_start_note = warm_start_from(keras_model, warm_start)
        (log.info if warm_started else log.warning)("train: %s", warm_start_note)

    train_split = data.dataset(examples, "train", loaded, config.batch_size, shuffle=True, seed=config.seed)
    eval_split = data.dataset(examples, "eval", loaded, config.batch_size)
    early_stopping = stopping.callback(config.resolved_monitor, config.early_stopping_patience,
                                       stopping.min_delta(config.resolved_monitor, config.early_stopping_min_delta,
                                                          loaded.label_std))
    started = time.monotonic()
    with network.expected_warnings():
        # shuffle=False: the dataset shuffles itself (Keras cannot shuffle a stream and warns if asked).
        history = keras_model.fit(train_split, validation_data=eval_split, epochs=config.epochs, shuffle=False,
                                  verbose=0, callbacks=[early_stopping, keras.callbacks.TerminateOnNaN(),
                                                        _epoch_callback(config.epochs, epoch_observer)])
    losses = history.history.get("loss", [])
    if any(not math.isfinite(loss) for loss in losses):
        raise TunepipeError(f"training diverged: the loss became NaN in epoch {len(losses)} with learning rate "
                            f"{values.get('learning_rate')}; lower it or re-tune")
    epochs_trained = len(losses)
    best_epoch = early_stopping.best_epoch + 1
    with network.expected_warnings():
        scores = keras_model.evaluate(eval_split, verbose=0, return_dict=True)
    metrics = {name: float(value) for name, value in scores.items()}
    if not math.isfinite(metrics["loss"]):
        raise DataError(f"{examples}: the eval split gives a non-finite loss; check it for unusable rows")
    log.info("train: %d epochs in %.0fs, best epoch %d; eval %s", epochs_trained, time.monotonic() - started,
             best_epoch, ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))

    with artifacts.building(out) as partial:
        export_saved_model(keras_model, loaded, partial)
        keras_model.save(partial / KERAS_MODEL)
        if loaded.label_vocabulary:
            (partial / LABEL_VOCABULARY).write_text("".join(f"{label}\n" for label in loaded.label_vocabulary))
        (partial / FEATURES_FILE).write_text(json.dumps(features_document(loaded), indent=2) + "\n")
        write_hyperparameters(partial / HYPERPARAMETERS, values)
        (partial / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        _write_history(partial / HISTORY, history.history)
        manifest = artifacts.write_manifest(
            partial, artifacts.MODEL, "train", metrics=metrics, hyperparameters=values, epochs_trained=epochs_trained,
            best_epoch=best_epoch, warm_started=warm_started, warm_start_note=warm_start_note,
            problem_type=loaded.problem_type, problem=loaded.kind, label=loaded.label,
            label_vocabulary=list(loaded.label_vocabulary), positive_class=loaded.positive_class,
            label_mean=loaded.label_mean, label_std=loaded.label_std, signatures=[SERVING_SIGNATURE, RAW_SIGNATURE],
            examples=str(examples), examples_digest=examples_manifest["digest"], transform=str(transform),
            transform_digest=transform_manifest["digest"])
    log.info("train: exported the model to %s", out)

    return TrainResult(str(out), metrics, values, epochs_trained, best_epoch, warm_started, warm_start_note,
                       manifest["digest"])
