"""The tf.data input that tune and train share, from the Parquet shards of one split. A split that
fits in `IN_MEMORY_BYTES` is read once and held as tensors, every epoch's batches gathered from
them in a new order of all the rows; a larger one is streamed in record batches through a bounded
shuffle buffer, so the table is never loaded whole. Missing numeric values arrive as NaN and missing categories as ""
(both handled by the preprocessing layers); the label becomes its index in the sorted label
vocabulary.

Why two ways: streaming runs Python (the Parquet reader) in a tf.data thread every epoch and
refills the shuffle buffer before an epoch's first batch, so a small search spends much of its
time there and a trial needs a second core to keep up (measured in docs/parallel-trials.md).
Holding a small split as tensors leaves tf.data's own C++ pipeline, which needs neither.
"""
from __future__ import annotations

import itertools
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.errors import DataError
from components.examples import split_files
from components.problem import REGRESSION
from components.schema import NUMERIC
from components.transform import Transform

log = logging.getLogger("tunepipe.model")

# Rows read from Parquet per record batch, and rows shuffled together when streaming. Both bound
# memory: neither depends on the size of the table.
READ_BATCH_ROWS = 8192
SHUFFLE_BUFFER_ROWS = 10_000
# The largest split held in memory, by `_tensor_bytes`; one tune or train process (each of N tune
# workers) holds its train and eval splits at once.
IN_MEMORY_BYTES = 256 * 2**20
# What a cell costs as a tensor: a float32; a string, TensorFlow's 24-byte tstring (which holds up to
# 22 bytes of text itself) and as much again for longer text (longer still is underestimated).
NUMERIC_CELL_BYTES = 4
STRING_CELL_BYTES = 48


def _feature_arrays(batch: pa.RecordBatch, transform: Transform) -> dict[str, np.ndarray]:
    features = {}
    for feature in transform.features:
        column = batch.column(feature.name)
        if feature.kind == NUMERIC:
            # Nulls become NaN: the model's FillMissing layer replaces them with the train fill value.
            values = pc.cast(column, pa.float32()).to_numpy(zero_copy_only=False)
        else:
            values = pc.fill_null(pc.cast(column, pa.string()), "").to_numpy(zero_copy_only=False)
        features[feature.key] = values.reshape(-1, 1)
    return features


def _label_indices(batch: pa.RecordBatch, transform: Transform) -> np.ndarray:
    """Index of each row's label in the sorted label vocabulary; -1 for a label the train split never had."""
    indices = pc.index_in(pc.cast(batch.column(transform.label), pa.string()),
                          value_set=pa.array(transform.label_vocabulary, pa.string()))
    return pc.fill_null(indices, -1).to_numpy(zero_copy_only=False).astype(np.int32)


def _targets(batch: pa.RecordBatch, transform: Transform) -> tuple[np.ndarray, np.ndarray]:
    """What the model is trained to output for each row, and which rows can be scored at all.

    multiclass: the class index; binary: 1.0 for the positive class, else 0.0; regression: the
    label itself (the loss standardizes it). A class the train split never had cannot be scored.
    """
    if transform.kind == REGRESSION:
        values = pc.cast(batch.column(transform.label), pa.float32()).to_numpy(zero_copy_only=False)
        return values.reshape(-1, 1), ~np.isnan(values)
    indices = _label_indices(batch, transform)
    if transform.kind == "binary":
        return (indices == transform.positive_index).astype(np.float32).reshape(-1, 1), indices >= 0
    return indices, indices >= 0


def dataset(examples: str | os.PathLike[str], split: str, transform: Transform, batch_size: int, *,
            shuffle: bool = False, seed: int | None = None, with_labels: bool = True):
    """A `tf.data.Dataset` of (features, target) batches of one split's Parquet shards.

    Held in memory when the split fits in `IN_MEMORY_BYTES`, else streamed. With `shuffle`, the
    rows come in a new order every epoch: all of them shuffled when held in memory; streamed, the
    shard order changes and rows are shuffled in a bounded buffer. Rows whose label is not in the
    label vocabulary cannot be scored and are left out.
    """
    import tensorflow as tf

    files = split_files(examples, split)
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
                labels, known = _targets(batch, transform)
                if not known.all():
                    unknown += int((~known).sum())
                    features = {name: values[known] for name, values in features.items()}
                    labels = labels[known]
                yield features, labels
        if unknown and not unknown_labels_reported:
            unknown_labels_reported = True
            log.warning("%s split: %d row(s) have a label the train split does not have; they are left out",
                        split, unknown)

    feature_spec = {feature.key: tf.TensorSpec([None, 1], tf.float32 if feature.kind == NUMERIC else tf.string)
                    for feature in transform.features}
    target_spec = (tf.TensorSpec([None], tf.int32) if transform.kind == "multiclass"
                   else tf.TensorSpec([None, 1], tf.float32))
    signature = (feature_spec, target_spec) if with_labels else feature_spec
    rows_in_split = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    if 0 < _tensor_bytes(rows_in_split, transform, with_labels) <= IN_MEMORY_BYTES:
        # Whole columns as tensors on the CPU (never on a GPU beside the model); each batch gathers its
        # rows from them, so only row numbers are shuffled, not a copy of every row.
        with tf.device("/CPU:0"):
            whole = tf.nest.map_structure(lambda spec, *parts: tf.convert_to_tensor(np.concatenate(parts), spec.dtype),
                                          signature, *record_batches())
        count = int(tf.nest.flatten(whole)[0].shape[0])
        indices = tf.data.Dataset.range(count)
        if shuffle:
            indices = indices.shuffle(count or 1, seed=seed, reshuffle_each_iteration=True)
        batches = indices.batch(batch_size).map(
            lambda rows: tf.nest.map_structure(lambda column: tf.gather(column, rows), whole))
        return batches.prefetch(tf.data.AUTOTUNE)
    rows = tf.data.Dataset.from_generator(record_batches, output_signature=signature).unbatch()
    if shuffle:
        rows = rows.shuffle(SHUFFLE_BUFFER_ROWS, seed=seed, reshuffle_each_iteration=True)
    return rows.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _tensor_bytes(rows: int, transform: Transform, with_labels: bool) -> int:
    """About what `rows` rows of the model's columns take as tensors."""
    numeric = sum(feature.kind == NUMERIC for feature in transform.features)
    strings = len(transform.features) - numeric
    return rows * (numeric * NUMERIC_CELL_BYTES + strings * STRING_CELL_BYTES + with_labels * NUMERIC_CELL_BYTES)
