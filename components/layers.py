"""Keras layers of our own that the preprocessing needs and Keras does not have."""
from __future__ import annotations

import keras
from keras import ops


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
