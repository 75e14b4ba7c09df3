"""An unchanged rerun: the candidate is the model in production, recognised by its digest, and the
evaluation says so without TFMA; push, handed that verdict, pushes nothing."""
from __future__ import annotations

import json

from components import artifacts, push
from components.evaluate import unchanged
from components.evaluate.blessing import FILE as BLESSING
from components.evaluate.report import REPORT


def _model(root, weights: bytes):
    root.mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(weights)
    artifacts.write_manifest(root, artifacts.MODEL, "train")
    return root


def _served(serving, version: int, model):
    directory = serving / "penguins" / str(version)
    directory.mkdir(parents=True)
    (directory / "tunepipe_model_digest.txt").write_text(artifacts.read_manifest(model, artifacts.MODEL)["digest"])
    assert push.served_digest(directory)  # the file push writes beside a version
    return str(directory)


def test_the_served_candidate_is_recognised_by_its_digest(tmp_path):
    model = _model(tmp_path / "model", b"weights")
    other = _model(tmp_path / "other", b"other weights")
    served = _served(tmp_path / "serving", 1, model)

    assert unchanged.served_as(model, served) == served
    assert unchanged.served_as(other, served) is None
    assert unchanged.served_as(model, None) is None


def test_its_evaluation_says_so_and_push_pushes_nothing(tmp_path):
    model = _model(tmp_path / "model", b"weights")
    served = _served(tmp_path / "serving", 3, model)
    out = tmp_path / "evaluation"

    digest = unchanged.write(out, model, served)

    manifest = artifacts.read_manifest(out, artifacts.EVALUATION)
    verdict = json.loads((out / BLESSING).read_text())
    assert manifest["digest"] == digest and manifest["unchanged"] is True and manifest["baseline"] == served
    assert verdict["blessed"] is False and verdict["unchanged"] is True
    assert "version 3" in verdict["reason"] and "not evaluated again" in (out / REPORT).read_text()
    result = push.run(model, verdict, tmp_path / "serving", "penguins")
    assert not result.pushed
    assert sorted(p.name for p in (tmp_path / "serving" / "penguins").iterdir()) == ["3"]
