"""The model registry side of a push: a pushed version is registered, linked to its training run and
tagged, the production alias moves to it, and resolve-baseline finds it there."""
from __future__ import annotations

import mlflow
import pytest
from mlflow import MlflowClient

from components import resolve_baseline
from components.push import PushResult
from components.resolve_baseline import REGISTRY
from pipeline import registry, tags


@pytest.fixture
def client(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient()


def pushed(tmp_path, version: int, forced: bool = False) -> PushResult:
    path = tmp_path / "serving" / "penguins" / str(version)
    path.mkdir(parents=True)
    return PushResult(True, "blessed", version, str(path), forced, digest=f"sha256:{version}")


def test_a_push_is_registered_and_becomes_production(tmp_path, client):
    assert registry.production("penguins") is None
    with mlflow.start_run() as training:
        pass
    registry.register("penguins", pushed(tmp_path, 1), training.info.run_id)
    number = registry.register("penguins", pushed(tmp_path, 2, forced=True), training.info.run_id)

    production = client.get_model_version_by_alias("penguins", tags.PRODUCTION_ALIAS)
    assert str(production.version) == number and production.run_id == training.info.run_id
    assert production.source == str(tmp_path / "serving" / "penguins" / "2")
    assert (production.tags[tags.VERSION_SERVING], production.tags[tags.VERSION_FORCED],
            production.tags[tags.VERSION_DIGEST]) == ("2", "true", "sha256:2")
    found = registry.production("penguins")
    assert (found.path, found.version, found.source) == (production.source, 2, REGISTRY)
    # resolve-baseline takes the registry's answer over the newest directory.
    (tmp_path / "serving" / "penguins" / "3").mkdir()
    assert resolve_baseline.resolve(tmp_path / "serving", "penguins", found) == found
