"""Full-pass column analyzers over Arrow record batches, as a Beam CombineFn.

One combiner serves both the statistics that ingest writes per split and the analyzers that
preprocess runs over the train split: count, missing, min, max, mean and variance per numeric
column (merged with Chan's parallel update, so shards combine exactly), and whether its values are
whole numbers and how many distinct ones it has, up to a few (what tells a class code from a
measurement); value counts per categorical column. Work is per batch in Arrow and numpy, never per row in Python.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.schema import CATEGORICAL, NUMERIC

# Distinct values of a numeric column are counted up to this many; past it, only "more" is known.
DISTINCT_LIMIT = 64


@dataclass
class _Numeric:
    count: int = 0
    missing: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf
    integral: bool = True
    distinct: set | None = field(default_factory=set)  # None: more than DISTINCT_LIMIT

    def add(self, values: np.ndarray) -> None:
        present = values[~np.isnan(values)]
        self.missing += values.size - present.size
        if present.size:
            batch = _Numeric(present.size, 0, float(present.mean()), float(((present - present.mean()) ** 2).sum()),
                             float(present.min()), float(present.max()), bool(np.all(present == np.floor(present))),
                             _distinct(present) if self.distinct is not None else None)
            self.merge(batch)

    def merge(self, other: _Numeric) -> None:
        self.missing += other.missing
        if other.count == 0:
            return
        self.integral = self.integral and other.integral
        if self.distinct is not None and other.distinct is not None:
            self.distinct |= other.distinct
            if len(self.distinct) > DISTINCT_LIMIT:
                self.distinct = None
        else:
            self.distinct = None
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean += delta * other.count / total
        self.m2 += other.m2 + delta * delta * self.count * other.count / total
        self.count = total
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)

    def summary(self) -> dict[str, Any]:
        variance = self.m2 / self.count if self.count else None
        return {
            "kind": NUMERIC,
            "count": self.count,
            "missing": self.missing,
            "min": self.minimum if self.count else None,
            "max": self.maximum if self.count else None,
            "mean": self.mean if self.count else None,
            "variance": variance,
            "std": float(np.sqrt(variance)) if variance is not None else None,
            "integral": self.integral if self.count else None,
            "distinct": len(self.distinct) if self.distinct is not None else None,
        }


def _distinct(values: np.ndarray) -> set | None:
    """The distinct values of a batch, or None when there are more than DISTINCT_LIMIT."""
    unique = np.unique(values)
    return set(unique.tolist()) if unique.size <= DISTINCT_LIMIT else None


@dataclass
class _Categorical:
    count: int = 0
    missing: int = 0
    values: Counter = field(default_factory=Counter)

    def add(self, column: pa.Array) -> None:
        self.missing += column.null_count
        self.count += len(column) - column.null_count
        counted = pc.value_counts(column.drop_null())
        self.values.update(dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist())))

    def merge(self, other: _Categorical) -> None:
        self.count += other.count
        self.missing += other.missing
        self.values.update(other.values)

    def summary(self) -> dict[str, Any]:
        # Most frequent first; ties broken by value so the vocabulary is the same on every run.
        ordered = sorted(self.values.items(), key=lambda item: (-item[1], str(item[0])))
        return {
            "kind": CATEGORICAL,
            "count": self.count,
            "missing": self.missing,
            "distinct": len(ordered),
            "values": [{"value": value, "count": count} for value, count in ordered],
        }


class ColumnStats(beam.CombineFn):
    """Combines record batches into per-column statistics for the columns in `kinds`."""

    def __init__(self, kinds: dict[str, str]):
        self._kinds = dict(kinds)

    def create_accumulator(self) -> dict[str, Any]:
        return {name: _Numeric() if kind == NUMERIC else _Categorical() for name, kind in self._kinds.items()}

    def add_input(self, accumulator: dict[str, Any], batch: pa.RecordBatch) -> dict[str, Any]:
        for name, kind in self._kinds.items():
            column = batch.column(name)
            if kind == NUMERIC:
                accumulator[name].add(column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64))
            else:
                accumulator[name].add(column.cast(pa.string()))
        return accumulator

    def merge_accumulators(self, accumulators) -> dict[str, Any]:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for other in accumulators:
            for name, column in other.items():
                merged[name].merge(column)
        return merged

    def extract_output(self, accumulator: dict[str, Any]) -> dict[str, Any]:
        return {name: column.summary() for name, column in accumulator.items()}


def top_values(summary: dict[str, Any], limit: int) -> dict[str, Any]:
    """A categorical summary with only its `limit` most frequent values (for reports)."""
    if summary["kind"] != CATEGORICAL:
        return summary
    return {**summary, "values": summary["values"][:limit]}
