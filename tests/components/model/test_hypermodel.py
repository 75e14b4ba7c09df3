"""A user's own model (`tuner.hypermodel: model.py:build`) through tune, train, export and serving:
its hyperparameters (conditional ones too) are searched and recorded, the served SavedModel carries
its layers, and whatever is wrong with the module is one line naming the file and the line."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from components.errors import ConfigError
from components.model.hypermodel import HypermodelSource
from components.serving import EXAMPLES_INPUT, PROBABILITIES, SERVING_SIGNATURE
from components.train import step as train
from components.train.config import TrainingConfig
from components.train.warm_start import KERAS_MODEL
from components.tune import artifact, step as tune, trials
from components.tune.config import TunerConfig
from pipeline import config, dag

BODY = '''
import keras


def build(hp, inputs):
    """A body: the pipeline adds the head. `towers` brings `gate` only when it is 2."""
    x = inputs.encoded
    towers = hp.Int("towers", 1, 2)
    width = hp.Choice("width", [4, 8])
    outputs = [keras.layers.Dense(width, activation="relu", name=f"my_tower_{i}")(x) for i in range(towers)]
    if towers == 2:
        with hp.conditional_scope("towers", [2]):
            gate = hp.Boolean("gate")
        if gate:
            outputs = [keras.layers.Multiply(name="my_gate")(outputs)]
    return outputs[0] if len(outputs) == 1 else keras.layers.Concatenate(name="my_join")(outputs)
'''

FULL_CONTROL = '''
import keras


def make(hp, inputs):
    """A whole compiled model over the raw inputs: softmax over the classes."""
    x = keras.layers.Dense(hp.Int("units", 4, 8), activation="relu", name="mine")(inputs.encoded)
    out = keras.layers.Dense(len(inputs.problem.classes), activation="softmax", name="my_head")(x)
    model = keras.Model(list(inputs.raw.values()), out)
    model.compile(optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
'''


def module(tmp_path: Path, text: str, name: str = "model.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def search(inputs, tmp_path, reference: str, **settings):
    tuner = TunerConfig.model_validate({"algorithm": "random", "max_trials": 4, "max_epochs": 2, "batch_size": 64,
                                        "hypermodel": reference, **settings})
    return tune.run(inputs.examples, inputs.transform, tmp_path / "tuning", tuner, work_dir=tmp_path / "work")


def test_a_module_body_is_searched_trained_exported_and_served(penguin_inputs, tmp_path):
    path = module(tmp_path, BODY)
    result = search(penguin_inputs, tmp_path, f"{path}:build")
    table = trials.read_table(Path(result.path, trials.TRIALS_TABLE))
    assert {"hp.towers", "hp.width", "hp.gate", "hp.learning_rate", "hp.optimizer"} <= set(table[0])
    # `gate` is conditional: recorded only for trials with two towers, and said so in the search space.
    for row in table:
        assert (row["hp.gate"] != "") == (row["hp.towers"] == "2")
    space = json.loads(Path(result.path, artifact.SEARCH_SPACE).read_text())
    assert space["conditions"]["gate"] == "towers in 2"
    assert "hypermodel_digest" in json.loads(Path(result.path, "_manifest.json").read_text())

    model = train.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "model",
                      TrainingConfig(epochs=3), result.path, hypermodel_source=HypermodelSource.read(str(path)))
    assert model.hyperparameters["towers"] == result.best_hyperparameters["towers"]
    served_layers = {layer.name for layer in keras.models.load_model(Path(model.path, KERAS_MODEL)).layers}
    assert "my_tower_0" in served_layers and "probabilities" in served_layers  # the module's body, our head
    serve = tf.saved_model.load(model.path).signatures[SERVING_SIGNATURE]
    probabilities = serve(**{EXAMPLES_INPUT: tf.constant([tf.train.Example().SerializeToString()])})[PROBABILITIES]
    assert probabilities.shape == (1, 3)


def test_a_module_may_return_a_compiled_model_taking_full_control(penguin_inputs, tmp_path):
    path = module(tmp_path, FULL_CONTROL)
    result = search(penguin_inputs, tmp_path, f"{path}:make", objective="val_accuracy")
    assert set(result.best_hyperparameters) == {"units", "learning_rate"}
    model = train.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "model",
                      TrainingConfig(epochs=2), result.path, hypermodel_source=HypermodelSource.read(f"{path}:make"))
    assert "my_head" in {layer.name for layer in keras.models.load_model(Path(model.path, KERAS_MODEL)).layers}


@pytest.mark.parametrize("text, reference, message", [
    ("def build(hp, inputs)\n    return inputs.encoded\n", "build", "model.py:1: expected ':'"),
    ("import not_a_module_anywhere\n", "build", "model.py:1: importing it failed: ModuleNotFoundError"),
    ("def other(hp, inputs):\n    return inputs.encoded\n", "build",
     "model.py: no function 'build' (functions: other)"),
    ("def build(hp, inputs):\n    return 3\n", "build", "model.py: build returned int; expected a tensor"),
    ("def build(hp, inputs):\n    width = hp.Int('width', 1, 4)\n    return inputs.nothing\n", "build",
     "model.py:3: AttributeError"),
])
def test_a_broken_module_is_one_line_naming_the_file_and_line_before_any_trial(penguin_inputs, tmp_path, text,
                                                                               reference, message):
    path = module(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        search(penguin_inputs, tmp_path, f"{path}:{reference}")
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "work").exists()  # no trial started


def test_the_module_is_an_input_an_edit_changes_the_cache_key_and_the_search(tmp_path):
    path = module(tmp_path, BODY)
    (tmp_path / "penguins.csv").write_text("species,x\nA,1\nB,2\n")
    (tmp_path / "pipeline.yaml").write_text("data: {source: penguins.csv, label: species}\n"
                                            "tuner: {hypermodel: model.py}\n")
    loaded = config.load(tmp_path / "pipeline.yaml")
    assert loaded.tuner.hypermodel == str(path)  # relative to the config file
    before = dag.pipeline_arguments(loaded, "v")["hypermodel_source"]
    assert "\n" not in before  # one line: kfp writes defaults into the package's header comments
    assert HypermodelSource.from_parameter(before) == path.read_text()
    path.write_text(BODY.replace("[4, 8]", "[4, 16]"))
    assert dag.pipeline_arguments(loaded, "v")["hypermodel_source"] != before
    # The tune and train tasks take the module's text as a parameter: kfp keys their cache on it.
    tasks = {name: set(component.__wrapped__.__code__.co_varnames) if hasattr(component, "__wrapped__") else
             set(component.__code__.co_varnames) for name, component in (("tune", dag.tune), ("train", dag.train))}
    assert all("hypermodel_source" in names for names in tasks.values())
    with pytest.raises(ConfigError, match="tuner.hypermodel: .*missing.py does not exist"):
        config.from_dict({"data": {"source": "x.csv", "label": "y"}, "tuner": {"hypermodel": "missing.py"}})
