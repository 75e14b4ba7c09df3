"""The train step: accuracy on the penguins, the exported SavedModel against the Keras model on raw
rows, warm starts, the epochs it reports and the hyperparameters file. (What it records in MLflow is
the train hook's: tests/pipeline/test_train_hook.py.)"""
from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from components import artifacts, serving
from components.examples import split_files
from components.errors import DataError, TunepipeError
from components.model import hyperparameters as model, network
from components.train import step as train
from components.train.config import TrainingConfig
from components.train.warm_start import KERAS_MODEL, warm_start_from
from components.transform import Transform
from components.tune import step as tune
from components.tune.config import TunerConfig

TRAINING = TrainingConfig(epochs=40, early_stopping_patience=5)
HYPERPARAMETERS = {"architecture": "mlp", "mlp.num_layers": 1,
                   "mlp.units_0": 16, "dropout": 0.0, "learning_rate": 0.02, "optimizer": "adam"}


@pytest.fixture(scope="module")
def trained(penguin_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "model"
    epochs: list[tuple[int, dict]] = []
    result = train.run(penguin_inputs.examples, penguin_inputs.transform, out, TRAINING, HYPERPARAMETERS,
                       epoch_observer=lambda epoch, logs: epochs.append((epoch, logs)))
    return result, epochs


def eval_rows(penguin_inputs) -> list[dict]:
    return pq.read_table(split_files(penguin_inputs.examples, "eval")).to_pylist()


def keras_inputs(rows: list[dict], transform: Transform) -> dict[str, np.ndarray]:
    """Raw rows as the Keras model's inputs: NaN for a missing number, "" for a missing category."""
    inputs = {}
    for feature in transform.features:
        values = [row.get(feature.name) for row in rows]
        if feature.kind == "numeric":
            inputs[feature.name] = np.array([np.nan if v is None else v for v in values], np.float32).reshape(-1, 1)
        else:
            inputs[feature.name] = np.array(["" if v is None else v for v in values], object).reshape(-1, 1)
    return inputs


def keras_probabilities(keras_model, rows: list[dict], transform: Transform) -> np.ndarray:
    tensors = {name: tf.constant(values) for name, values in keras_inputs(rows, transform).items()}
    return keras_model(tensors, training=False).numpy()


def serialized_examples(rows: list[dict], transform: Transform) -> list[bytes]:
    """Raw rows as tf.Example, as a client would send them: a missing value is a missing feature."""
    examples = []
    for row in rows:
        features = {}
        for feature in transform.features:
            value = row.get(feature.name)
            if value is None:
                continue
            if feature.kind == "numeric":
                features[feature.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
            else:
                features[feature.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        examples.append(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    return examples


def test_the_trained_model_is_accurate_and_the_artifact_complete(trained, penguin_inputs):
    result, _ = trained
    transform = Transform.read(penguin_inputs.transform)
    assert result.metrics["accuracy"] >= 0.95
    out = result.path
    assert json.loads(open(f"{out}/{train.METRICS}").read()) == result.metrics
    manifest = artifacts.read_manifest(out, artifacts.MODEL)
    assert manifest["metrics"] == result.metrics and manifest["hyperparameters"] == result.hyperparameters
    assert {name: result.hyperparameters[name] for name in HYPERPARAMETERS} == HYPERPARAMETERS
    assert model.read_hyperparameters(f"{out}/{train.HYPERPARAMETERS}") == result.hyperparameters
    assert open(f"{out}/{serving.LABEL_VOCABULARY}").read().splitlines() == list(transform.label_vocabulary)
    assert 1 <= result.best_epoch <= result.epochs_trained <= TRAINING.epochs
    assert len(open(f"{out}/{train.HISTORY}").read().splitlines()) == 1 + result.epochs_trained

    # The reported accuracy is that of the exported weights (the best epoch's), recomputed here.
    rows = eval_rows(penguin_inputs)
    keras_model = keras.models.load_model(f"{out}/{KERAS_MODEL}")
    predicted = keras_probabilities(keras_model, rows, transform).argmax(axis=1)
    labels = [transform.label_vocabulary.index(row["species"]) for row in rows]
    assert np.mean(predicted == np.array(labels)) == pytest.approx(result.metrics["accuracy"])


def test_every_epoch_is_reported_with_its_train_and_eval_metrics(trained):
    result, epochs = trained
    assert [epoch for epoch, _ in epochs] == list(range(result.epochs_trained))
    assert all({"loss", "accuracy", "val_loss", "val_accuracy"} <= set(logs) for _, logs in epochs)
    # Early stopping kept the weights of the epoch no later one beat by training.early_stopping_min_delta,
    # and stopped `patience` epochs after it.
    losses = [logs["val_loss"] for _, logs in epochs]
    best = losses[result.best_epoch - 1]
    assert all(loss >= best - TRAINING.early_stopping_min_delta for loss in losses[result.best_epoch:])
    if result.epochs_trained < TRAINING.epochs:
        assert result.epochs_trained == result.best_epoch + TRAINING.early_stopping_patience


def test_serving_default_takes_serialized_examples_and_matches_the_keras_model(trained, penguin_inputs):
    result, _ = trained
    transform = Transform.read(penguin_inputs.transform)
    rows = eval_rows(penguin_inputs)[:6]
    # A row with a missing number, an island the train split never had and no sex at all.
    rows.append({**rows[0], "bill_length_mm": None, "island": "Atlantis", "sex": None})

    keras_model = keras.models.load_model(f"{result.path}/{KERAS_MODEL}")
    expected = keras_probabilities(keras_model, rows, transform)
    served = tf.saved_model.load(result.path)
    by_example = served.signatures[serving.SERVING_SIGNATURE](
        **{serving.EXAMPLES_INPUT: tf.constant(serialized_examples(rows, transform))})
    raw = served.signatures[serving.RAW_SIGNATURE](**{name: tf.constant(values)
                                                    for name, values in keras_inputs(rows, transform).items()})

    for outputs in (by_example, raw):
        probabilities = outputs[serving.PROBABILITIES].numpy()
        assert probabilities.shape == (len(rows), len(transform.label_vocabulary))
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
        classes = [label.decode() for label in outputs[serving.CLASSES].numpy()]
        assert classes == [transform.label_vocabulary[index] for index in expected.argmax(axis=1)]
    assert np.isfinite(expected[-1]).all() and expected[-1].sum() == pytest.approx(1.0, abs=1e-5)


def weights(keras_model) -> dict[str, np.ndarray]:
    return {weight.path: np.asarray(weight.numpy()) for weight in keras_model.weights}


def test_warm_start_loads_weights_only_when_names_and_shapes_match(trained, penguin_inputs, tmp_path):
    result, _ = trained
    transform = Transform.read(penguin_inputs.transform)
    previous = keras.models.load_model(f"{result.path}/{KERAS_MODEL}")

    same = network.build_model(model.for_values(result.hyperparameters), transform)
    loaded, note = warm_start_from(same, result.path)
    assert loaded, note
    assert weights(same).keys() == weights(previous).keys()
    for name, value in weights(previous).items():
        np.testing.assert_array_equal(weights(same)[name], value)

    # A serving directory holds only the SavedModel: its variables carry the same names.
    saved_model_only = tmp_path / "serving" / "1"
    shutil.copytree(result.path, saved_model_only, ignore=shutil.ignore_patterns(KERAS_MODEL))
    again = network.build_model(model.for_values(result.hyperparameters), transform)
    loaded, note = warm_start_from(again, saved_model_only)
    assert loaded, note
    for name, value in weights(previous).items():
        np.testing.assert_array_equal(weights(again)[name], value)

    wider = network.build_model(model.for_values({**result.hyperparameters, "mlp.units_0": 17}), transform)
    loaded, note = warm_start_from(wider, result.path)
    assert not loaded and "shapes differ" in note and "dense_0/kernel" in note
    deeper = network.build_model(model.for_values({**result.hyperparameters, "mlp.num_layers": 2, "mlp.units_1": 4}),
                               transform)
    loaded, note = warm_start_from(deeper, result.path)
    assert not loaded and "architecture differs" in note
    loaded, note = warm_start_from(same, tmp_path / "nothing-here")
    assert not loaded and "cannot read" in note


def test_a_warm_started_run_starts_from_the_earlier_weights(trained, penguin_inputs, tmp_path):
    result, _ = trained
    # One epoch at a tiny learning rate: only a model that starts from the trained weights is accurate.
    warm = train.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "warm",
                     TrainingConfig(epochs=1), {**result.hyperparameters, "learning_rate": 1e-6},
                     warm_start=result.path)
    assert warm.warm_started and "warm-started" in warm.warm_start_note
    assert warm.metrics["accuracy"] >= 0.95
    assert artifacts.read_manifest(warm.path, artifacts.MODEL)["warm_started"] is True


def test_without_hyperparameters_training_uses_the_defaults(penguin_inputs, tmp_path):
    result = train.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "model",
                       TrainingConfig(epochs=1), None)
    assert result.hyperparameters == model.default_hyperparameters()
    assert not result.warm_started and result.warm_start_note is None


def test_hyperparameters_file_round_trip(penguin_inputs, tmp_path):
    values = {"architecture": "mlp", "mlp.num_layers": 2, "mlp.units_0": 12, "mlp.units_1": 5, "dropout": 0.2,
              "learning_rate": 0.003, "optimizer": "rmsprop", "activation": "tanh", "batch_norm": True,
              "weight_decay": 0.0}
    path = tmp_path / "hyperparameters.json"
    model.write_hyperparameters(path, {**values, "tuner/epochs": 3, "tuner/bracket": 1})
    assert model.read_hyperparameters(path) == values
    assert train.resolve_hyperparameters(str(path)) == values
    built = network.build_model(model.for_values(model.read_hyperparameters(path)),
                              Transform.read(penguin_inputs.transform))
    assert [built.get_layer(f"dense_{i}").units for i in range(2)] == [12, 5]
    assert built.get_layer("dense_1_batch_norm") is not None and built.get_layer("dense_0_dropout").rate == 0.2
    assert type(built.optimizer).__name__ == "RMSprop"
    assert float(built.optimizer.learning_rate.numpy()) == pytest.approx(0.003)

    # The tune step's artifact is accepted as it is.
    tuning = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning",
                      TunerConfig(enabled=False))
    assert train.resolve_hyperparameters(tuning.path) == tuning.best_hyperparameters

    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        model.read_hyperparameters(path)
    with pytest.raises(DataError, match="does not exist"):
        train.resolve_hyperparameters(str(tmp_path / "missing.json"))


def test_diverging_training_ends_in_one_line(penguin_inputs, tmp_path):
    with pytest.raises(TunepipeError) as raised:
        train.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "model", TrainingConfig(epochs=2),
                  {**HYPERPARAMETERS, "optimizer": "sgd", "learning_rate": 1e12})
    assert str(raised.value).startswith("training diverged") and "\n" not in str(raised.value)
    assert not (tmp_path / "model").exists()
