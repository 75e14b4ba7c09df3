"""The regression loss: mean squared error or Huber on the standardized label.

A regression model predicts in the label's own units (its last layer rescales by the train split's
mean and standard deviation), so its metrics and its served predictions are in those units. Its
loss standardizes both sides first: the optimization is that of a model trained on a standardized
label, whatever the label's scale (house prices or probabilities), as the learning-rate range of
the search space assumes.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tunepipe")
class StandardizedLoss(keras.losses.Loss):
    """`kind` ("mse" or "huber", delta 1 standard deviation) of (y - mean) / std against (ŷ - mean) / std."""

    def __init__(self, mean: float, std: float, kind: str = "mse", name: str | None = None, **kwargs):
        super().__init__(name=name or f"standardized_{kind}", **kwargs)
        self.mean = float(mean)
        self.std = float(std) if std else 1.0
        self.kind = kind

    def call(self, y_true, y_pred):
        y_true = (ops.cast(y_true, y_pred.dtype) - self.mean) / self.std
        y_pred = (y_pred - self.mean) / self.std
        if self.kind == "huber":
            return keras.losses.huber(y_true, y_pred, delta=1.0)
        return keras.losses.mean_squared_error(y_true, y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std, "kind": self.kind}
