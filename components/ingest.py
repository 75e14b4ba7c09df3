"""The ingest step: read the source table with Beam as Arrow record batches, validate it, split it
by a stable hash and write Parquet shards per split with the schema and statistics.

Output layout (an `examples` artifact):

    schema.json         label, features and passthrough columns with their kinds
    statistics.json     row counts and per-split, per-column statistics
    train/ eval/ test/  Parquet shards
    rejects/            rows that could not be parsed, one JSON object a line, with the reason
    _manifest.json      written last

Rows are never turned into Python dicts: each file is read in blocks by pyarrow inside a DoFn, and
type checks, label filtering, hashing and splitting are vectorized per block.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import apache_beam as beam
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from components import analyzers, artifacts, beam_run
from components.spans import SpanPattern, newest
from components.schema import CATEGORICAL, FEATURE, LABEL, NUMERIC, PASSTHROUGH, Column, Schema
from pipeline.config import BeamConfig, DataConfig
from pipeline.errors import DataError

log = logging.getLogger("tunepipe.ingest")

KIND = "examples"
SPLITS = ("train", "eval", "test")
STATISTICS_FILE = "statistics.json"
REJECTS_DIR = "rejects"
# Splits are decided by hash buckets of this resolution: ratios are honoured to 0.01%.
_BUCKETS = 10_000
_CSV_BLOCK_BYTES = 16 << 20
_PARQUET_BATCH_ROWS = 131_072
_TOP_VALUES_IN_STATISTICS = 20
_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# Share of a sampled text column's values that must be numbers for it to be inferred numeric.
_NUMERIC_SHARE = 0.95


@dataclass(frozen=True)
class IngestResult:
    path: str
    schema: Schema
    counts: dict[str, Any]
    digest: str
    spans: tuple[str, ...] = ()


# --- the source -----------------------------------------------------------------------------

@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    modified: float


def match_source(source: str) -> list[SourceFile]:
    """The files a path, glob or URI names, sorted; DataError when there are none."""
    try:
        results = FileSystems.match([source])
    except Exception as error:  # Beam raises its own BeamIOError with a nested dict of causes
        raise DataError(f"cannot list the data source {source}: {error}") from None
    files = [SourceFile(m.path, m.size_in_bytes, m.last_updated_in_seconds)
             for result in results for m in result.metadata_list
             if not m.path.endswith("/")]
    if not files:
        if any(char in source for char in "*?["):
            raise DataError(f"the data source pattern {source} matches no files")
        raise DataError(f"the data source {source} does not exist")
    return sorted(files, key=lambda f: f.path)


@dataclass(frozen=True)
class ResolvedSource:
    """What a run reads: the spans chosen (empty when the source has no span placeholder) and their files."""

    spans: tuple[str, ...]
    files: list[SourceFile]


def resolve_source(source: str, span_window: int = 1, spans: Sequence[str] | None = None) -> ResolvedSource:
    """The files of the newest `span_window` spans of `source` (or of the named `spans`), or of the
    source itself when it has no span placeholder."""
    pattern = SpanPattern(source)
    if not pattern.has_spans:
        return ResolvedSource((), match_source(source))
    if spans is None:
        listed = match_source(pattern.glob)
        found = {span for span in map(pattern.span_of, (f.path for f in listed)) if span is not None}
        if not found:
            raise DataError(f"the data source pattern {source} matches no span: {len(listed)} file(s) match "
                            f"{pattern.glob}, none with a {'date' if pattern.dated else 'span number'} where the "
                            f"placeholder is")
        spans = [span.name for span in newest(found, span_window)]
    files = sorted({f for span in spans for f in match_source(pattern.of_span(span))}, key=lambda f: f.path)
    return ResolvedSource(tuple(spans), files)


def fingerprint(files: list[SourceFile]) -> str:
    """Names, sizes and modification times of the matched files: a cache key that changes with the data."""
    digest = hashlib.sha256()
    for source_file in files:
        digest.update(f"{source_file.path}\0{source_file.size}\0{source_file.modified}\n".encode())
    return "files:" + digest.hexdigest()[:32]


def file_format(data: DataConfig, files: list[SourceFile]) -> str:
    if data.format != "auto":
        return data.format
    return "parquet" if files[0].path.lower().endswith(_PARQUET_SUFFIXES) else "csv"


def _csv_options(data: DataConfig, names: list[str] | None = None):
    read = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=True)
    parse = pacsv.ParseOptions(delimiter=data.csv_delimiter)
    convert = pacsv.ConvertOptions(
        null_values=list(data.null_values), strings_can_be_null=True, quoted_strings_can_be_null=True,
        column_types={name: pa.string() for name in names} if names else None)
    return read, parse, convert


def _read_sample(path: str, fmt: str, data: DataConfig) -> pa.Table:
    """The first block of a file: Parquet with its own types, CSV as text (typed by `_inferred_kind`)."""
    try:
        with FileSystems.open(path) as handle:
            if fmt == "parquet":
                parquet = pq.ParquetFile(handle)
                batch = next(parquet.iter_batches(batch_size=10_000), None)
                return pa.Table.from_batches([batch]) if batch is not None else parquet.schema_arrow.empty_table()
            header = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=1 << 16),
                                    parse_options=pacsv.ParseOptions(delimiter=data.csv_delimiter,
                                                                     invalid_row_handler=lambda row: "skip"))
            names = header.schema.names
        with FileSystems.open(path) as handle:
            _, parse, convert = _csv_options(data, names)
            reader = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=1 << 20),
                                    parse_options=pacsv.ParseOptions(delimiter=parse.delimiter,
                                                                     invalid_row_handler=lambda row: "skip"),
                                    convert_options=convert)
            batch = next(iter(reader), None)
            return pa.Table.from_batches([batch]) if batch is not None else reader.schema.empty_table()
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
        message = _arrow_message(error)
        if "UTF8" in message:
            raise DataError(f"{path}: the file is not valid UTF-8 text ({message})") from None
        raise DataError(f"{path}: cannot be read as {fmt.upper()}: {message}") from None


def _inferred_kind(values: pa.ChunkedArray) -> str:
    """Numeric when the column is typed as numbers, or when nearly all of its text values are numbers
    (a few stray words in a numeric column are rejected rows, not a reason to make it categorical)."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return NUMERIC
    if not pa.types.is_string(values.type):
        return CATEGORICAL
    present = values.drop_null()
    if len(present) == 0:
        return CATEGORICAL
    numbers = pc.sum(pc.match_substring_regex(pc.utf8_trim_whitespace(present), _NUMBER)).as_py() or 0
    return NUMERIC if numbers >= _NUMERIC_SHARE * len(present) else CATEGORICAL


def infer_schema(files: list[SourceFile], data: DataConfig) -> Schema:
    """Column roles from the config, kinds from the config or else from a sample of the first file."""
    fmt = file_format(data, files)
    first = files[0]
    if first.size == 0:
        raise DataError(f"{first.path}: the file is empty")
    sample = _read_sample(first.path, fmt, data)
    names = sample.column_names
    if data.label not in names:
        raise DataError(f"{first.path}: no label column {data.label!r} (columns: {', '.join(names)})")
    named = set(data.features.include or ()) | set(data.features.exclude) | set(data.features.types)
    if data.split.hash_key:
        named |= set(data.split.hash_key)
    unknown = sorted(named - set(names))
    if unknown:
        raise DataError(f"{first.path}: the config names columns the data does not have: {', '.join(unknown)}")
    columns = []
    for name in names:
        if name == data.label:
            columns.append(Column(name, CATEGORICAL, LABEL))
            continue
        selected = (data.features.include is None or name in data.features.include) and name not in data.features.exclude
        kind = data.features.types.get(name) or _inferred_kind(sample.column(name))
        columns.append(Column(name, kind, FEATURE if selected else PASSTHROUGH))
    schema = Schema(tuple(columns), data.problem_type)
    if not schema.features:
        raise DataError(f"{first.path}: no feature columns are left besides the label {data.label!r}")
    return schema


def _arrow_message(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


# --- per-block work ---------------------------------------------------------------------------

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
            numeric = pc.match_substring_regex(trimmed, _NUMBER)
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


class _ReadAndSplit(beam.DoFn):
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
            message = _arrow_message(error)
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

        read, parse, convert = _csv_options(self._data, self._schema.names)
        parse = pacsv.ParseOptions(delimiter=parse.delimiter, invalid_row_handler=skip_malformed)
        reader = pacsv.open_csv(handle, read_options=read, parse_options=parse, convert_options=convert)
        self._check_columns(path, reader.schema.names)
        for batch in reader:
            yield batch

    def _check_columns(self, path: str, names: list[str]) -> None:
        if names != self._schema.names:
            raise DataError(f"{path}: columns {names} differ from the first file's {self._schema.names}")


# --- aggregation -----------------------------------------------------------------------------

class _SumCounts(beam.CombineFn):
    def create_accumulator(self) -> dict[str, int]:
        return {"rows_read": 0, "rejected": 0, "missing_label": 0}

    def add_input(self, total: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
        return {name: total[name] + counts.get(name, 0) for name in total}

    def merge_accumulators(self, totals) -> dict[str, int]:
        totals = list(totals)
        return {name: sum(total[name] for total in totals) for name in totals[0]}

    def extract_output(self, total: dict[str, int]) -> dict[str, int]:
        return total


def _write_statistics(_, path: str, counts: dict[str, int], split_stats: dict[str, dict], schema: Schema,
                      active_splits: list[str]) -> None:
    splits = {}
    empty = analyzers.ColumnStats(schema.kinds())
    for split in active_splits:
        columns = split_stats.get(split) or empty.extract_output(empty.create_accumulator())
        label = columns[schema.label.name]
        splits[split] = {
            "num_rows": label["count"] + label["missing"],
            "columns": {name: analyzers.top_values(summary, _TOP_VALUES_IN_STATISTICS)
                        for name, summary in columns.items()},
        }
    statistics = {"counts": {**counts, "splits": {split: splits[split]["num_rows"] for split in active_splits}},
                  "splits": splits}
    with FileSystems.create(path) as handle:
        handle.write(json.dumps(statistics, indent=2, default=float).encode())


def _pipeline(root: beam.Pipeline, files: list[str], data: DataConfig, schema: Schema, fmt: str, out: str) -> None:
    active = [split for split in SPLITS if getattr(data.split, split) > 0]
    read = (root
            | "ListFiles" >> beam.Create(files)
            | "Spread" >> beam.Reshuffle()
            | "ReadAndSplit" >> beam.ParDo(_ReadAndSplit(data, schema, fmt)).with_outputs("rejects", "counts",
                                                                                          main="examples"))
    for split in active:
        _ = (read.examples
             | f"Select{split.title()}" >> beam.Filter(lambda item, name=split: item[0] == name)
             | f"ToTable{split.title()}" >> beam.Map(lambda item: pa.Table.from_batches([item[1]]))
             | f"Write{split.title()}" >> beam.io.WriteToParquetBatched(
                 os.path.join(out, split, "part"), schema=schema.arrow_schema(), codec="snappy",
                 file_name_suffix=".parquet"))
    _ = (read.rejects
         | "RejectsToJson" >> beam.Map(lambda reject: json.dumps(reject, default=str))
         | "WriteRejects" >> beam.io.WriteToText(os.path.join(out, REJECTS_DIR, "rejects"), file_name_suffix=".jsonl",
                                                 num_shards=1))
    counts = read.counts | "SumCounts" >> beam.CombineGlobally(_SumCounts())
    split_stats = read.examples | "Statistics" >> beam.CombinePerKey(analyzers.ColumnStats(schema.kinds()))
    _ = (root
         | "Once" >> beam.Create([None])
         | "WriteStatistics" >> beam.Map(_write_statistics, os.path.join(out, STATISTICS_FILE),
                                         counts=beam.pvalue.AsSingleton(counts),
                                         split_stats=beam.pvalue.AsDict(split_stats),
                                         schema=schema, active_splits=active))


def _check_counts(source: str, data: DataConfig, counts: dict[str, Any], partial: Path, out: Path) -> None:
    read, rejected, missing = counts["rows_read"], counts["rejected"], counts["missing_label"]
    if read == 0:
        raise DataError(f"{source}: no data rows (the table has a header but nothing under it)")
    if rejected and rejected / read > data.max_reject_fraction:
        kept = out.parent / f"{out.name}-rejected-rows.jsonl"
        first = []
        for shard in sorted((partial / REJECTS_DIR).glob("*.jsonl")):
            with shard.open() as lines, kept.open("a") as copy:
                for line in lines:
                    copy.write(line)
                    if len(first) < 2:
                        first.append(json.loads(line)["reason"])
        raise DataError(f"{source}: {rejected} of {read} rows cannot be parsed ({rejected / read:.1%}, more than "
                        f"data.max_reject_fraction={data.max_reject_fraction:g}); first: {'; '.join(first)}; "
                        f"all of them in {kept}")
    if missing == read - rejected:
        raise DataError(f"{source}: the label {data.label!r} is missing on every row")


def run(data: DataConfig, beam_config: BeamConfig, out: str | os.PathLike[str],
        spans: Sequence[str] | None = None) -> IngestResult:
    """Read, validate, split and describe the source table into the `examples` artifact at `out`:
    the named `spans` of a span pattern, else its newest `data.span_window` spans."""
    out = Path(out)
    resolved = resolve_source(data.source, data.span_window, spans)
    files = resolved.files
    schema = infer_schema(files, data)
    for source_file in files:
        if source_file.size == 0:
            raise DataError(f"{source_file.path}: the file is empty")
    fmt = file_format(data, files)
    log.info("ingest: reading %d %s file(s) from %s%s with %s", len(files), fmt.upper(), data.source,
             f" (spans {', '.join(resolved.spans)})" if resolved.spans else "", beam_config.runner)
    with artifacts.building(out) as partial:
        beam_run.run(beam_config, lambda root: _pipeline(root, [f.path for f in files], data, schema, fmt,
                                                          str(partial)))
        statistics = json.loads((partial / STATISTICS_FILE).read_text())
        counts = statistics["counts"]
        _check_counts(data.source, data, counts, partial, out)
        schema.write(partial)
        manifest = artifacts.write_manifest(partial, KIND, "ingest", source=data.source, spans=list(resolved.spans),
                                            files=[f.path for f in files], counts=counts)
    log.info("ingest: %d rows read, %d rejected, %d without a label; %s", counts["rows_read"], counts["rejected"],
             counts["missing_label"], ", ".join(f"{s} {n}" for s, n in counts["splits"].items()))
    return IngestResult(str(out), schema, counts, manifest["digest"], resolved.spans)


def split_files(examples: str | os.PathLike[str], split: str) -> list[str]:
    """The Parquet shards of one split of an `examples` artifact."""
    return sorted(str(path) for path in Path(examples, split).glob("*.parquet"))

