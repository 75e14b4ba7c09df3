"""The network: the transform's preprocessing layers (`components.model.preprocessing`), a searched
stack of dense layers and a softmax over the label vocabulary, compiled with the searched optimizer.
The model that is tuned, trained and exported encodes raw features itself.
"""
from __future__ import annotations

import contextlib
import warnings

from components.model.hyperparameters import DEFAULT_SEARCH_SPACE, architecture
from components.model.space import SearchSpaceConfig
from components.serving import PROBABILITIES
from components.transform import Transform

OUTPUT_LAYER = PROBABILITIES


def _optimizer(name: str, learning_rate: float):
    import keras

    if name == "sgd":
        # Plain SGD without momentum barely moves in a short trial; momentum makes it a fair contender.
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    factories = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "nadam": keras.optimizers.Nadam,
                 "rmsprop": keras.optimizers.RMSprop}
    return factories[name](learning_rate)


def build_model(hp, transform: Transform, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE):
    """The compiled Keras model for the hyperparameters `hp`: preprocessing, dense layers, softmax.

    Layer names are fixed (`dense_0`, `dense_1`, ..., `probabilities`) so that weights can be matched
    by name when warm-starting from an earlier model.
    """
    import keras

    from components.model.preprocessing import build_preprocessing

    shape = architecture(hp, space)
    inputs, hidden = build_preprocessing(transform)
    for index, units in enumerate(shape.units):
        hidden = keras.layers.Dense(units, name=f"dense_{index}")(hidden)
        if shape.batch_norm:
            hidden = keras.layers.BatchNormalization(name=f"batch_norm_{index}")(hidden)
        hidden = keras.layers.Activation(shape.activation, name=f"{shape.activation}_{index}")(hidden)
        if shape.dropout > 0:
            hidden = keras.layers.Dropout(shape.dropout, name=f"dropout_{index}")(hidden)
    outputs = keras.layers.Dense(len(transform.label_vocabulary), activation="softmax", name=OUTPUT_LAYER)(hidden)
    model = keras.Model(inputs, outputs, name="tunepipe")
    # XLA compilation costs more than it saves on networks this small (measured: bench/tuning).
    model.compile(optimizer=_optimizer(shape.optimizer, shape.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
    return model


@contextlib.contextmanager
def expected_warnings():
    """Silence the Keras warnings that are expected here and say nothing to a user."""
    with warnings.catch_warnings():
        # The streamed dataset has no known length: Keras finds its end in the first epoch and says so.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        # Hyperband continues a trial from its checkpoint into a freshly compiled model, whose optimizer
        # has no state yet to load into: the optimizer starts over, as Keras Tuner intends.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield
