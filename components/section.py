"""The base of every config section a step owns: a frozen model that refuses unknown keys.

Each step keeps its section beside its code (e.g. `components.tune.config.TunerConfig`), and
`pipeline.config` composes the whole `PipelineConfig` from them, so a component never imports the
orchestration layer to read its own settings. Sections import nothing heavy: loading a config must
not pay for TensorFlow or Beam.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# A value of a Beam option or a hyperparameter as YAML writes it.
ScalarOption = str | int | float | bool


class Section(BaseModel):
    """A config section: validated when loaded, frozen afterwards, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
