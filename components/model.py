"""The model module: the search space, `build_model(hp, transform)`, the default hyperparameters and
the tf.data input function that tune and train share.

The network is the transform's preprocessing layers (`components.preprocess.build_preprocessing`)
followed by a searched stack of dense layers and a softmax over the label vocabulary, so the model
that is tuned, trained and exported encodes raw features itself.

The search space is declared in the config (`tuner.search_space`, `pipeline.config.SearchSpaceConfig`,
whose defaults are the default space for tabular data) and turned into Keras Tuner hyperparameters
here. Training without a tuning result uses each hyperparameter's default (`default_hyperparameters`).

Examples are streamed from the Parquet shards of a split in record batches; the whole table is never
loaded. Missing numeric values arrive as NaN and missing categories as "" (both handled by the
preprocessing layers); the label becomes its index in the sorted label vocabulary.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components import ingest
from components.preprocess import Transform
from components.schema import NUMERIC
from pipeline.config import HyperparameterSpec, SearchSpaceConfig
from pipeline.errors import DataError

log = logging.getLogger("tunepipe.model")

DEFAULT_SEARCH_SPACE = SearchSpaceConfig()
OUTPUT_LAYER = "probabilities"
# Keras Tuner's own bookkeeping values (Hyperband epochs, brackets): not model hyperparameters.
TUNER_KEYS_PREFIX = "tuner/"
# Rows read from Parquet per record batch, and rows shuffled together in training. Both bound memory:
# neither depends on the size of the table.
READ_BATCH_ROWS = 8192
SHUFFLE_BUFFER_ROWS = 10_000


# --- hyperparameters --------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """The values `build_model` reads from the hyperparameters."""

    units: tuple[int, ...]  # one entry per hidden layer
    dropout: float
    activation: str
    batch_norm: bool
    optimizer: str
    learning_rate: float


def _declare(hp, name: str, spec: HyperparameterSpec):
    """Register one hyperparameter with Keras Tuner and return its value for this trial."""
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


def architecture(hp, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE) -> Architecture:
    """Declare the search space on `hp` (a `keras_tuner.HyperParameters`) and read this trial's values.

    Units are declared per hidden layer, each active only when there are enough layers, so a
    Bayesian search does not model units of layers the network does not have.
    """
    num_layers = int(_declare(hp, "num_layers", space.num_layers))
    layer_counts = _possible_values(space.num_layers)
    units = []
    for index in range(num_layers):
        with hp.conditional_scope("num_layers", [count for count in layer_counts if count > index]):
            units.append(int(_declare(hp, f"units_{index}", space.units)))
    return Architecture(
        units=tuple(units),
        dropout=float(_declare(hp, "dropout", space.dropout)),
        activation=str(_declare(hp, "activation", space.activation)),
        batch_norm=bool(_declare(hp, "batch_norm", space.batch_norm)),
        optimizer=str(_declare(hp, "optimizer", space.optimizer)),
        learning_rate=float(_declare(hp, "learning_rate", space.learning_rate)),
    )


def hyperparameters(values: dict[str, Any] | None = None, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE):
    """A `keras_tuner.HyperParameters` holding `values`, with the space's defaults for what they leave out."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.values.update(model_values(values or {}))
    architecture(hp, space)
    # Keep only what the model read: e.g. units of a layer that `num_layers` leaves out are dropped.
    active = {declared.name for declared in hp.space if hp.is_active(declared)}
    hp.values = {name: value for name, value in hp.values.items() if name in active}
    return hp


def default_hyperparameters(space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE) -> dict[str, Any]:
    """Each hyperparameter's default: what training uses when tuning is off."""
    return dict(hyperparameters(None, space).values)


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


# --- the model --------------------------------------------------------------------------------

def _optimizer(name: str, learning_rate: float):
    import keras

    if name == "sgd":
        # Plain SGD without momentum barely moves in a short trial; momentum makes it a fair contender.
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    factories = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "nadam": keras.optimizers.Nadam,
                 "rmsprop": keras.optimizers.RMSprop}
    return factories[name](learning_rate)


def build_model(hp, transform: Transform, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE):
    """The compiled Keras model for the hyperparameters `hp`: preprocessing, dense layers, softmax.

    Layer names are fixed (`dense_0`, `dense_1`, ..., `probabilities`) so that weights can be matched
    by name when warm-starting from an earlier model.
    """
    import keras

    from components.preprocess import build_preprocessing

    shape = architecture(hp, space)
    inputs, hidden = build_preprocessing(transform)
    for index, units in enumerate(shape.units):
        hidden = keras.layers.Dense(units, name=f"dense_{index}")(hidden)
        if shape.batch_norm:
            hidden = keras.layers.BatchNormalization(name=f"batch_norm_{index}")(hidden)
        hidden = keras.layers.Activation(shape.activation, name=f"{shape.activation}_{index}")(hidden)
        if shape.dropout > 0:
            hidden = keras.layers.Dropout(shape.dropout, name=f"dropout_{index}")(hidden)
    outputs = keras.layers.Dense(len(transform.label_vocabulary), activation="softmax", name=OUTPUT_LAYER)(hidden)
    model = keras.Model(inputs, outputs, name="tunepipe")
    # XLA compilation costs more than it saves on networks this small (measured: bench/tuning).
    model.compile(optimizer=_optimizer(shape.optimizer, shape.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
    return model


@contextlib.contextmanager
def expected_warnings():
    """Silence the Keras warnings that are expected here and say nothing to a user."""
    with warnings.catch_warnings():
        # The streamed dataset has no known length: Keras finds its end in the first epoch and says so.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        # Hyperband continues a trial from its checkpoint into a freshly compiled model, whose optimizer
        # has no state yet to load into: the optimizer starts over, as Keras Tuner intends.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield


# --- input ------------------------------------------------------------------------------------

def _feature_arrays(batch: pa.RecordBatch, transform: Transform) -> dict[str, np.ndarray]:
    features = {}
    for feature in transform.features:
        column = batch.column(feature.name)
        if feature.kind == NUMERIC:
            # Nulls become NaN: the model's FillMissing layer replaces them with the train fill value.
            values = pc.cast(column, pa.float32()).to_numpy(zero_copy_only=False)
        else:
            values = pc.fill_null(pc.cast(column, pa.string()), "").to_numpy(zero_copy_only=False)
        features[feature.name] = values.reshape(-1, 1)
    return features


def _label_indices(batch: pa.RecordBatch, transform: Transform) -> np.ndarray:
    """Index of each row's label in the sorted label vocabulary; -1 for a label the train split never had."""
    indices = pc.index_in(pc.cast(batch.column(transform.label), pa.string()),
                          value_set=pa.array(transform.label_vocabulary, pa.string()))
    return pc.fill_null(indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)


def dataset(examples: str | os.PathLike[str], split: str, transform: Transform, batch_size: int, *,
            shuffle: bool = False, seed: int | None = None, with_labels: bool = True):
    """A `tf.data.Dataset` of (features, label index) batches streamed from one split's Parquet shards.

    With `shuffle`, the shard order changes every epoch and rows are shuffled in a bounded buffer.
    Rows whose label is not in the label vocabulary cannot be scored and are left out.
    """
    import tensorflow as tf

    files = ingest.split_files(examples, split)
    if not files:
        raise DataError(f"{examples}: the {split} split has no data files")
    columns = [feature.name for feature in transform.features] + ([transform.label] if with_labels else [])
    epochs = itertools.count()
    unknown_labels_reported = False

    def record_batches():
        nonlocal unknown_labels_reported
        order = list(files)
        if shuffle:
            np.random.default_rng((seed or 0) + next(epochs)).shuffle(order)
        unknown = 0
        for path in order:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
                features = _feature_arrays(batch, transform)
                if not with_labels:
                    yield features
                    continue
                labels = _label_indices(batch, transform)
                known = labels >= 0
                if not known.all():
                    unknown += int((~known).sum())
                    features = {name: values[known] for name, values in features.items()}
                    labels = labels[known]
                yield features, labels
        if unknown and not unknown_labels_reported:
            unknown_labels_reported = True
            log.warning("%s split: %d row(s) have a label the train split does not have; they are left out",
                        split, unknown)

    feature_spec = {feature.name: tf.TensorSpec([None, 1], tf.float32 if feature.kind == NUMERIC else tf.string)
                    for feature in transform.features}
    signature = (feature_spec, tf.TensorSpec([None], tf.int32)) if with_labels else feature_spec
    rows = tf.data.Dataset.from_generator(record_batches, output_signature=signature).unbatch()
    if shuffle:
        rows = rows.shuffle(SHUFFLE_BUFFER_ROWS, seed=seed, reshuffle_each_iteration=True)
    return rows.batch(batch_size).prefetch(tf.data.AUTOTUNE)
