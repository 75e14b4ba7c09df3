"""The layout of an `examples` artifact, which ingest writes and every later step reads:

    schema.json         label, features and passthrough columns with their kinds
    statistics.json     row counts and per-split, per-column statistics
    train/ eval/ test/  Parquet shards
    rejects/            rows that could not be parsed, one JSON object a line, with the reason
    _manifest.json      written last
"""
from __future__ import annotations

import os
from pathlib import Path

SPLITS = ("train", "eval", "test")
STATISTICS_FILE = "statistics.json"
REJECTS_DIR = "rejects"


def split_files(examples: str | os.PathLike[str], split: str) -> list[str]:
    """The Parquet shards of one split of an `examples` artifact."""
    return sorted(str(path) for path in Path(examples, split).glob("*.parquet"))


def held_out_split(examples: str | os.PathLike[str]) -> str:
    """The split a model is evaluated on: `test` when the examples have one, else `eval`."""
    return "test" if split_files(examples, "test") else "eval"
