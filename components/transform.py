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
    kind: str = NUMERIC


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    vocabulary: tuple[str, ...]
    counts: tuple[int, ...]
    num_oov_indices: int
    encoding: str
    embedding_dim: int
    kind: str = CATEGORICAL


@dataclass(frozen=True)
class Transform:
    """What the analyzers found: everything needed to encode raw features and the label."""

    label: str
    label_vocabulary: tuple[str, ...]
    features: tuple[NumericFeature | CategoricalFeature, ...]
    train_rows: int

    def to_json(self) -> dict[str, Any]:
        return {
            "label": {"name": self.label, "vocabulary": list(self.label_vocabulary)},
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
        return cls(raw["label"]["name"], tuple(raw["label"]["vocabulary"]), tuple(features), raw["train_rows"])

    @classmethod
    def read(cls, directory: str | os.PathLike[str]) -> Transform:
        artifacts.read_manifest(directory, artifacts.TRANSFORM)
        return cls.from_json(json.loads(Path(directory, TRANSFORM_FILE).read_text()))
