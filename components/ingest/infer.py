"""Reading a source file's first block, and the schema inferred from it: which column is the
label, which are features, and whether each is numeric or categorical (from the config, else from
the data)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from components.errors import DataError
from components.ingest.config import DataConfig
from components.schema import CATEGORICAL, FEATURE, LABEL, NUMERIC, PASSTHROUGH, Column, Schema
from components.source import SourceFile, open_file

_CSV_BLOCK_BYTES = 16 << 20
NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
# Share of a sampled text column's values that must be numbers for it to be inferred numeric.
_NUMERIC_SHARE = 0.95


def file_format(data: DataConfig, files: list[SourceFile]) -> str:
    if data.format != "auto":
        return data.format
    return "parquet" if files[0].path.lower().endswith(_PARQUET_SUFFIXES) else "csv"


def csv_options(data: DataConfig, names: list[str] | None = None):
    read = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=True)
    parse = pacsv.ParseOptions(delimiter=data.csv_delimiter)
    convert = pacsv.ConvertOptions(
        null_values=list(data.null_values), strings_can_be_null=True, quoted_strings_can_be_null=True,
        column_types={name: pa.string() for name in names} if names else None)
    return read, parse, convert


def _read_sample(path: str, fmt: str, data: DataConfig) -> pa.Table:
    """The first block of a file: Parquet with its own types, CSV as text (typed by `_inferred_kind`)."""
    try:
        with open_file(path) as handle:
            if fmt == "parquet":
                parquet = pq.ParquetFile(handle)
                batch = next(parquet.iter_batches(batch_size=10_000), None)
                return pa.Table.from_batches([batch]) if batch is not None else parquet.schema_arrow.empty_table()
            header = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=1 << 16),
                                    parse_options=pacsv.ParseOptions(delimiter=data.csv_delimiter,
                                                                     invalid_row_handler=lambda row: "skip"))
            names = header.schema.names
        with open_file(path) as handle:
            _, parse, convert = csv_options(data, names)
            reader = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=1 << 20),
                                    parse_options=pacsv.ParseOptions(delimiter=parse.delimiter,
                                                                     invalid_row_handler=lambda row: "skip"),
                                    convert_options=convert)
            batch = next(iter(reader), None)
            return pa.Table.from_batches([batch]) if batch is not None else reader.schema.empty_table()
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as error:
        message = arrow_message(error)
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
    numbers = pc.sum(pc.match_substring_regex(pc.utf8_trim_whitespace(present), NUMBER)).as_py() or 0
    return NUMERIC if numbers >= _NUMERIC_SHARE * len(present) else CATEGORICAL


def infer_schema(files: list[SourceFile], data: DataConfig) -> Schema:
    """Column roles from the config, kinds from the config or else from a sample of the first file."""
    fmt = file_format(data, files)
    first = files[0]
    if first.size == 0:
        raise DataError(f"{first.path}: the file is empty")
    sample = _read_sample(first.path, fmt, data)
    names = sample.column_names
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        where = "; ".join(f"{name!r} in columns {', '.join(str(i + 1) for i, n in enumerate(names) if n == name)}"
                          for name in repeated)
        raise DataError(f"{first.path}: duplicate column names: {where} (each column needs its own name)")
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
            columns.append(Column(name, _label_kind(sample.column(name), data, first.path), LABEL))
            continue
        included = data.features.include is None or name in data.features.include
        selected = included and name not in data.features.exclude
        kind = data.features.types.get(name) or _inferred_kind(sample.column(name))
        columns.append(Column(name, kind, FEATURE if selected else PASSTHROUGH))
    schema = Schema(tuple(columns), data.problem_type)
    if not schema.features:
        raise DataError(f"{first.path}: no feature columns are left besides the label {data.label!r}")
    return schema


def _label_kind(values: pa.ChunkedArray, data: DataConfig, path: str) -> str:
    """Categorical for classification; numeric where a regression needs it; for auto, what the
    data looks like (the train split's values decide the problem later, `components.problem`)."""
    if data.problem_type == "classification":
        return CATEGORICAL
    kind = _inferred_kind(values)
    if data.problem_type == "regression" and kind != NUMERIC:
        example = next((value for value in values.drop_null().to_pylist() if str(value).strip()), "")
        raise DataError(f"{path}: data.problem_type is regression, but the label {data.label!r} holds text "
                        f"(e.g. {example!r}): a regression label must be a number")
    return kind


def arrow_message(error: Exception) -> str:
    return str(error).strip().splitlines()[0]

