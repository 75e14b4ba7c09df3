"""The model registry side of a push: a pushed version is registered, linked to its training run and
tagged, the production alias moves to it, and resolve-baseline finds it there."""
from __future__ import annotations

from pathlib import Path

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


def served(tmp_path, version: int) -> Path:
    """A version directory as a push leaves it: a SavedModel and its digest file."""
    path = tmp_path / "serving" / "penguins" / str(version)
    path.mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"graph")
    (path / "tunepipe_model_digest.txt").write_text(f"sha256:{version}\n")
    return path


def test_a_version_served_but_never_registered_is_registered_when_the_next_run_resolves(tmp_path, client):
    registry.register("penguins", pushed(tmp_path, 1), None)
    newest = served(tmp_path, 2)  # a push killed between its rename and the registry
    production = registry.reconcile(str(tmp_path / "serving"), "penguins", registry.production("penguins"))

    assert (production.path, production.version) == (str(newest), 2)
    alias = client.get_model_version_by_alias("penguins", tags.PRODUCTION_ALIAS)
    assert alias.source == str(newest) and alias.tags[tags.VERSION_RECOVERED] == "true"
    assert alias.tags[tags.VERSION_DIGEST] == "sha256:2"
    # Asked again, nothing changes: no second registered version of the same directory.
    assert registry.reconcile(str(tmp_path / "serving"), "penguins", registry.production("penguins")).version == 2
    assert len(client.search_model_versions("name = 'penguins'")) == 2


def test_a_version_registered_without_its_alias_gets_the_alias_not_a_second_version(tmp_path, client):
    registry.register("penguins", pushed(tmp_path, 1), None)
    newest = served(tmp_path, 2)
    # A push killed between creating the registry's version and moving the alias.
    client.create_model_version("penguins", source=str(newest), tags={tags.VERSION_SERVING: "2",
                                                                      tags.VERSION_DIGEST: "sha256:2"})
    registry.reconcile(str(tmp_path / "serving"), "penguins", registry.production("penguins"))

    assert client.get_model_version_by_alias("penguins", tags.PRODUCTION_ALIAS).source == str(newest)
    assert len(client.search_model_versions("name = 'penguins'")) == 2


def test_an_integer_directory_no_push_made_is_left_to_its_owner(tmp_path, client):
    registry.register("penguins", pushed(tmp_path, 1), None)
    (tmp_path / "serving" / "penguins" / "2").mkdir()  # no SavedModel in it
    production = registry.production("penguins")
    assert registry.reconcile(str(tmp_path / "serving"), "penguins", production) == production


def test_a_directory_registered_for_another_model_is_not_taken_for_the_one_served_there_now(tmp_path, client):
    # A push whose registry call failed after the server had applied it: registered, then withdrawn;
    # the next push serves another model under the same number.
    registry.register("penguins", pushed(tmp_path, 1), None)
    now = PushResult(True, "blessed", 1, str(tmp_path / "serving" / "penguins" / "1"), digest="sha256:other")
    number = registry.register("penguins", now, None)

    alias = client.get_model_version_by_alias("penguins", tags.PRODUCTION_ALIAS)
    assert str(alias.version) == number == "2" and alias.tags[tags.VERSION_DIGEST] == "sha256:other"
