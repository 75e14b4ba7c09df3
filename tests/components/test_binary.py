"""Binary classification as a first-class case, on scikit-learn's breast cancer table: one sigmoid
unit for the positive class (the second sorted class, or `data.positive_class`), AUC and PR-AUC as
training metrics and objectives, two-column probabilities for serving, and ROC AUC and PR AUC of
the positive class from TFMA against scikit-learn over the served model."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import average_precision_score, roc_auc_score

from components.beam_run import BeamConfig
from components.errors import ConfigError
from components.evaluate import step as evaluate
from components.evaluate.config import EvaluationConfig
from components.examples import split_files
from components.ingest import step as ingest
from components.preprocess import step as preprocess
from components.serving import CLASSES, EXAMPLES_INPUT, PROBABILITIES, SERVING_SIGNATURE
from components.train import step as train
from components.train.config import TrainingConfig
from components.transform import Transform
from components.tune import step as tune
from components.tune.config import TunerConfig
from pipeline import config


@pytest.fixture(scope="module")
def cancer(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    frame = load_breast_cancer(as_frame=True).frame
    frame["diagnosis"] = frame.pop("target").map({0: "malignant", 1: "benign"})
    frame.to_csv(root / "cancer.csv", index=False)
    cfg = config.from_dict({"data": {"source": str(root / "cancer.csv"), "label": "diagnosis",
                                     "positive_class": "malignant"}})
    ingest.run(cfg.data, BeamConfig(), root / "examples")
    preprocess.run(root / "examples", root / "transform", cfg.preprocess, BeamConfig())
    model = train.run(root / "examples", root / "transform", root / "model",
                      TrainingConfig(epochs=30, monitor="val_auc"),
                      {"architecture": "mlp", "mlp.num_layers": 1,
                   "mlp.units_0": 8, "learning_rate": 0.01, "optimizer": "adam"})
    return root, model


def test_the_positive_class_and_the_binary_metrics(cancer):
    root, model = cancer
    transform = Transform.read(root / "transform")
    assert transform.kind == "binary" and transform.label_vocabulary == ("benign", "malignant")
    assert transform.positive_class == "malignant"
    assert {"accuracy", "auc", "pr_auc", "loss"} == set(model.metrics) and model.metrics["auc"] > 0.95


def test_served_probabilities_are_two_columns_in_vocabulary_order_and_tfma_agrees_with_sklearn(cancer, tmp_path):
    root, model = cancer
    transform = Transform.read(root / "transform")
    rows = pq.read_table(split_files(root / "examples", "eval")).to_pylist()
    examples = [tf.train.Example(features=tf.train.Features(feature={
        feature.name: tf.train.Feature(float_list=tf.train.FloatList(value=[row[feature.name]]))
        for feature in transform.features})).SerializeToString() for row in rows]
    served = tf.saved_model.load(model.path).signatures[SERVING_SIGNATURE](**{EXAMPLES_INPUT: tf.constant(examples)})
    probabilities = served[PROBABILITIES].numpy()
    assert probabilities.shape == (len(rows), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    classes = [value.decode() for value in served[CLASSES].numpy()]
    assert classes == [transform.label_vocabulary[index] for index in probabilities.argmax(axis=1)]

    result = evaluate.run(root / "examples", model.path, tmp_path / "evaluation", EvaluationConfig(), BeamConfig())
    truth = np.array([row["diagnosis"] == "malignant" for row in rows])
    assert result.metrics["roc_auc"] == pytest.approx(roc_auc_score(truth, probabilities[:, 1]), abs=2e-3)
    assert result.metrics["pr_auc"] == pytest.approx(average_precision_score(truth, probabilities[:, 1]), abs=2e-2)
    assert result.metrics["roc_auc"] == pytest.approx(result.metrics["auc"]["malignant"], abs=2e-3)


def test_auc_is_an_objective_of_a_binary_search_and_accuracy_of_a_regression_is_not(cancer, diabetes_inputs,
                                                                                     tmp_path):
    root, _ = cancer
    search = tune.run(root / "examples", root / "transform", tmp_path / "tuning",
                      TunerConfig(objective="val_auc", algorithm="random", max_trials=2, max_epochs=2),
                      work_dir=tmp_path / "work")
    assert search.objective == "val_auc" and search.direction == "max" and 0.5 < search.best_score <= 1
    with pytest.raises(ConfigError, match="tuner.objective: a regression model does not log 'val_auc'"):
        tune.run(diabetes_inputs.examples, diabetes_inputs.transform, tmp_path / "nothing",
                 TunerConfig(objective="val_auc"), work_dir=tmp_path / "work2")
