"""`tunepipe run` end to end on the bundled penguins data, through kfp.local, twice and more."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from components import artifacts
from tests.conftest import PENGUINS

pytestmark = pytest.mark.e2e


def tunepipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900, env={**os.environ, "COLUMNS": "200"})


def step_states(stderr: str) -> dict[str, str]:
    states = {}
    for line in stderr.splitlines():
        for step in ("ingest", "preprocess"):
            if f" {step} ran in" in line:
                states[step] = "ran"
            elif f" {step} reused from cache" in line:
                states[step] = "cached"
    return states


def output_path(stderr: str, name: str) -> Path:
    line = next(line for line in stderr.splitlines() if line.strip().startswith(f"{name}:"))
    return Path(line.split(":", 1)[1].strip())


def test_run_twice_then_new_data_then_no_cache(tmp_path):
    data = tmp_path / "penguins.csv"
    shutil.copy(PENGUINS, data)
    config = tmp_path / "pipeline.yaml"
    config.write_text("name: penguins\ndata:\n  source: penguins.csv\n  label: species\n"
                      "  features: {exclude: [year]}\n")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    first = tunepipe("run", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert step_states(first.stderr) == {"ingest": "ran", "preprocess": "ran"}
    assert "344 rows read, 0 rejected" in first.stderr
    examples = output_path(first.stderr, "examples")
    assert artifacts.read_manifest(examples, "examples")["counts"]["rows_read"] == 344
    artifacts.read_manifest(output_path(first.stderr, "transform"), "transform")

    second = tunepipe("run", "--config", str(config), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert step_states(second.stderr) == {"ingest": "cached", "preprocess": "cached"}
    assert output_path(second.stderr, "examples") == examples

    # New rows under the same path are a new input: nothing stale comes from the cache.
    with data.open("a") as handle:
        handle.write("Gentoo,Biscoe,47.5,15.0,218,4950,female,2009\n")
    third = tunepipe("run", "--config", str(config), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert step_states(third.stderr) == {"ingest": "ran", "preprocess": "ran"}
    assert "345 rows read" in third.stderr

    forced = tunepipe("run", "--config", str(config), "--no-cache", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert step_states(forced.stderr) == {"ingest": "ran", "preprocess": "ran"}

    # Lineage: one MLflow run per pipeline run, a nested run per step with its artifacts.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'tunepipe-out' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["penguins"], output_format="list", order_by=["start_time ASC"])
    parents = [run for run in runs if run.data.tags.get("tunepipe.kind") == "pipeline"]
    assert len(parents) == 4
    children = {parent.info.run_id: sorted((run.data.tags["tunepipe.step"], run.data.tags["tunepipe.cached"])
                                           for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
                for parent in parents}
    assert children[parents[0].info.run_id] == [("ingest", "false"), ("preprocess", "false")]
    assert children[parents[1].info.run_id] == [("ingest", "true"), ("preprocess", "true")]
    ingest_run = next(run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
                      and run.data.tags["tunepipe.step"] == "ingest")
    assert ingest_run.data.metrics["rows_read"] == 344
    assert ingest_run.data.tags["tunepipe.output.examples.digest"] == artifacts.read_manifest(
        examples, "examples")["digest"]
    preprocess_run = next(run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
                          and run.data.tags["tunepipe.step"] == "preprocess")
    assert preprocess_run.data.tags["tunepipe.input.examples.uri"] == str(examples)
    assert [dataset.dataset.name for dataset in preprocess_run.inputs.dataset_inputs] == ["examples"]


def test_a_step_that_fails_on_the_data_says_why_in_one_line(tmp_path):
    data = tmp_path / "table.csv"
    # Valid at the top (so the start-up checks pass), not UTF-8 far below.
    body = PENGUINS.read_bytes() * 200  # ~3 MB: past the 1 MB sample read at start-up
    data.write_bytes(body + "Adelie,Dr\u00e9am,40,18,190,3000,male,2008\n".encode("latin-1"))
    result = tunepipe("run", "--data", str(data), "--label", "species", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("tunepipe: error: step ingest failed: ")
    assert f"{data}: the file is not valid UTF-8 text" in error
    pipelines = tmp_path / "tunepipe-out" / "pipelines"
    assert not list(pipelines.rglob(artifacts.MANIFEST))
