"""The `training` config section: training the final model, owned by the train step."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.section import Section


class TrainingConfig(Section):
    """Training the final model with the best hyperparameters. Owned by the train step."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    early_stopping_patience: int = Field(10, ge=1)
    # Early stopping watches this metric on the eval split and restores the weights of its best epoch.
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    seed: int = 42

