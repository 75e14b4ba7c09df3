"""Pushing to the TF Serving layout and the registry, and finding the model in production."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components import artifacts, push
from pipeline.errors import DataError

BLESSED = {"blessed": True, "failures": []}
NOT_BLESSED = {"blessed": False, "failures": [{"metric": "accuracy", "threshold": ">= 0.9", "slice": "overall",
                                               "value": 0.61}]}


def model_artifact(root: Path, weights: bytes) -> Path:
    """A model artifact as train writes it: a SavedModel's files plus the manifest."""
    with artifacts.building(root) as partial:
        (partial / "saved_model.pb").write_bytes(b"graph")
        (partial / "variables").mkdir()
        (partial / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
        (partial / "variables" / "variables.index").write_bytes(b"index")
        (partial / "model.keras").write_bytes(b"not served")
        artifacts.write_manifest(partial, "model", "train")
    return root


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient()


def test_blessed_models_get_increasing_versions_and_the_alias(tmp_path, registry):
    serving = tmp_path / "serving"
    first = push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins")
    second = push.run(model_artifact(tmp_path / "m2", b"two"), BLESSED, serving, "penguins")

    assert (first.pushed, first.version, second.pushed, second.version) == (True, 1, True, 2)
    assert push.serving_versions(serving, "penguins") == [1, 2]
    version_two = serving / "penguins" / "2"
    assert (version_two / "variables" / "variables.data-00000-of-00001").read_bytes() == b"two"
    assert (version_two / "saved_model.pb").exists() and not (version_two / "model.keras").exists()
    production = registry.get_model_version_by_alias("penguins", "production")
    assert production.source == str(version_two)
    assert production.tags["serving_version"] == "2"
    assert push.resolve_baseline(serving, "penguins") == push.Baseline(str(version_two), 2, "registry")


def test_not_blessed_pushes_nothing_and_says_why(tmp_path, registry):
    serving = tmp_path / "serving"
    push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins")
    before = sorted(str(p) for p in serving.rglob("*"))
    result = push.run(model_artifact(tmp_path / "m2", b"two"), NOT_BLESSED, serving, "penguins")
    assert not result.pushed
    assert result.reason == "not blessed: accuracy >= 0.9 (got 0.61)"
    assert sorted(str(p) for p in serving.rglob("*")) == before
    assert registry.get_model_version_by_alias("penguins", "production").tags["serving_version"] == "1"


def test_force_pushes_and_records_that_it_was_forced(tmp_path, registry):
    result = push.run(model_artifact(tmp_path / "m1", b"one"), NOT_BLESSED, tmp_path / "serving", "penguins",
                      force=True)
    assert (result.pushed, result.forced, result.version) == (True, True, 1)
    assert registry.get_model_version_by_alias("penguins", "production").tags["forced"] == "true"


def test_the_model_already_in_production_is_not_pushed_again(tmp_path, registry):
    model = model_artifact(tmp_path / "m1", b"one")
    push.run(model, BLESSED, tmp_path / "serving", "penguins")
    again = push.run(model, BLESSED, tmp_path / "serving", "penguins")
    assert not again.pushed and again.version == 1
    assert push.serving_versions(tmp_path / "serving", "penguins") == [1]


def test_a_push_killed_before_the_rename_leaves_nothing_tf_serving_would_load(tmp_path):
    model = model_artifact(tmp_path / "m1", b"one")
    serving = tmp_path / "serving"
    script = textwrap.dedent(f"""
        import os, signal
        from components import push
        # Die the hard way at the worst moment: everything copied, nothing renamed yet.
        os.rename = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        push.run({str(model)!r}, {{"blessed": True}}, {str(serving)!r}, "penguins")
    """)
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    killed = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert killed.returncode == -9
    leftovers = [entry.name for entry in (serving / "penguins").iterdir() if entry.is_dir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".1.partial-")
    assert push.serving_versions(serving, "penguins") == []
    assert push.resolve_baseline(serving, "penguins") is None

    result = push.run(model, BLESSED, serving, "penguins")
    assert result.version == 1
    assert [entry.name for entry in (serving / "penguins").iterdir() if entry.is_dir()] == ["1"]


def test_baseline_is_the_newest_served_version_without_a_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    serving = tmp_path / "serving"
    assert push.resolve_baseline(serving, "penguins") is None
    for version in ("3", "10", "not-a-version"):
        (serving / "penguins" / version).mkdir(parents=True)
    assert push.resolve_baseline(serving, "penguins") == push.Baseline(str(serving / "penguins" / "10"), 10,
                                                                        "serving_dir")


def test_pushing_something_that_is_not_a_model_artifact(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="is not a complete model artifact"):
        push.run(tmp_path / "junk", BLESSED, tmp_path / "serving", "penguins")
