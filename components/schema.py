"""The table's schema: which column is the label, which are features and of what kind.

Ingest writes it as `schema.json` beside the data; preprocess, the model, evaluation and serving
all read feature names and kinds from it, so they are defined once, by the data and the config.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from components.analyzers import CATEGORICAL, NUMERIC

LABEL = "label"
FEATURE = "feature"
# Kept in the examples (for slicing, keys, audits) but not fed to the model.
PASSTHROUGH = "passthrough"

SCHEMA_FILE = "schema.json"


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # NUMERIC or CATEGORICAL
    role: str  # LABEL, FEATURE or PASSTHROUGH

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.float64() if self.kind == NUMERIC else pa.string()


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]
    problem_type: str = "classification"

    @property
    def label(self) -> Column:
        return next(column for column in self.columns if column.role == LABEL)

    @property
    def features(self) -> tuple[Column, ...]:
        return tuple(column for column in self.columns if column.role == FEATURE)

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def kinds(self, roles: tuple[str, ...] = (LABEL, FEATURE, PASSTHROUGH)) -> dict[str, str]:
        return {column.name: column.kind for column in self.columns if column.role in roles}

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(column.name, column.arrow_type) for column in self.columns])

    def to_json(self) -> dict:
        return {
            "problem_type": self.problem_type,
            "label": self.label.name,
            "columns": [{"name": c.name, "kind": c.kind, "role": c.role} for c in self.columns],
        }

    @classmethod
    def from_json(cls, raw: dict) -> Schema:
        return cls(tuple(Column(**column) for column in raw["columns"]), raw.get("problem_type", "classification"))

    def write(self, directory: str | os.PathLike[str]) -> None:
        Path(directory, SCHEMA_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Schema:
        return cls.from_json(json.loads(Path(directory, SCHEMA_FILE).read_text()))


__all__ = ["CATEGORICAL", "NUMERIC", "LABEL", "FEATURE", "PASSTHROUGH", "Column", "Schema", "SCHEMA_FILE"]
