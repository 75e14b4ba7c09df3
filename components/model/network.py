"""The network: the transform's preprocessing layers (`components.model.preprocessing`), the searched
architecture (a plain MLP, a residual MLP or wide and deep, `components.model.space`) and the
output head that fits the problem (`components.problem`), compiled with the searched optimizer,
learning rate and weight decay. The model that is tuned, trained and exported encodes raw features
itself. `head` and `compile_model` are also what a user's hypermodel module gets
(`components.model.hypermodel`).

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


def optimizer(name: str, learning_rate: float, weight_decay: float = 0.0):
    import keras

    decay = weight_decay or None
    if name == "sgd":
        # Plain SGD without momentum barely moves in a short trial; momentum makes it a fair contender.
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=decay)
    factories = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "nadam": keras.optimizers.Nadam,
                 "rmsprop": keras.optimizers.RMSprop}
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 0.004)
    return factories[name](learning_rate, weight_decay=decay)


def head(towers: list, transform: Transform, loss_kind: str | None = None):
    """The output tensor, the loss and the metrics for the transform's kind of problem, over one
    tower (a tensor) or several whose logits are summed (wide and deep)."""
    import keras

    from components.model.losses import StandardizedLoss

    kind = transform.kind
    units = 1 if kind in (REGRESSION, "binary") else len(transform.label_vocabulary)
    activation = {REGRESSION: None, "binary": "sigmoid", "multiclass": "softmax"}[kind]
    name = "standardized" if kind == REGRESSION else OUTPUT_LAYERS[kind]
    if len(towers) == 1:
        output = keras.layers.Dense(units, activation=activation, name=name)(towers[0])
    else:
        logits = [keras.layers.Dense(units, name=f"{tower_name}_logits")(tower)
                  for tower_name, tower in zip(("deep", "wide"), towers)]
        output = keras.layers.Activation(activation or "linear", name=name)(keras.layers.Add(name="logits")(logits))
    if kind == REGRESSION:
        outputs = keras.layers.Rescaling(transform.label_std, offset=transform.label_mean,
                                         name=OUTPUT_LAYERS[kind])(output)
        loss = StandardizedLoss(transform.label_mean, transform.label_std, loss_kind or "mse")
        metrics = [keras.metrics.MeanAbsoluteError(name="mae"), keras.metrics.MeanSquaredError(name="mse"),
                   keras.metrics.RootMeanSquaredError(name="rmse")]
        return outputs, loss, metrics
    if kind == "binary":
        metrics = [keras.metrics.BinaryAccuracy(name="accuracy"), keras.metrics.AUC(name="auc"),
                   keras.metrics.AUC(curve="PR", name="pr_auc")]
        return output, "binary_crossentropy", metrics
    return output, "sparse_categorical_crossentropy", ["accuracy"]


def _dense(hidden, units: int, shape: Architecture, name: str):
    """Dense, batch norm (if searched), activation, dropout (if any): one hidden layer."""
    import keras

    hidden = keras.layers.Dense(units, name=name)(hidden)
    if shape.batch_norm:
        hidden = keras.layers.BatchNormalization(name=f"{name}_batch_norm")(hidden)
    hidden = keras.layers.Activation(shape.activation, name=f"{name}_{shape.activation}")(hidden)
    if shape.dropout > 0:
        hidden = keras.layers.Dropout(shape.dropout, name=f"{name}_dropout")(hidden)
    return hidden


def _towers(encoded, shape: Architecture) -> list:
    """The searched architecture over the encoded features: the tensors the head reads."""
    import keras

    if shape.kind == "residual":
        width = shape.units[0] if shape.units else 64
        hidden = keras.layers.Dense(width, name="residual_in")(encoded)
        for index, units in enumerate(shape.units):
            inner = _dense(hidden, units, shape, f"residual_{index}_a")
            inner = keras.layers.Dense(units, name=f"residual_{index}_b")(inner)
            hidden = keras.layers.Activation(shape.activation, name=f"residual_{index}_out")(
                keras.layers.Add(name=f"residual_{index}_add")([hidden, inner]))
        return [hidden]
    hidden = encoded
    for index, units in enumerate(shape.units):
        hidden = _dense(hidden, units, shape, f"dense_{index}")
    # Wide and deep: the deep tower, and the encoded features themselves (a linear model) beside it.
    return [hidden, encoded] if shape.kind == "wide_deep" else [hidden]


def compile_model(model, hp_values: Architecture, loss, metrics):
    # XLA compilation costs more than it saves on networks this small (measured: bench/tuning).
    model.compile(optimizer=optimizer(hp_values.optimizer, hp_values.learning_rate, hp_values.weight_decay),
                  loss=loss, metrics=metrics, jit_compile=False)
    return model


def build_model(hp, transform: Transform, space: SearchSpaceConfig = DEFAULT_SEARCH_SPACE):
    """The compiled Keras model for the hyperparameters `hp`: preprocessing, the architecture, the head.

    Layer names are fixed (`dense_0`, `residual_0_a`, ..., the head's) so that weights can be
    matched by name when warm-starting from an earlier model.
    """
    import keras

    from components.model.preprocessing import build_preprocessing

    shape = architecture(hp, space, transform.kind)
    inputs, encoded = build_preprocessing(transform)
    outputs, loss, metrics = head(_towers(encoded, shape), transform, shape.loss)
    return compile_model(keras.Model(inputs, outputs, name="tunepipe"), shape, loss, metrics)


@contextlib.contextmanager
def expected_warnings():
    """Silence the Keras warnings that are expected here and say nothing to a user."""
    with warnings.catch_warnings():
        # A streamed split (data.py) has no known length: Keras finds its end in the first epoch and says so.
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        # Hyperband continues a trial from its checkpoint into a freshly compiled model, whose optimizer
        # has no state yet to load into: the optimizer starts over, as Keras Tuner intends.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        yield
