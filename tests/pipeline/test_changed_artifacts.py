"""An artifact whose files changed after its manifest was written is never consumed: the step that
would read it stops with one line naming it, and `tunepipe run` drops the kfp.local cache entry that
hands it out, so the step that made it runs again."""
from __future__ import annotations

import json

import pytest

from components import artifacts
from pipeline import launcher
from pipeline.local_run import _drop_cache_entries


def _artifact(root):
    root.mkdir(parents=True)
    (root / "data.parquet").write_bytes(b"rows")
    return artifacts.write_manifest(root, artifacts.EXAMPLES, "ingest")["digest"]


def test_an_intact_artifact_gives_its_digest(tmp_path):
    digest = _artifact(tmp_path / "examples")
    assert launcher.artifact_digest(str(tmp_path / "examples"), "file:///examples") == digest


@pytest.mark.parametrize("change", ["edited", "added", "removed"])
def test_a_changed_artifact_is_refused_with_its_name(tmp_path, change):
    root = tmp_path / "examples"
    _artifact(root)
    if change == "edited":
        (root / "data.parquet").write_bytes(b"rowz")
    elif change == "added":
        (root / "extra").write_text("x")
    else:
        (root / "data.parquet").unlink()
    with pytest.raises(launcher.ChangedArtifact, match="the input artifact file:///examples was changed after it"):
        launcher.artifact_digest(str(root), "file:///examples")


def test_the_cache_entries_handing_it_out_are_dropped(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ingest.json").write_text(json.dumps({"examples": {"uri": "/out/ingest/examples"}}))
    (cache / "train.json").write_text(json.dumps({"model": {"uri": "/out/train/model"}}))
    assert _drop_cache_entries(cache, "/out/train/model") == 1
    assert [entry.name for entry in cache.iterdir()] == ["ingest.json"]
