"""Finding the model in production: the registry's version when it is really there, else the newest
integer version in the serving directory, else none (the first run)."""
from __future__ import annotations

import json

from components import resolve_baseline
from components.resolve_baseline import REGISTRY, SERVING_DIR, Baseline


def test_the_newest_integer_version_is_in_production_without_a_registry(tmp_path):
    serving = tmp_path / "serving"
    assert resolve_baseline.resolve(serving, "penguins") is None
    for version in ("3", "10", "not-a-version"):
        (serving / "penguins" / version).mkdir(parents=True)
    assert resolve_baseline.resolve(serving, "penguins") == Baseline(str(serving / "penguins" / "10"), 10,
                                                                      SERVING_DIR)


def test_the_registry_wins_when_its_version_is_there_and_not_otherwise(tmp_path):
    serving = tmp_path / "serving"
    for version in ("1", "2"):
        (serving / "penguins" / version).mkdir(parents=True)
    registered = Baseline(str(serving / "penguins" / "1"), 1, REGISTRY)
    assert resolve_baseline.resolve(serving, "penguins", registered) == registered
    gone = Baseline(str(serving / "penguins" / "7"), 7, REGISTRY)
    assert resolve_baseline.resolve(serving, "penguins", gone).version == 2


def test_the_baseline_artifact_names_the_model_or_says_there_is_none(tmp_path):
    assert resolve_baseline.run(tmp_path / "serving", "penguins", tmp_path / "first") is None
    assert json.loads((tmp_path / "first" / resolve_baseline.BASELINE_FILE).read_text())["path"] is None
    assert resolve_baseline.read(tmp_path / "first") is None
    (tmp_path / "serving" / "penguins" / "1").mkdir(parents=True)
    found = resolve_baseline.run(tmp_path / "serving", "penguins", tmp_path / "second")
    assert resolve_baseline.read(tmp_path / "second") == found.path == str(tmp_path / "serving" / "penguins" / "1")
