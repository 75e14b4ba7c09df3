"""The `data` config section: the source table and how to read and split it, everything the
resolve-source and ingest steps depend on."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.section import Section
from components.spans import SpanPattern

DEFAULT_NULL_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "None")


class SplitConfig(Section):
    """How rows are split. Ratios are fractions of the rows that sum to 1."""

    train: float = Field(0.8, gt=0, le=1)
    eval: float = Field(0.2, gt=0, lt=1)
    test: float = Field(0.0, ge=0, lt=1)
    # Columns whose values decide a row's split; None hashes the whole row.
    hash_key: tuple[str, ...] | None = None

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> SplitConfig:
        total = self.train + self.eval + self.test
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"train + eval + test must be 1, got {total:g}")
        return self


class FeaturesConfig(Section):
    """Which columns are features and of what kind. By default every column but the label,
    typed from the data (numbers are numeric, anything else categorical)."""

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    types: dict[str, Literal["numeric", "categorical"]] = {}


class DataConfig(Section):
    """The source table and how to read and split it.

    `source` may name spans with a placeholder, `data/spans/{SPAN}/*.csv` or
    `events/{YYYY}-{MM}-{DD}/*.parquet` (see components.spans): a run reads the newest
    `span_window` spans."""

    source: str
    label: str
    span_window: int = Field(1, ge=1)
    format: Literal["auto", "csv", "parquet"] = "auto"
    # auto: decided from the train split's label (components.problem says how); or say which.
    problem_type: Literal["auto", "classification", "regression"] = "auto"
    # Binary classification: the class AUC and PR-AUC are about; default the second sorted value.
    positive_class: str | None = None
    features: FeaturesConfig = FeaturesConfig()
    split: SplitConfig = SplitConfig()
    csv_delimiter: str = Field(",", min_length=1, max_length=1)
    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES
    # Rows that cannot be parsed go to a rejects file; past this share of the rows, ingest fails.
    max_reject_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("source")
    @classmethod
    def _placeholders_are_known(cls, value: str) -> str:
        SpanPattern(value)  # a ValueError names the placeholder at fault
        return value

    @model_validator(mode="after")
    def _label_is_not_a_feature(self) -> DataConfig:
        named = set(self.features.include or ()) | set(self.features.types)
        if self.label in named:
            raise ValueError(f"the label {self.label!r} cannot also be listed as a feature")
        return self

    @model_validator(mode="after")
    def _positive_class_needs_classes(self) -> DataConfig:
        if self.positive_class is not None and self.problem_type == "regression":
            raise ValueError("positive_class is for classification; problem_type is regression")
        return self

    @model_validator(mode="after")
    def _window_needs_spans(self) -> DataConfig:
        if self.span_window > 1 and not SpanPattern(self.source).has_spans:
            raise ValueError(f"span_window {self.span_window} needs a span placeholder in the source "
                             f"({{SPAN}} or {{YYYY}}-{{MM}}-{{DD}}); {self.source!r} has none")
        return self
