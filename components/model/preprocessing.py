"""The Keras preprocessing layers built from a `transform` artifact: the front of every model that
is tuned, trained and served, so raw features are encoded the same way in training and serving.

Numeric: missing values (NaN) become the fill value, then `Normalization` with the train split's
mean and variance. Categorical: `StringLookup` over the train vocabulary with out-of-vocabulary
indices (a missing value, the empty string, is out of vocabulary), one-hot or embedded.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops

from components.schema import NUMERIC
from components.transform import ONE_HOT, Transform


@keras.saving.register_keras_serializable(package="tunepipe")
class FillMissing(keras.layers.Layer):
    """Replaces NaN (a missing numeric value) with a fixed fill value, e.g. the train mean."""

    def __init__(self, fill_value: float, **kwargs):
        super().__init__(**kwargs)
        self.fill_value = float(fill_value)

    def call(self, inputs):
        return ops.where(ops.isnan(inputs), ops.full_like(inputs, self.fill_value), inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "fill_value": self.fill_value}


def build_preprocessing(transform: Transform):
    """Keras inputs (one per raw feature, shape (1,), named by its internal name) and the encoded,
    concatenated feature tensor."""
    inputs, per_feature = encode(transform)
    encoded = list(per_feature.values())
    return inputs, encoded[0] if len(encoded) == 1 else keras.layers.Concatenate(name="features")(encoded)


def encode(transform: Transform) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keras inputs by internal name, and each feature's encoded tensor by the column's own name."""
    inputs: dict[str, Any] = {}
    encoded: dict[str, Any] = {}
    for feature in transform.features:
        key = feature.key
        if feature.kind == NUMERIC:
            raw = keras.Input(shape=(1,), name=key, dtype="float32")
            filled = FillMissing(feature.fill_value, name=f"{key}_fill")(raw)
            encoded[feature.name] = keras.layers.Normalization(mean=feature.mean, variance=feature.variance,
                                                               name=f"{key}_normalize")(filled)
        else:
            raw = keras.Input(shape=(1,), name=key, dtype="string")
            if feature.encoding == ONE_HOT:
                encoded[feature.name] = keras.layers.StringLookup(
                    vocabulary=list(feature.vocabulary), num_oov_indices=feature.num_oov_indices,
                    output_mode="one_hot", name=f"{key}_lookup")(raw)
            else:
                index = keras.layers.StringLookup(vocabulary=list(feature.vocabulary),
                                                  num_oov_indices=feature.num_oov_indices, name=f"{key}_lookup")(raw)
                vectors = keras.layers.Embedding(len(feature.vocabulary) + feature.num_oov_indices,
                                                 feature.embedding_dim, name=f"{key}_embed")(index)
                encoded[feature.name] = keras.layers.Flatten(name=f"{key}_flat")(vectors)
        inputs[key] = raw
    return inputs, encoded
