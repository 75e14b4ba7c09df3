"""The preprocess step: full-pass analyzers over the train split, and the Keras layers built from them.

`run` computes, with Beam over the train split only, the mean, variance and fill value of every
numeric feature and the vocabulary (with counts) of every categorical feature and of the label, and
writes them as a `transform` artifact (`transform.json`).

`build_preprocessing` turns that artifact into Keras preprocessing layers. Tune, train and the
exported serving model all call it, so the model sees the same encoding in training and serving.
TensorFlow is imported only there: the analyzers do not need it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam

from components import analyzers, artifacts, beam_run, ingest
from components.schema import CATEGORICAL, FEATURE, LABEL, NUMERIC, Schema
from pipeline.config import BeamConfig, PreprocessConfig
from pipeline.errors import DataError

log = logging.getLogger("tunepipe.preprocess")

KIND = "transform"
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
            "features": [{**feature.__dict__, **({"vocabulary": list(feature.vocabulary), "counts": list(feature.counts)}
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
        artifacts.read_manifest(directory, KIND)
        return cls.from_json(json.loads(Path(directory, TRANSFORM_FILE).read_text()))


@dataclass(frozen=True)
class PreprocessResult:
    path: str
    transform: Transform
    digest: str


def analyze(statistics: dict[str, dict[str, Any]], schema: Schema, config: PreprocessConfig) -> Transform:
    """The transform, from the full-pass statistics of the train split."""
    label_stats = statistics[schema.label.name]
    features: list[NumericFeature | CategoricalFeature] = []
    for column in schema.features:
        stats = statistics[column.name]
        if column.kind == NUMERIC:
            mean = stats["mean"] if stats["count"] else 0.0
            variance = stats["variance"] if stats["count"] else 1.0
            fill = mean if config.numeric_fill == "mean" else 0.0
            features.append(NumericFeature(column.name, float(mean), float(variance), float(fill)))
        else:
            kept = stats["values"][:config.vocabulary_top_k]
            vocabulary = tuple(str(item["value"]) for item in kept)
            size = len(vocabulary) + config.num_oov_indices
            encoding = EMBEDDING if size > config.embedding_threshold else ONE_HOT
            features.append(CategoricalFeature(column.name, vocabulary, tuple(item["count"] for item in kept),
                                               config.num_oov_indices, encoding, config.embedding_dim))
    # Classes in sorted order: the model's output index i is label_vocabulary[i] on every run.
    classes = tuple(sorted(str(item["value"]) for item in label_stats["values"]))
    if len(classes) < 2:
        raise DataError(f"the train split has {len(classes)} label value(s) {list(classes)}: a classifier needs two or more")
    return Transform(schema.label.name, classes, tuple(features), label_stats["count"])


def _write_transform(statistics: dict[str, Any], path: str, schema: Schema, config: PreprocessConfig) -> None:
    with beam.io.filesystems.FileSystems.create(path) as handle:
        handle.write(json.dumps(analyze(statistics, schema, config).to_json(), indent=2).encode())


def run(examples: str | os.PathLike[str], out: str | os.PathLike[str], config: PreprocessConfig,
        beam_config: BeamConfig) -> PreprocessResult:
    """Analyze the train split of `examples` and write the `transform` artifact at `out`."""
    artifacts.read_manifest(examples, ingest.KIND)
    schema = Schema.read(examples)
    train = ingest.split_files(examples, "train")
    if not train:
        raise DataError(f"{examples}: the train split has no data files")
    kinds = schema.kinds(roles=(LABEL, FEATURE))
    log.info("preprocess: analyzing %d features over %d train shard(s)", len(schema.features), len(train))
    with artifacts.building(out) as partial:
        beam_run.run(beam_config, lambda root: (
            root
            | "ReadTrain" >> beam.io.ReadFromParquetBatched(os.path.join(examples, "train", "*.parquet"),
                                                            columns=list(kinds))
            | "Analyze" >> beam.CombineGlobally(analyzers.ColumnStats(kinds))
            | "WriteTransform" >> beam.Map(_write_transform, str(partial / TRANSFORM_FILE), schema, config)))
        transform = Transform.from_json(json.loads((partial / TRANSFORM_FILE).read_text()))
        if transform.train_rows == 0:
            raise DataError(f"{examples}: the train split is empty")
        manifest = artifacts.write_manifest(partial, KIND, "preprocess", examples=str(examples),
                                            train_rows=transform.train_rows)
    log.info("preprocess: %d numeric, %d categorical features; %d classes", sum(f.kind == NUMERIC for f in transform.features),
             sum(f.kind == CATEGORICAL for f in transform.features), len(transform.label_vocabulary))
    return PreprocessResult(str(out), transform, manifest["digest"])


# --- Keras ------------------------------------------------------------------------------------

def build_preprocessing(transform: Transform):
    """Keras inputs (one per raw feature, shape (1,)) and the encoded, concatenated feature tensor.

    Numeric: missing values (NaN) become the fill value, then `Normalization` with the train split's
    mean and variance. Categorical: `StringLookup` over the train vocabulary with out-of-vocabulary
    indices (a missing value, the empty string, is out of vocabulary), one-hot or embedded.
    """
    import keras

    from components.layers import FillMissing

    inputs: dict[str, Any] = {}
    encoded = []
    for feature in transform.features:
        if feature.kind == NUMERIC:
            raw = keras.Input(shape=(1,), name=feature.name, dtype="float32")
            filled = FillMissing(feature.fill_value, name=f"{feature.name}_fill")(raw)
            encoded.append(keras.layers.Normalization(mean=feature.mean, variance=feature.variance,
                                                      name=f"{feature.name}_normalize")(filled))
        else:
            raw = keras.Input(shape=(1,), name=feature.name, dtype="string")
            if feature.encoding == ONE_HOT:
                encoded.append(keras.layers.StringLookup(vocabulary=list(feature.vocabulary),
                                                         num_oov_indices=feature.num_oov_indices,
                                                         output_mode="one_hot", name=f"{feature.name}_lookup")(raw))
            else:
                index = keras.layers.StringLookup(vocabulary=list(feature.vocabulary),
                                                  num_oov_indices=feature.num_oov_indices,
                                                  name=f"{feature.name}_lookup")(raw)
                vectors = keras.layers.Embedding(len(feature.vocabulary) + feature.num_oov_indices,
                                                 feature.embedding_dim, name=f"{feature.name}_embed")(index)
                encoded.append(keras.layers.Flatten(name=f"{feature.name}_flat")(vectors))
        inputs[feature.name] = raw
    features = encoded[0] if len(encoded) == 1 else keras.layers.Concatenate(name="features")(encoded)
    return inputs, features
