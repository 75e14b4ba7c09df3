"""Fixtures shared by the whole suite: the bundled data and small tables written on the fly."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config

ROOT = Path(__file__).resolve().parent.parent
PENGUINS = ROOT / "data" / "penguins" / "penguins.csv"
PENGUINS_CONFIG = ROOT / "data" / "penguins" / "pipeline.yaml"


@pytest.fixture
def penguins_csv() -> Path:
    return PENGUINS


def data_config(source, **data):
    """A validated config for `source` with the penguins label, plus any data-section overrides."""
    return config.from_dict({"data": {"source": str(source), "label": "species", **data}})
