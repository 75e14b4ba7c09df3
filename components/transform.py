"""The `transform` artifact: what preprocess's full-pass analyzers found over the train split, which
tune, train and the served model build their preprocessing layers from
(`components.model.preprocessing`).

    transform.json   per feature: mean, variance and fill value (numeric) or the vocabulary with
                     counts (categorical); the label's vocabulary; the train split's row count
    _manifest.json   written last
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import artifacts
from components.problem import CLASSIFICATION, REGRESSION
from components.schema import CATEGORICAL, NUMERIC

TRANSFORM_FILE = "transform.json"
ONE_HOT = "one_hot"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class NumericFeature:
    name: str
    mean: float
    variance: float
    fill_value: float
    internal_name: str = ""  # Keras-safe, see components.schema.internal_names
    kind: str = NUMERIC

    @property
    def key(self) -> str:
        """The feature's name inside the model: its Keras input and layer names."""
        return self.internal_name or self.name


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    vocabulary: tuple[str, ...]
    counts: tuple[int, ...]
    num_oov_indices: int
    encoding: str
    embedding_dim: int
    internal_name: str = ""
    kind: str = CATEGORICAL

    @property
    def key(self) -> str:
        return self.internal_name or self.name


@dataclass(frozen=True)
class Transform:
    """What the analyzers found: everything needed to encode raw features and the label."""

    label: str
    label_vocabulary: tuple[str, ...]  # the classes, in output order; empty for regression
    features: tuple[NumericFeature | CategoricalFeature, ...]
    train_rows: int
    problem_type: str = CLASSIFICATION
    positive_class: str | None = None  # binary classification
    label_mean: float | None = None  # regression: the train split's label, which training standardizes
    label_std: float | None = None
    left_out: tuple[str, ...] = ()  # feature columns empty on every train row

    @property
    def kind(self) -> str:
        """`binary`, `multiclass` or `regression` (`components.problem`)."""
        if self.problem_type == REGRESSION:
            return REGRESSION
        return "binary" if len(self.label_vocabulary) == 2 else "multiclass"

    @property
    def positive_index(self) -> int:
        return self.label_vocabulary.index(self.positive_class) if self.positive_class else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "problem_type": self.problem_type,
            "label": {"name": self.label, "vocabulary": list(self.label_vocabulary),
                      "positive_class": self.positive_class, "mean": self.label_mean, "std": self.label_std},
            "left_out": list(self.left_out),
            "features": [{**feature.__dict__,
                          **({"vocabulary": list(feature.vocabulary), "counts": list(feature.counts)}
                             if feature.kind == CATEGORICAL else {})}
                         for feature in self.features],
            "train_rows": self.train_rows,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Transform:
        features = []
        for feature in raw["features"]:
            if feature["kind"] == NUMERIC:
                features.append(NumericFeature(**feature))
            else:
                features.append(CategoricalFeature(**{**feature, "vocabulary": tuple(feature["vocabulary"]),
                                                      "counts": tuple(feature["counts"])}))
        label = raw["label"]
        return cls(label["name"], tuple(label["vocabulary"]), tuple(features), raw["train_rows"],
                   raw.get("problem_type", CLASSIFICATION), label.get("positive_class"), label.get("mean"),
                   label.get("std"), tuple(raw.get("left_out", ())))

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Transform:
        artifacts.read_manifest(directory, artifacts.TRANSFORM)
        return cls.from_json(json.loads(Path(directory, TRANSFORM_FILE).read_text()))
