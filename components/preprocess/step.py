"""The preprocess step: full-pass analyzers over the train split into a `transform` artifact.

`run` computes, with Beam over the train split only, the mean, variance and fill value of every
numeric feature and the vocabulary (with counts) of every categorical feature and of the label
(`components.analyzers`), and writes them as a `transform` artifact (`components.transform`).
TensorFlow is not needed here: the Keras layers are built from the artifact by
`components.model.preprocessing`.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from components import analyzers, artifacts, beam_run
from components import problem as problems
from components.beam_run import BeamConfig
from components.errors import DataError
from components.examples import split_files
from components.preprocess.config import PreprocessConfig
from components.problem import CLASSIFICATION, REGRESSION
from components.schema import CATEGORICAL, FEATURE, LABEL, NUMERIC, Schema
from components.transform import EMBEDDING, ONE_HOT, TRANSFORM_FILE, CategoricalFeature, NumericFeature, Transform

log = logging.getLogger("tunepipe.preprocess")


@dataclass(frozen=True)
class PreprocessResult:
    path: str
    transform: Transform
    digest: str


def analyze(statistics: dict[str, dict[str, Any]], schema: Schema, config: PreprocessConfig) -> Transform:
    """The transform, from the full-pass statistics of the train split. A feature empty on every
    train row has nothing to learn from: it is left out (and listed as such)."""
    label_stats = statistics[schema.label.name]
    features: list[NumericFeature | CategoricalFeature] = []
    left_out = []
    for column in schema.features:
        stats = statistics[column.name]
        internal = schema.internal[column.name]
        if not stats["count"]:
            left_out.append(column.name)
        elif column.kind == NUMERIC:
            fill = stats["mean"] if config.numeric_fill == "mean" else 0.0
            features.append(NumericFeature(column.name, float(stats["mean"]), float(stats["variance"]), float(fill),
                                           internal))
        else:
            kept = stats["values"][:config.vocabulary_top_k]
            vocabulary = tuple(str(item["value"]) for item in kept)
            size = len(vocabulary) + config.num_oov_indices
            encoding = EMBEDDING if size > config.embedding_threshold else ONE_HOT
            features.append(CategoricalFeature(column.name, vocabulary, tuple(item["count"] for item in kept),
                                               config.num_oov_indices, encoding, config.embedding_dim, internal))
    if not features:
        raise DataError(f"every feature column is empty on the train split ({', '.join(left_out)}): nothing to learn "
                        f"from")
    if schema.problem_type == REGRESSION:
        problems.check_learnable(schema.label.name, REGRESSION, label_stats)
        return Transform(schema.label.name, (), tuple(features), label_stats["count"], REGRESSION,
                         label_mean=float(label_stats["mean"]), label_std=float(label_stats["std"]),
                         left_out=tuple(left_out))
    # The model's output index i is label_vocabulary[i] on every run.
    classes = problems.label_vocabulary([str(item["value"]) for item in label_stats["values"]])
    problems.check_learnable(schema.label.name, CLASSIFICATION, label_stats, classes)
    positive = problems.positive_class(classes, schema.positive_class, schema.label.name)
    return Transform(schema.label.name, classes, tuple(features), label_stats["count"], CLASSIFICATION, positive,
                     left_out=tuple(left_out))


def _write_transform(statistics: dict[str, Any], path: str, schema: Schema, config: PreprocessConfig) -> None:
    with beam.io.filesystems.FileSystems.create(path) as handle:
        handle.write(json.dumps(analyze(statistics, schema, config).to_json(), indent=2).encode())


def run(examples: str | os.PathLike[str], out: str | os.PathLike[str], config: PreprocessConfig,
        beam_config: BeamConfig) -> PreprocessResult:
    """Analyze the train split of `examples` and write the `transform` artifact at `out`."""
    artifacts.read_manifest(examples, artifacts.EXAMPLES)
    schema = Schema.read(examples)
    train = split_files(examples, "train")
    if not train:
        raise DataError(f"{examples}: the train split has no data files")
    kinds = schema.kinds(roles=(LABEL, FEATURE))
    # A classification label is analyzed for its classes, whatever type the data holds it in.
    kinds[schema.label.name] = NUMERIC if schema.problem_type == REGRESSION else CATEGORICAL
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
        manifest = artifacts.write_manifest(partial, artifacts.TRANSFORM, "preprocess", examples=str(examples),
                                            train_rows=transform.train_rows)
    if transform.left_out:
        log.warning("preprocess: left out, empty on every train row: %s", ", ".join(transform.left_out))
    log.info("preprocess: %d numeric, %d categorical features; %s",
             sum(f.kind == NUMERIC for f in transform.features),
             sum(f.kind == CATEGORICAL for f in transform.features),
             f"{len(transform.label_vocabulary)} classes" if transform.label_vocabulary else "regression")
    return PreprocessResult(str(out), transform, manifest["digest"])
