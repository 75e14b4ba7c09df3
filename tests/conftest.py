"""Fixtures shared by the whole suite: the bundled data, the penguins examples and transform built
once by the real ingest and preprocess steps, and an MLflow tracking store in a temporary SQLite file."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.beam_run import BeamConfig
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


@dataclass(frozen=True)
class ModelInputs:
    examples: Path
    transform: Path
    pipeline: config.PipelineConfig


@pytest.fixture(scope="session")
def penguin_inputs(tmp_path_factory) -> ModelInputs:
    """The bundled penguins (label species, year excluded) as examples and transform artifacts."""
    root = tmp_path_factory.mktemp("model-inputs")
    pipeline = config.load(PENGUINS_CONFIG)
    from components.ingest import step as ingest
    from components.preprocess import step as preprocess

    ingest.run(pipeline.data, BeamConfig(), root / "examples")
    preprocess.run(root / "examples", root / "transform", pipeline.preprocess, BeamConfig())
    return ModelInputs(root / "examples", root / "transform", pipeline)


# The diabetes table as scikit-learn ships it (unscaled), with headers no one here chose: a space, a
# slash, a parenthesis and a non-ASCII letter, and a feature column empty on every row.
ODD_NAMES = {"bmi": "body mass (kg/m²)", "s1": "s1/tc", "bp": "blood pressure"}
EMPTY_COLUMN = "notes"


def write_diabetes(path: Path) -> Path:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame.rename(columns=ODD_NAMES)
    frame[EMPTY_COLUMN] = ""
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def diabetes_inputs(tmp_path_factory) -> ModelInputs:
    """The diabetes table (label `target`, a number: a regression) as examples and transform."""
    from components.ingest import step as ingest
    from components.preprocess import step as preprocess

    root = tmp_path_factory.mktemp("diabetes")
    pipeline = config.from_dict({"data": {"source": str(write_diabetes(root / "diabetes.csv")), "label": "target"}})
    ingest.run(pipeline.data, BeamConfig(), root / "examples")
    preprocess.run(root / "examples", root / "transform", pipeline.preprocess, BeamConfig())
    return ModelInputs(root / "examples", root / "transform", pipeline)


def record_syncs(monkeypatch, rename: str) -> list[tuple]:
    """Every `os.fsync` as ("fsync", inode, size; None for a directory) and every `os.<rename>` as
    ("rename", inode renamed), in the order they happen: the order that makes a write durable."""
    events: list[tuple] = []
    fsync, renaming = os.fsync, getattr(os, rename)

    def recorded_fsync(descriptor):
        found = os.fstat(descriptor)
        events.append(("fsync", found.st_ino, None if stat.S_ISDIR(found.st_mode) else found.st_size))
        fsync(descriptor)

    def recorded_rename(source, target, *args, **kwargs):
        events.append(("rename", os.stat(source).st_ino))
        renaming(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, rename, recorded_rename)
    return events


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory) -> str:
    # One store for the session: creating the SQLite schema takes seconds.
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


@contextlib.contextmanager
def _experiment(tracking_uri: str, artifact_root: Path):
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = mlflow.create_experiment(f"test-{uuid.uuid4().hex[:8]}", artifact_location=artifact_root.as_uri())
    try:
        yield experiment_id
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)


@pytest.fixture
def mlflow_experiment(tracking_uri, tmp_path):
    """A fresh experiment in the temporary store (artifacts under tmp_path); start runs in it by its id."""
    with _experiment(tracking_uri, tmp_path / "mlflow-artifacts") as experiment_id:
        yield experiment_id


@pytest.fixture(scope="module")
def module_mlflow_experiment(tracking_uri, tmp_path_factory):
    """As `mlflow_experiment`, for module-scoped fixtures."""
    with _experiment(tracking_uri, tmp_path_factory.mktemp("mlflow-artifacts")) as experiment_id:
        yield experiment_id


@pytest.fixture
def step_tracking(mlflow_experiment, monkeypatch):
    """Tracking as a pipeline step sees it: the store and experiment in the environment."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", mlflow_experiment)
    return mlflow_experiment


@dataclasses.dataclass
class TaskArtifact:
    """What a kfp task hands the launcher for an artifact: a path, a URI and metadata."""

    path: str
    metadata: dict = dataclasses.field(default_factory=dict)

    @property
    def uri(self) -> str:
        return self.path
