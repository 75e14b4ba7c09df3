"""Pushing to the TF Serving layout: increasing versions, atomically, never twice the same model."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from components import artifacts, push, resolve_baseline
from components.errors import DataError
from tests.conftest import record_syncs

BLESSED = {"blessed": True, "failures": []}
NOT_BLESSED = {"blessed": False, "failures": [{"metric": "accuracy", "threshold": ">= 0.9", "slice": "overall",
                                               "kind": "value", "value": 0.61}]}


def model_artifact(root: Path, weights: bytes) -> Path:
    """A model artifact as train writes it: a SavedModel's files plus the manifest."""
    with artifacts.building(root) as partial:
        (partial / "saved_model.pb").write_bytes(b"graph")
        (partial / "variables").mkdir()
        (partial / "variables" / "variables.data-00000-of-00001").write_bytes(weights)
        (partial / "variables" / "variables.index").write_bytes(b"index")
        (partial / "model.keras").write_bytes(b"not served")
        artifacts.write_manifest(partial, artifacts.MODEL, "train")
    return root


def test_blessed_models_get_increasing_versions_with_only_the_saved_model(tmp_path):
    serving = tmp_path / "serving"
    first = push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins")
    second = push.run(model_artifact(tmp_path / "m2", b"two"), BLESSED, serving, "penguins")

    assert (first.pushed, first.version, second.pushed, second.version) == (True, 1, True, 2)
    assert resolve_baseline.serving_versions(serving, "penguins") == [1, 2]
    version_two = serving / "penguins" / "2"
    assert second.path == str(version_two)
    assert (version_two / "variables" / "variables.data-00000-of-00001").read_bytes() == b"two"
    assert (version_two / "saved_model.pb").exists() and not (version_two / "model.keras").exists()
    assert push.served_digest(version_two) == second.digest == artifacts.read_manifest(tmp_path / "m2",
                                                                                       artifacts.MODEL)["digest"]


def test_not_blessed_pushes_nothing_and_says_why(tmp_path):
    serving = tmp_path / "serving"
    push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins")
    before = sorted(str(p) for p in serving.rglob("*"))
    result = push.run(model_artifact(tmp_path / "m2", b"two"), NOT_BLESSED, serving, "penguins")
    assert not result.pushed
    assert result.reason == "not blessed: accuracy >= 0.9 (got 0.6100)"
    assert sorted(str(p) for p in serving.rglob("*")) == before


def test_force_pushes_and_says_it_was_forced(tmp_path):
    result = push.run(model_artifact(tmp_path / "m1", b"one"), NOT_BLESSED, tmp_path / "serving", "penguins",
                      force=True)
    assert (result.pushed, result.forced, result.version) == (True, True, 1)
    assert result.reason == "forced by --force-push although not blessed"


def test_the_model_already_in_production_is_not_pushed_again(tmp_path):
    model = model_artifact(tmp_path / "m1", b"one")
    push.run(model, BLESSED, tmp_path / "serving", "penguins")
    again = push.run(model, BLESSED, tmp_path / "serving", "penguins")
    assert not again.pushed and again.version == 1
    assert resolve_baseline.serving_versions(tmp_path / "serving", "penguins") == [1]


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
    assert resolve_baseline.serving_versions(serving, "penguins") == []
    assert resolve_baseline.resolve(serving, "penguins") is None

    result = push.run(model, BLESSED, serving, "penguins")
    assert result.version == 1
    assert [entry.name for entry in (serving / "penguins").iterdir() if entry.is_dir()] == ["1"]


def test_pushing_something_that_is_not_a_model_artifact(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="is not a complete model artifact"):
        push.run(tmp_path / "junk", BLESSED, tmp_path / "serving", "penguins")


def test_a_push_the_registry_could_not_be_told_of_is_taken_back_out(tmp_path):
    serving = tmp_path / "serving"
    push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins", register=lambda pushed: "1")

    def unreachable(pushed):
        assert (serving / "penguins" / str(pushed.version) / "saved_model.pb").is_file()  # told after the rename
        raise ConnectionError("the tracking server does not answer")

    with pytest.raises(ConnectionError):
        push.run(model_artifact(tmp_path / "m2", b"two"), BLESSED, serving, "penguins", register=unreachable)
    assert [entry.name for entry in (serving / "penguins").iterdir() if entry.is_dir()] == ["1"]
    assert push.run(model_artifact(tmp_path / "m2", b"two"), BLESSED, serving, "penguins",
                    register=lambda pushed: "2").registry_version == "2"


def test_a_version_is_on_the_disk_before_its_rename_and_the_rename_before_the_registry_hears_of_it(tmp_path,
                                                                                                  monkeypatch):
    # So that a power loss leaves no version TF Serving would load half, nor one the registry names
    # and the disk lost.
    serving = tmp_path / "serving"
    push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins")
    model = model_artifact(tmp_path / "m2", b"two")
    events = record_syncs(monkeypatch, "rename")
    pushed = push.run(model, BLESSED, serving, "penguins",
                      register=lambda result: events.append(("registered", 0)) or "2")
    monkeypatch.undo()
    version = Path(pushed.path)
    copied = {path.stat().st_ino for path in [version, *version.rglob("*")]}
    renamed = events.index(("rename", version.stat().st_ino))
    assert copied == {event[1] for event in events[:renamed] if event[0] == "fsync"}
    assert events[renamed + 1:] == [("fsync", (serving / "penguins").stat().st_ino, None), ("registered", 0)]


def test_a_version_whose_rename_cannot_be_synced_is_taken_back_out_and_never_registered(tmp_path, monkeypatch,
                                                                                       caplog):
    serving = tmp_path / "serving"
    push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins")
    sync = artifacts.sync_directory

    def failing(directory):
        if Path(directory) == serving / "penguins":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        sync(directory)

    monkeypatch.setattr(artifacts, "sync_directory", failing)
    told = []
    with pytest.raises(OSError, match="Input/output error"):
        push.run(model_artifact(tmp_path / "m2", b"two"), BLESSED, serving, "penguins", register=told.append)
    assert told == [] and resolve_baseline.serving_versions(serving, "penguins") == [1]
    assert [entry.name for entry in (serving / "penguins").iterdir() if entry.is_dir()] == ["1"]
    assert "version 2 taken back out" in caplog.text and "could not be synced" in caplog.text


def test_the_first_push_syncs_the_model_directory_it_made_into_the_serving_directory(tmp_path, monkeypatch):
    serving, synced = tmp_path / "serving", []
    sync = artifacts.sync_directory
    monkeypatch.setattr(artifacts, "sync_directory",
                        lambda directory: synced.append(Path(directory)) or sync(directory))
    push.run(model_artifact(tmp_path / "m1", b"one"), BLESSED, serving, "penguins")
    assert synced[0] == serving and synced[-1] == serving / "penguins"
    synced.clear()
    push.run(model_artifact(tmp_path / "m2", b"two"), BLESSED, serving, "penguins")
    assert serving not in synced and synced[-1] == serving / "penguins"
