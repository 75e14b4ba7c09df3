"""The `preprocess` config section: the full-pass analyzers over the train split and the encodings
built from them."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.section import Section


class PreprocessConfig(Section):
    """The full-pass analyzers over the train split and the encodings built from them."""

    # Categorical values kept per feature, most frequent first; the rest map to out-of-vocabulary.
    vocabulary_top_k: int = Field(1000, ge=1)
    num_oov_indices: int = Field(1, ge=1)
    # A categorical feature with more values than this is embedded instead of one-hot encoded.
    embedding_threshold: int = Field(64, ge=1)
    embedding_dim: int = Field(8, ge=1)
    # What a missing numeric value becomes before normalization.
    numeric_fill: Literal["mean", "zero"] = "mean"
