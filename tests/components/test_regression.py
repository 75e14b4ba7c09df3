"""A regression end to end through the components, on the diabetes table with odd column names and
an empty column: auto-detection, the standardized label, a model that answers in the label's
units through both serving signatures (missing values sent either way), and TFMA's regression
metrics against numpy over the served model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from components import artifacts
from components.beam_run import BeamConfig
from components.evaluate import step as evaluate
from components.evaluate.config import EvaluationConfig
from components.examples import split_files
from components.schema import Schema
from components.serving import EXAMPLES_INPUT, FEATURES_FILE, PREDICTIONS, RAW_SIGNATURE, SERVING_SIGNATURE
from components.train import step as train
from components.train.config import TrainingConfig
from components.transform import Transform
from tests.conftest import EMPTY_COLUMN, ODD_NAMES

HYPERPARAMETERS = {"architecture": "mlp", "mlp.num_layers": 1,
                   "mlp.units_0": 16, "dropout": 0.0, "learning_rate": 0.01, "optimizer": "adam"}


@pytest.fixture(scope="module")
def trained(diabetes_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("regression") / "model"
    return train.run(diabetes_inputs.examples, diabetes_inputs.transform, out,
                     TrainingConfig(epochs=40, early_stopping_patience=5), HYPERPARAMETERS)


def eval_rows(inputs) -> list[dict]:
    return pq.read_table(split_files(inputs.examples, "eval")).to_pylist()


def example(row: dict, features, empty: tuple[str, ...] = (), absent: tuple[str, ...] = ()) -> bytes:
    """A tf.Example keyed by the columns' own names; `empty` ones with an empty value list."""
    feature = {}
    for column in features:
        if column.name in absent:
            continue
        values = [] if column.name in empty else [row[column.name]]
        feature[column.name] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_a_numeric_label_with_many_values_is_a_regression_and_the_label_is_standardized(diabetes_inputs):
    schema = Schema.read(diabetes_inputs.examples)
    assert schema.problem_type == "regression" and schema.problem_reason.startswith("auto: ")
    transform = Transform.read(diabetes_inputs.transform)
    train_labels = pq.read_table(split_files(diabetes_inputs.examples, "train")).column("target").to_numpy()
    assert transform.kind == "regression" and transform.label_vocabulary == ()
    assert transform.label_mean == pytest.approx(train_labels.mean())
    assert transform.label_std == pytest.approx(train_labels.std())
    # The empty column is left out; the odd names are features under their own names.
    assert transform.left_out == (EMPTY_COLUMN,)
    assert {feature.name for feature in transform.features} >= set(ODD_NAMES.values())
    assert {feature.key for feature in transform.features} >= {"body_mass_kg_m2", "s1_tc", "blood_pressure"}


def test_the_model_answers_in_the_labels_units_through_both_signatures(trained, diabetes_inputs):
    assert set(trained.metrics) == {"loss", "mae", "mse", "rmse"}
    assert trained.metrics["rmse"] == pytest.approx(np.sqrt(trained.metrics["mse"]), rel=1e-4)
    transform = Transform.read(diabetes_inputs.transform)
    manifest = artifacts.read_manifest(trained.path, artifacts.MODEL)
    assert manifest["problem"] == "regression" and not Path(trained.path, "label_vocabulary.txt").exists()
    assert json.loads(Path(trained.path, FEATURES_FILE).read_text())[0].keys() == {"name", "kind", "input"}

    rows = eval_rows(diabetes_inputs)
    served = tf.saved_model.load(trained.path)
    by_example = served.signatures[SERVING_SIGNATURE](
        **{EXAMPLES_INPUT: tf.constant([example(row, transform.features) for row in rows])})[PREDICTIONS].numpy()
    raw = served.signatures[RAW_SIGNATURE](**{feature.key: tf.constant([[row[feature.name]] for row in rows],
                                                                        tf.float32)
                                              for feature in transform.features})[PREDICTIONS].numpy()
    assert by_example.shape == (len(rows),)
    np.testing.assert_allclose(by_example, raw, rtol=1e-5)
    labels = np.array([row["target"] for row in rows])
    # In the label's units: as far from the labels as the reported eval RMSE says.
    assert np.sqrt(np.mean((by_example - labels) ** 2)) == pytest.approx(trained.metrics["rmse"], rel=1e-3)
    assert np.sqrt(np.mean((by_example - labels) ** 2)) < labels.std()


def test_a_missing_value_is_the_same_left_out_or_sent_as_an_empty_list(trained, diabetes_inputs):
    transform = Transform.read(diabetes_inputs.transform)
    row = eval_rows(diabetes_inputs)[0]
    serve = tf.saved_model.load(trained.path).signatures[SERVING_SIGNATURE]
    missing = ("body mass (kg/m²)", "s1/tc")
    answers = serve(**{EXAMPLES_INPUT: tf.constant([
        example(row, transform.features, empty=missing), example(row, transform.features, absent=missing),
        example(row, transform.features)])})[PREDICTIONS].numpy()
    assert answers[0] == pytest.approx(answers[1])
    assert np.isfinite(answers).all() and answers[0] != pytest.approx(answers[2])


def test_tfma_measures_the_served_predictions(trained, diabetes_inputs, tmp_path):
    result = evaluate.run(diabetes_inputs.examples, trained.path, tmp_path / "evaluation",
                          EvaluationConfig(slices=("sex",)), BeamConfig())
    rows = eval_rows(diabetes_inputs)
    transform = Transform.read(diabetes_inputs.transform)
    serve = tf.saved_model.load(trained.path).signatures[SERVING_SIGNATURE]
    predicted = serve(**{EXAMPLES_INPUT: tf.constant([example(row, transform.features) for row in rows])}
                      )[PREDICTIONS].numpy().astype(np.float64)
    labels = np.array([row["target"] for row in rows], np.float64)
    metrics = result.metrics
    assert metrics["example_count"] == len(rows)
    assert metrics["mse"] == pytest.approx(np.mean((predicted - labels) ** 2), rel=1e-4)
    assert metrics["rmse"] == pytest.approx(np.sqrt(metrics["mse"]))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(predicted - labels)), rel=1e-4)
    assert metrics["r2"] == pytest.approx(1 - metrics["mse"] / labels.var(), rel=1e-4)
    assert metrics["mean_label"] == pytest.approx(labels.mean()) and metrics["mean_prediction"] == pytest.approx(
        predicted.mean(), rel=1e-4)
    # The default: better than always predicting the mean, which scores the label's standard deviation.
    [threshold] = result.thresholds
    assert (threshold["metric"], threshold["source"], threshold["below"]) == ("rmse", "default",
                                                                               pytest.approx(labels.std()))
    assert result.blessed
    document = json.loads(Path(result.path, evaluate.METRICS).read_text())
    assert set(document["slices"]["sex"]) == {"1", "2"} and "rmse" in document["slices"]["sex"]["1"]["candidate"]
    assert not Path(result.path, evaluate.CONFUSION_MATRIX).exists()


def test_a_baseline_solving_another_problem_is_never_compared_and_blocks_the_push(trained, diabetes_inputs,
                                                                                  penguin_inputs, tmp_path):
    classifier = train.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "classifier",
                           TrainingConfig(epochs=1), None)
    result = evaluate.run(diabetes_inputs.examples, trained.path, tmp_path / "evaluation", EvaluationConfig(),
                          BeamConfig(), baseline=classifier.path)
    assert not result.blessed and result.baseline is None
    assert result.failures[0]["kind"] == "incomparable"
    assert "solves a classification, the candidate a regression" in result.failures[0]["message"]
    assert "--force-push" in result.failures[0]["message"]


def test_a_baseline_taking_other_inputs_is_never_compared(trained, diabetes_inputs, tmp_path):
    from components.ingest import step as ingest
    from components.preprocess import step as preprocess
    from pipeline import config

    data = config.from_dict({"data": {"source": diabetes_inputs.pipeline.data.source, "label": "target",
                                      "features": {"exclude": ["age"]}}})
    ingest.run(data.data, BeamConfig(), tmp_path / "examples")
    preprocess.run(tmp_path / "examples", tmp_path / "transform", data.preprocess, BeamConfig())
    fewer = train.run(tmp_path / "examples", tmp_path / "transform", tmp_path / "fewer", TrainingConfig(epochs=1),
                      HYPERPARAMETERS)
    result = evaluate.run(diabetes_inputs.examples, trained.path, tmp_path / "evaluation", EvaluationConfig(),
                          BeamConfig(), baseline=fewer.path)
    assert not result.blessed
    assert "takes other inputs than the candidate (new age)" in result.failures[0]["message"]
