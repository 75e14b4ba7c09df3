"""The table's schema: which column is the label, which are features and of what kind, and the
problem the label poses (classification or regression, `components.problem`).

Ingest writes it as `schema.json` beside the data; preprocess, the model, evaluation and serving
all read feature names and kinds from it, so they are defined once, by the data and the config.

Column names are the user's, whatever the CSV header says (spaces, `/`, `°`, any letters): tf.Example
keys, slices and lineage keep them. Keras layer names and TF signature inputs have rules of their
own, so each column also has an `internal_name`, made once here and unique in the table.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

# The kinds of feature column, as the analyzers (components.analyzers) summarise them.
NUMERIC = "numeric"
CATEGORICAL = "categorical"

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


def internal_names(names: list[str]) -> dict[str, str]:
    """A Keras-layer- and TF-signature-safe name for each column (ASCII letters, digits, `_`),
    unique among them: `Miles/Gallon` -> `Miles_Gallon`, `temp (°C)` -> `temp_C`."""
    made: dict[str, str] = {}
    taken: set[str] = set()
    for name in names:
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        base = re.sub(r"[^A-Za-z0-9_]+", "_", ascii_name).strip("_") or "column"
        if base[0].isdigit():
            base = f"c_{base}"
        candidate, number = base, 2
        while candidate in taken:
            candidate, number = f"{base}_{number}", number + 1
        taken.add(candidate)
        made[name] = candidate
    return made


@dataclass(frozen=True)
class Schema:
    columns: tuple[Column, ...]
    # "classification" or "regression" once ingest has decided; what was configured until then.
    problem_type: str = "classification"
    problem_reason: str = ""
    positive_class: str | None = None  # as configured (data.positive_class); preprocess checks it
    internal: dict[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "internal", internal_names([column.name for column in self.columns]))

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
            "problem_reason": self.problem_reason,
            "positive_class": self.positive_class,
            "label": self.label.name,
            "columns": [{"name": c.name, "kind": c.kind, "role": c.role, "internal_name": self.internal[c.name]}
                        for c in self.columns],
        }

    @classmethod
    def from_json(cls, raw: dict) -> Schema:
        columns = tuple(Column(column["name"], column["kind"], column["role"]) for column in raw["columns"])
        return cls(columns, raw.get("problem_type", "classification"), raw.get("problem_reason", ""),
                   raw.get("positive_class"))

    def write(self, directory: str | os.PathLike[str]) -> None:
        Path(directory, SCHEMA_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Schema:
        return cls.from_json(json.loads(Path(directory, SCHEMA_FILE).read_text()))


__all__ = ["CATEGORICAL", "NUMERIC", "LABEL", "FEATURE", "PASSTHROUGH", "Column", "Schema", "SCHEMA_FILE"]
