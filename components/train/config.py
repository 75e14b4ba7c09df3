"""The `training` config section: training the final model, owned by the train step."""
from __future__ import annotations

from pydantic import Field, field_validator

from components.problem import logged_everywhere
from components.section import Section


class TrainingConfig(Section):
    """Training the final model with the best hyperparameters. Owned by the train step."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=1)
    early_stopping_patience: int = Field(10, ge=1)
    # An epoch improves on the best only by at least this much of the monitored metric, absolute: nats
    # of cross-entropy, a fraction of accuracy, a standardized label's units (components.train.early_stopping).
    # Without it a classifier that gets every eval row right trains on while its loss creeps towards 0.
    early_stopping_min_delta: float = Field(0.001, ge=0, lt=1)
    # Early stopping watches this metric on the eval split and restores the weights of its best epoch:
    # any metric the model logs (components.problem); a loss or an error is minimised.
    monitor: str = "val_loss"
    seed: int = 42

    @field_validator("monitor")
    @classmethod
    def _a_metric_some_model_logs(cls, monitor: str) -> str:
        offered = [name for name in logged_everywhere() if name.startswith("val_")]
        if monitor not in logged_everywhere():
            raise ValueError(f"unknown metric (models log: {', '.join(offered)}, and the same without val_ "
                             f"for the train split)")
        return monitor

    @property
    def resolved_monitor(self) -> str:
        return self.monitor

