"""The ingest step: read the source table with Beam as Arrow record batches, validate it, split it
by a stable hash and write Parquet shards per split with the schema and statistics.

The output is an `examples` artifact (its layout: `components.examples`). The per-block work is
`components.ingest.blocks`; the schema is inferred by `components.ingest.infer`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from components import analyzers, artifacts, beam_run
from components import problem as problems
from components import source as source_step
from components.beam_run import BeamConfig
from components.errors import DataError
from components.examples import REJECTS_DIR, SPLITS, STATISTICS_FILE
from components.ingest.blocks import ReadAndSplit
from components.ingest.config import DataConfig
from components.ingest.infer import file_format, infer_schema
from components.schema import Schema

log = logging.getLogger("tunepipe.ingest")

_TOP_VALUES_IN_STATISTICS = 20


@dataclass(frozen=True)
class IngestResult:
    path: str
    schema: Schema
    counts: dict[str, Any]
    digest: str
    spans: tuple[str, ...] = ()
    problem: problems.Problem | None = None



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
            | "ReadAndSplit" >> beam.ParDo(ReadAndSplit(data, schema, fmt)).with_outputs("rejects", "counts",
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
    resolved = source_step.resolve(data.source, data.span_window, spans)
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
        problem = problems.decide(data.problem_type, data.label,
                                  statistics["splits"]["train"]["columns"][data.label])
        schema = dataclasses.replace(schema, problem_type=problem.type, problem_reason=problem.reason,
                                     positive_class=data.positive_class)
        schema.write(partial)
        manifest = artifacts.write_manifest(partial, artifacts.EXAMPLES, "ingest", source=data.source,
                                            spans=list(resolved.spans), files=[f.path for f in files], counts=counts,
                                            problem_type=problem.type, problem_reason=problem.reason)
    log.info("ingest: %d rows read, %d rejected, %d without a label; %s; %s (%s)", counts["rows_read"],
             counts["rejected"], counts["missing_label"], ", ".join(f"{s} {n}" for s, n in counts["splits"].items()),
             problem.type, problem.reason)
    return IngestResult(str(out), schema, counts, manifest["digest"], resolved.spans, problem)

