"""The network: the transform's preprocessing layers (`components.model.preprocessing`), a searched
stack of dense layers and the output head that fits the problem (`components.problem`), compiled
with the searched optimizer. The model that is tuned, trained and exported encodes raw features
itself.

Heads, by kind of problem:
- multiclass: a softmax over the label vocabulary (`probabilities`), sparse cross-entropy, accuracy;
- binary: one sigmoid unit, the probability of the positive class (`probability`), binary
  cross-entropy, accuracy, ROC AUC (`auc`) and PR AUC (`pr_auc`);
- regression: one linear unit on the standardized scale rescaled to the label's units
  (`prediction`); the loss (mean squared error or Huber) is taken on the standardized label, the
  metrics (`mae`, `mse`, `rmse`) in the label's units.
"""
from __future__ import annotations

import contextlib
import warnings

from components.model.hyperparameters import DEFAULT_SEARCH_SPACE, Architecture, architecture
from components.model.space import SearchSpaceConfig
from components.problem import REGRESSION
from components.serving import PROBABILITIES
from components.transform import Transform

# The output layer of each kind of model; fixed names, so warm starts match weights by name.
OUTPUT_LAYERS = {"multiclass": PROBABILITIES, "binary": "probability", REGRESSION: "prediction"}


def _optimizer(name: str, learning_rate: float):
    import keras

    if name == "sgd":
        # Plain SGD without momentum barely moves in a short trial; momentum makes it a fair contender.
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    factories = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "nadam": keras.optimizers.Nadam,
                 "rmsprop": keras.optimizers.RMSprop}
    return factories[name](learning_rate)


def _head(hidden, transform: Transform, shape: Architecture):
    """The output tensor, the loss and the metrics for the transform's kind of problem."""
    import keras

    from components.model.losses import StandardizedLoss

    kind = transform.kind
    if kind == REGRESSION:
        standardized = keras.layers.Dense(1, name="standardized")(hidden)
        outputs = keras.layers.Rescaling(transform.label_std, offset=transform.label_mean,
                                         name=OUTPUT_LAYERS[kind])(standardized)
        loss = StandardizedLoss(transform.label_mean, transform.label_std, shape.loss or "mse")
        metrics = [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.MeanSquaredError(name="mse"),
                   keras.metrics.RootMeanSquaredError(name="rmse")]
        return outputs, loss, metrics
    if kind == "binary":
        outputs = keras.layers.Dense(1, activation="sigmoid", name=OUTPUT_LAYERS[kind])(hidden)
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc"),
                   keras.metrics.AUC(curve="PR", name="pr_auc")]
        return outputs, "binary_crossentropy", metrics
    outputs = keras.layers.Dense(len(transform.label_vocabulary), activation="softmax",
                                 name=OUTPUT_LAYERS[kind])(hidden)
    return outputs, "sparse_categorical_crossentropy", ["accuracy"]


def build_model(hp, transform: Transform, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE):
    """The compiled Keras model for the hyperparameters `hp`: preprocessing, dense layers, the head.

    Layer names are fixed (`dense_0`, `dense_1`, ..., the head's) so that weights can be matched
    by name when warm-starting from an earlier model.
    """
    import keras

    from components.model.preprocessing import build_preprocessing

    shape = architecture(hp, space, transform.kind)
    inputs, hidden = build_preprocessing(transform)
    for index, units in enumerate(shape.units):
        hidden = keras.layers.Dense(units, name=f"dense_{index}")(hidden)
        if shape.batch_norm:
            hidden = keras.layers.BatchNormalization(name=f"batch_norm_{index}")(hidden)
        hidden = keras.layers.Activation(shape.activation, name=f"{shape.activation}_{index}")(hidden)
        if shape.dropout > 0:
            hidden = keras.layers.Dropout(shape.dropout, name=f"dropout_{index}")(hidden)
    outputs, loss, metrics = _head(hidden, transform, shape)
    model = keras.Model(inputs, outputs, name="tunepipe")
    # XLA compilation costs more than it saves on networks this small (measured: bench/tuning).
    model.compile(optimizer=_optimizer(shape.optimizer, shape.learning_rate), loss=loss, metrics=metrics,
                  jit_compile=False)
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
