"""Feeding the held-out split to TFMA: Parquet shards read in Arrow batches, each batch turned
into tf.Examples in one vectorized call (tfx_bsl's encoder).

For TFMA's metrics over whole batches (`components.evaluate.batched_metrics`), the rows of each
table read are first grouped by the slice columns (`group_by`), so that every example of a batch
falls in the same slices. Each batch is counted once TFMA has taken it
(`components.evaluate.progress`).

The features are laid out as the model's `serving_default` signature parses them (numbers as
float_list, text as bytes_list, a missing value as an empty feature, which the model fills as in
training), with the raw label and any slice columns for slicing. For a classifier, the label's
index in the candidate's label vocabulary (`LABEL_INDEX_KEY`, int64) is added: TFMA compares that
index with the `probabilities` output. A regression label is compared with `predictions` as it is.
"""
from __future__ import annotations

import logging
from typing import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.evaluate import progress
from components.schema import NUMERIC

log = logging.getLogger("tunepipe.evaluate")

# The label as an index into the candidate's label vocabulary: what TFMA compares with `probabilities`.
LABEL_INDEX_KEY = "__tunepipe_label_index__"
# Rows per Arrow batch handed to TFMA (one model call each).
BATCH_ROWS = 4096
_PROGRESS_EVERY_ROWS = 100_000


def list_array(values: pa.Array, item_type: pa.DataType) -> pa.LargeListArray:
    """One value per row as a one-element list; a null value becomes a null, empty list (an absent
    feature), laid out as the tf.Example decoder lays it out: tensor adapters read the offsets alone."""
    values = values.cast(item_type)
    present = values.is_valid().to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(present, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets), values.drop_null(), mask=pa.array(~present))


def batches(table: pa.Table, group_by: tuple[str, ...], batch_rows: int) -> Iterator[pa.Table]:
    """`table` in single-chunk tables of at most `batch_rows` rows; with `group_by`, the rows of
    each share their values of those columns (a missing value is a value of its own)."""
    if group_by and table.num_rows:
        key = np.zeros(table.num_rows, np.int64)
        for name in group_by:
            codes = pc.dictionary_encode(table.column(name).combine_chunks())
            key = key * (len(codes.dictionary) + 1) + codes.indices.fill_null(-1).to_numpy() + 1
        order = np.argsort(key, kind="stable")
        key = key[order]
        table = table.take(pa.array(order))
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        groups = zip(starts.tolist(), np.r_[starts[1:], len(key)].tolist())
    else:
        groups = [(0, table.num_rows)]
    for first, end in groups:
        for start in range(first, end, batch_rows):
            yield table.slice(start, min(batch_rows, end - start)).combine_chunks()


class ToTFMAInputs(beam.DoFn):
    """A Parquet table in, Arrow record batches of tf.Example columns plus the serialized examples out."""

    def __init__(self, columns: dict[str, str], label: str, vocabulary: tuple[str, ...] | None,
                 arrow_schema: pa.Schema, raw_column: str, batch_rows: int, group_by: tuple[str, ...] = (),
                 progress_token: str | None = None):
        self._columns = columns  # name -> NUMERIC or CATEGORICAL
        self._label = label
        self._vocabulary = vocabulary  # None: a regression label, fed as it is
        self._arrow_schema = arrow_schema
        self._raw_column = raw_column
        self._batch_rows = batch_rows
        self._group_by = group_by  # columns whose values every row of a batch shares
        self._progress_token = progress_token
        self._rows = 0

    def process(self, table: pa.Table) -> Iterator[pa.RecordBatch]:
        from tfx_bsl.coders import example_coder

        if self._vocabulary is not None:
            index = pc.index_in(pc.cast(table.column(self._label), pa.string()),
                                value_set=pa.array(self._vocabulary, pa.string()))
            table = table.append_column(LABEL_INDEX_KEY, index).filter(pc.is_valid(index))
        for part in batches(table, self._group_by, self._batch_rows):
            arrays = []
            for name in self._arrow_schema.names:
                if name == self._raw_column:
                    continue
                item = self._arrow_schema.field(name).type.value_type
                values = part.column(name).chunk(0) if part.column(name).num_chunks else pa.array([], item)
                if name != LABEL_INDEX_KEY and self._columns[name] != NUMERIC:
                    values = values.cast(pa.string())
                arrays.append(list_array(values, item))
            features = pa.RecordBatch.from_arrays(arrays, schema=pa.schema(
                [field for field in self._arrow_schema if field.name != self._raw_column]))
            serialized = pa.array(example_coder.RecordBatchToExamples(features), pa.large_binary())
            raw = pa.LargeListArray.from_arrays(pa.array(np.arange(len(serialized) + 1, dtype=np.int64)), serialized)
            yield pa.RecordBatch.from_arrays(arrays + [raw], schema=self._arrow_schema)
            # Beam runs the fused stages downstream before the generator resumes: TFMA has taken the batch.
            progress.add(self._progress_token, part.num_rows)
            before, self._rows = self._rows, self._rows + part.num_rows
            if self._rows // _PROGRESS_EVERY_ROWS > before // _PROGRESS_EVERY_ROWS:
                log.info("evaluate: %d rows fed to TFMA", self._rows)


def tfx_io(columns: dict[str, str], indexed_label: bool):
    """The tfx_bsl reader these tf.Examples would be decoded with: its Arrow schema and tensor
    representations are the layout our batches use, so TFMA reads them as it reads TFRecords."""
    import tensorflow_model_analysis as tfma
    from tensorflow_metadata.proto.v0 import schema_pb2
    from tfx_bsl.public import tfxio

    metadata = schema_pb2.Schema()
    for name, kind in columns.items():
        metadata.feature.add(name=name, type=schema_pb2.FLOAT if kind == NUMERIC else schema_pb2.BYTES)
    if indexed_label:
        metadata.feature.add(name=LABEL_INDEX_KEY, type=schema_pb2.INT)
    return tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["tunepipe", "evaluate"],
                                     schema=metadata, raw_record_column_name=tfma.ARROW_INPUT_COLUMN)
