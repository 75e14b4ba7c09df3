"""The train step: train the model with the best hyperparameters (or the defaults), early-stopped on
the eval split, optionally warm-started from an earlier model, and export it for serving.

Output layout (a `model` artifact). The artifact directory is itself the SavedModel, so copying it
to `<serving_dir>/<model>/<version>/` gives TF Serving's layout:

    saved_model.pb, variables/, assets/, fingerprint.pb
                            signatures `serving_default`: serialized tf.Example strings (input
                            `examples`, numeric features as float_list, categorical as bytes_list)
                            -> `probabilities` [batch, classes] and `classes` (the predicted label);
                            `serving_raw`: one [batch, 1] tensor per raw feature -> the same outputs
    model.keras             the Keras model (preprocessing included), for warm starts and notebooks
    label_vocabulary.txt    class i of `probabilities` is line i
    hyperparameters.json    the hyperparameters the model was built with
    metrics.json            accuracy and loss on the eval split
    history.csv             per-epoch train and eval metrics
    _manifest.json          written last

Preprocessing lives inside the exported model (`components.preprocess.build_preprocessing`), so a
client sends raw feature values and missing or unseen ones are handled as in training.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components import artifacts, ingest, model
from components.preprocess import Transform
from components.schema import NUMERIC
from pipeline.config import SearchSpaceConfig, TrainingConfig
from pipeline.errors import DataError, TunepipeError

log = logging.getLogger("tunepipe.train")

KIND = "model"
KERAS_MODEL = "model.keras"
LABEL_VOCABULARY = "label_vocabulary.txt"
HYPERPARAMETERS = "hyperparameters.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
SERVING_SIGNATURE = "serving_default"
RAW_SIGNATURE = "serving_raw"
EXAMPLES_INPUT = "examples"
PROBABILITIES = "probabilities"
CLASSES = "classes"
_PROGRESS_EVERY_EPOCHS = 10


@dataclass(frozen=True)
class TrainResult:
    path: str
    metrics: dict[str, float]  # on the eval split: accuracy, loss
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
        return model.model_values(given) if given is not None else None
    path = Path(given)
    if path.is_dir():
        from components import tune

        artifacts.read_manifest(path, tune.KIND)
        path = path / tune.BEST_HYPERPARAMETERS
    return model.read_hyperparameters(path)


# --- warm start ---------------------------------------------------------------------------------

def _previous_weights(source: Path) -> dict[str, np.ndarray]:
    """Weights by variable path from a `.keras` file, a directory holding one, or a SavedModel."""
    if source.is_file() and source.suffix == ".keras":
        keras_file = source
    elif (source / KERAS_MODEL).is_file():
        keras_file = source / KERAS_MODEL
    elif (source / "saved_model.pb").is_file():
        import tensorflow as tf

        loaded = tf.saved_model.load(str(source))
        return {variable.name.removesuffix(":0"): variable.numpy() for variable in loaded.variables}
    else:
        raise FileNotFoundError(f"no {KERAS_MODEL} or saved_model.pb in it")
    import keras

    import components.layers  # noqa: F401  (registers FillMissing for loading)

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


# --- export -------------------------------------------------------------------------------------

def _example_spec(transform: Transform) -> dict[str, Any]:
    import tensorflow as tf

    # A feature missing from an example gets the value a missing one has in training: NaN or "".
    return {feature.name: tf.io.FixedLenFeature([1], tf.float32, default_value=[math.nan])
            if feature.kind == NUMERIC else tf.io.FixedLenFeature([1], tf.string, default_value=[""])
            for feature in transform.features}


def export_saved_model(keras_model, transform: Transform, path: str | os.PathLike[str]) -> None:
    """Write `keras_model` as a SavedModel with the tf.Example and raw-feature serving signatures."""
    import keras
    import tensorflow as tf

    classes = tf.constant(list(transform.label_vocabulary))
    example_spec = _example_spec(transform)

    def predict(features):
        probabilities = keras_model(features, training=False)
        return {PROBABILITIES: probabilities, CLASSES: tf.gather(classes, tf.argmax(probabilities, axis=-1))}

    def serve_examples(examples):
        return predict(tf.io.parse_example(examples, example_spec))

    raw_spec = {feature.name: tf.TensorSpec([None, 1], tf.float32 if feature.kind == NUMERIC else tf.string,
                                            name=feature.name) for feature in transform.features}
    archive = keras.export.ExportArchive()
    archive.track(keras_model)
    archive.add_endpoint(SERVING_SIGNATURE, serve_examples,
                         input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    archive.add_endpoint(RAW_SIGNATURE, predict, input_signature=[raw_spec])
    archive.write_out(str(path), verbose=False)


# --- tracking -----------------------------------------------------------------------------------

class _EpochReporter:
    """Per-epoch progress lines and, with an MLflow run, per-epoch metrics (step = epoch)."""

    def __init__(self, run_id: str | None, total_epochs: int):
        self.run_id = run_id
        self.total_epochs = total_epochs
        self.client = None
        if run_id is not None:
            import mlflow

            self.client = mlflow.MlflowClient()

    def callback(self):
        import keras

        reporter = self

        class Report(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                reporter.epoch_end(epoch, logs or {})

        return Report()

    def epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.client is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(name, float(value), now, epoch) for name, value in logs.items()
                       if isinstance(value, (int, float)) and math.isfinite(float(value))]
            if metrics:
                self.client.log_batch(self.run_id, metrics=metrics)
        if (epoch + 1) % _PROGRESS_EVERY_EPOCHS == 0:
            shown = ", ".join(f"{name} {float(value):.4f}" for name, value in sorted(logs.items())
                              if isinstance(value, (int, float)))
            log.info("train: epoch %d/%d: %s", epoch + 1, self.total_epochs, shown)


def _run_id(tracking: str | None) -> str | None:
    if tracking is not None:
        return tracking
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active is not None else None


# --- the step -----------------------------------------------------------------------------------

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
        tracking: str | None = None) -> TrainResult:
    """Train, evaluate on the eval split and export the `model` artifact at `out`.

    `hyperparameters` is a dict, a JSON file or a `tuning` artifact; values it leaves out (all of
    them when it is None: tuning off) are the defaults of `search_space`. `warm_start` is an earlier
    model (a model artifact, a SavedModel directory or a .keras file) whose weights are loaded when
    the architecture matches. `tracking` is the MLflow run to log into (default: the active run).
    """
    out = Path(out)
    examples_manifest = artifacts.read_manifest(examples, ingest.KIND)
    transform_manifest = artifacts.read_manifest(transform, "transform")
    loaded = Transform.read(transform)
    space = search_space or model.DEFAULT_SEARCH_SPACE
    given = resolve_hyperparameters(hyperparameters)

    import keras

    hp = model.hyperparameters(given, space)
    values = model.model_values(hp.values)
    unused = sorted(set(given or {}) - set(values))
    if unused:
        log.warning("train: ignoring hyperparameters the model does not have: %s", ", ".join(unused))
    source = "the given hyperparameters" if given else "the default hyperparameters (no tuning result)"
    log.info("train: building the model from %s: %s", source, json.dumps(values, sort_keys=True))
    keras.utils.set_random_seed(config.seed)
    keras_model = model.build_model(hp, loaded, space)

    warm_started, warm_start_note = False, None
    if warm_start is not None:
        warm_started, warm_start_note = warm_start_from(keras_model, warm_start)
        (log.info if warm_started else log.warning)("train: %s", warm_start_note)

    train_split = model.dataset(examples, "train", loaded, config.batch_size, shuffle=True, seed=config.seed)
    eval_split = model.dataset(examples, "eval", loaded, config.batch_size)
    run_id = _run_id(tracking)
    reporter = _EpochReporter(run_id, config.epochs)
    mode = "min" if config.monitor.endswith("loss") else "max"
    early_stopping = keras.callbacks.EarlyStopping(monitor=config.monitor, mode=mode,
                                                   patience=config.early_stopping_patience,
                                                   restore_best_weights=True)
    started = time.monotonic()
    with model.expected_warnings():
        # shuffle=False: the dataset shuffles itself (Keras cannot shuffle a stream and warns if asked).
        history = keras_model.fit(train_split, validation_data=eval_split, epochs=config.epochs, shuffle=False,
                                  verbose=0, callbacks=[early_stopping, keras.callbacks.TerminateOnNaN(),
                                                        reporter.callback()])
    losses = history.history.get("loss", [])
    if any(not math.isfinite(loss) for loss in losses):
        raise TunepipeError(f"training diverged: the loss became NaN in epoch {len(losses)} with learning rate "
                            f"{values.get('learning_rate')}; lower it or re-tune")
    epochs_trained = len(losses)
    best_epoch = early_stopping.best_epoch + 1
    with model.expected_warnings():
        scores = keras_model.evaluate(eval_split, verbose=0, return_dict=True)
    metrics = {"accuracy": float(scores["accuracy"]), "loss": float(scores["loss"])}
    if not math.isfinite(metrics["loss"]):
        raise DataError(f"{examples}: the eval split gives a non-finite loss; check it for unusable rows")
    log.info("train: %d epochs in %.0fs, best epoch %d; eval accuracy %.4f, loss %.4f", epochs_trained,
             time.monotonic() - started, best_epoch, metrics["accuracy"], metrics["loss"])

    with artifacts.building(out) as partial:
        export_saved_model(keras_model, loaded, partial)
        keras_model.save(partial / KERAS_MODEL)
        (partial / LABEL_VOCABULARY).write_text("".join(f"{label}\n" for label in loaded.label_vocabulary))
        model.write_hyperparameters(partial / HYPERPARAMETERS, values)
        (partial / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        _write_history(partial / HISTORY, history.history)
        manifest = artifacts.write_manifest(
            partial, KIND, "train", metrics=metrics, hyperparameters=values, epochs_trained=epochs_trained,
            best_epoch=best_epoch, warm_started=warm_started, warm_start_note=warm_start_note,
            label_vocabulary=list(loaded.label_vocabulary), signatures=[SERVING_SIGNATURE, RAW_SIGNATURE],
            examples=str(examples), examples_digest=examples_manifest["digest"], transform=str(transform),
            transform_digest=transform_manifest["digest"])
    log.info("train: exported the model to %s", out)

    if run_id is not None:
        _log_to_mlflow(run_id, values, config, metrics, epochs_trained, best_epoch, warm_start_note, out)
    return TrainResult(str(out), metrics, values, epochs_trained, best_epoch, warm_started, warm_start_note,
                       manifest["digest"])


def _log_to_mlflow(run_id: str, values: dict[str, Any], config: TrainingConfig, metrics: dict[str, float],
                   epochs_trained: int, best_epoch: int, warm_start_note: str | None, out: Path) -> None:
    import mlflow
    from mlflow.entities import Metric, Param

    client = mlflow.MlflowClient()
    params = {**values, **{f"training.{name}": value for name, value in config.model_dump().items()}}
    client.log_batch(run_id, params=[Param(name, str(value)) for name, value in params.items()])
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"eval_{name}", value, now, 0) for name, value in metrics.items()]
                     + [Metric("epochs_trained", epochs_trained, now, 0), Metric("best_epoch", best_epoch, now, 0)])
    if warm_start_note:
        client.set_tag(run_id, "tunepipe.warm_start", warm_start_note[:5000])
    client.log_artifacts(run_id, str(out), artifact_path="model")
