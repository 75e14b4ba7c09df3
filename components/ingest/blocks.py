"""Per-block work of the ingest step, inside Beam: a source file read in Arrow blocks, each block
cast to the schema (unparseable rows rejected with the reason), rows without a label dropped, and
the rest split by a stable hash. Rows are never turned into Python dicts: type checks, label
filtering, hashing and splitting are vectorized per block."""
from __future__ import annotations

from typing import Any, Iterator

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from components.errors import DataError
from components.examples import SPLITS
from components.ingest.config import DataConfig
from components.ingest.infer import NUMBER, arrow_message, csv_options
from components.schema import NUMERIC, Schema

# Splits are decided by hash buckets of this resolution: ratios are honoured to 0.01%.
_BUCKETS = 10_000
_PARQUET_BATCH_ROWS = 131_072


def conform(batch: pa.RecordBatch, schema: Schema, source: str) -> tuple[pa.RecordBatch, list[dict], int]:
    """Cast a block to the schema's types.

    Returns the good rows, the rejected rows (each with a reason) and how many rows were dropped
    because their label is missing.
    """
    rows = batch.num_rows
    bad = np.zeros(rows, dtype=bool)
    reasons: dict[int, str] = {}
    columns = []
    for column in schema.columns:
        values = batch.column(column.name)
        if column.kind == NUMERIC and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            trimmed = pc.utf8_trim_whitespace(values)
            numeric = pc.match_substring_regex(trimmed, NUMBER)
            invalid = pc.fill_null(pc.invert(numeric), False).to_numpy(zero_copy_only=False)
            for index in np.flatnonzero(invalid & ~bad):
                reasons[int(index)] = f"column {column.name!r}: {values[index].as_py()!r} is not a number"
            bad |= invalid
            values = pc.cast(pc.if_else(pa.array(invalid), pa.scalar(None, pa.string()), trimmed), pa.float64())
        elif column.kind == NUMERIC and not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
                                             or pa.types.is_null(values.type)):
            raise DataError(f"{source}: column {column.name!r} holds {values.type}, not numbers")
        else:
            values = pc.cast(values, column.arrow_type)
        columns.append(values)
    typed = pa.RecordBatch.from_arrays(columns, schema=schema.arrow_schema())
    label_missing = typed.column(schema.label.name).is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(typed.column(schema.label.name).type):
        label_missing |= pc.fill_null(pc.equal(pc.utf8_trim_whitespace(typed.column(schema.label.name)), ""),
                                      False).to_numpy(zero_copy_only=False)
    rejected_rows = bad & ~label_missing
    raw = batch.filter(pa.array(rejected_rows)).to_pylist() if rejected_rows.any() else []
    rejects = [{"file": source, "reason": reasons[int(index)], "row": row}
               for index, row in zip(np.flatnonzero(rejected_rows), raw)]
    good = typed.filter(pa.array(~bad & ~label_missing))
    return good, rejects, int(label_missing.sum())


def split_assignment(batch: pa.RecordBatch, key: list[str], thresholds: np.ndarray) -> np.ndarray:
    """Split index per row from a hash of its key columns: the same row gets the same split on
    every run and after rows are appended, whichever file or block it is read from."""
    frame = batch.select(key).to_pandas()
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return np.searchsorted(thresholds, hashes % _BUCKETS, side="right")


def split_thresholds(data: DataConfig) -> np.ndarray:
    """Upper bucket bounds of train and eval; rows past the eval bound go to test."""
    train = round(data.split.train * _BUCKETS)
    return np.array([train, train + round(data.split.eval * _BUCKETS)])


class ReadAndSplit(beam.DoFn):
    """One source file in, typed and split blocks out (plus rejects and counts as side outputs)."""

    def __init__(self, data: DataConfig, schema: Schema, fmt: str):
        self._data = data
        self._schema = schema
        self._fmt = fmt

    def process(self, path: str) -> Iterator[Any]:
        key = list(self._data.split.hash_key or self._schema.names)
        thresholds = split_thresholds(self._data)
        counts = {"rows_read": 0, "rejected": 0, "missing_label": 0}
        handler_rejects: list[dict] = []
        for block in self._blocks(path, handler_rejects):
            # Rows the CSV parser skipped while reading this block belong to it.
            counts["rows_read"] += block.num_rows + len(handler_rejects)
            good, rejects, missing = conform(block, self._schema, path)
            rejects = handler_rejects + rejects
            handler_rejects.clear()
            counts["rejected"] += len(rejects)
            counts["missing_label"] += missing
            for reject in rejects:
                yield beam.pvalue.TaggedOutput("rejects", reject)
            if good.num_rows:
                assignment = split_assignment(good, key, thresholds)
                for index, split in enumerate(SPLITS):
                    part = good.filter(pa.array(assignment == index))
                    if part.num_rows:
                        yield (split, part)
        # Rows the CSV parser skipped after the last block.
        counts["rows_read"] += len(handler_rejects)
        counts["rejected"] += len(handler_rejects)
        for reject in handler_rejects:
            yield beam.pvalue.TaggedOutput("rejects", reject)
        yield beam.pvalue.TaggedOutput("counts", counts)

    def _blocks(self, path: str, rejects: list[dict]) -> Iterator[pa.RecordBatch]:
        try:
            with FileSystems.open(path) as handle:
                if self._fmt == "parquet":
                    parquet = pq.ParquetFile(handle)
                    self._check_columns(path, parquet.schema_arrow.names)
                    yield from parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS)
                    return
                yield from self._csv_blocks(path, handle, rejects)
        except (pa.ArrowInvalid, UnicodeDecodeError) as error:
            message = arrow_message(error)
            if "UTF8" in message or "utf-8" in message.lower():
                raise DataError(f"{path}: the file is not valid UTF-8 text ({message})") from None
            raise DataError(f"{path}: cannot be read as {self._fmt.upper()}: {message}") from None

    def _csv_blocks(self, path: str, handle, rejects: list[dict]) -> Iterator[pa.RecordBatch]:
        def skip_malformed(row) -> str:
            # Wrong field count: the parser cannot type it, so it is rejected with its text.
            rejects.append({"file": path, **({"line": row.number} if row.number is not None else {}),
                            "reason": f"expected {row.expected_columns} fields, found {row.actual_columns}",
                            "text": row.text})
            return "skip"

        read, parse, convert = csv_options(self._data, self._schema.names)
        parse = pacsv.ParseOptions(delimiter=parse.delimiter, invalid_row_handler=skip_malformed)
        reader = pacsv.open_csv(handle, read_options=read, parse_options=parse, convert_options=convert)
        self._check_columns(path, reader.schema.names)
        for batch in reader:
            yield batch

    def _check_columns(self, path: str, names: list[str]) -> None:
        if names != self._schema.names:
            raise DataError(f"{path}: columns {names} differ from the first file's {self._schema.names}")

