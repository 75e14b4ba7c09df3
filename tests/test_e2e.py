"""`tunepipe run` end to end on the bundled penguins data through kfp.local: a first run that
tunes, trains and pushes; a rerun served from the cache; a worse candidate that is not pushed (and
then forced); new data that retrains and pushes version 2; a step that fails on bad data; and a
search over two workers at once."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from components import artifacts, resolve_baseline
from pipeline import steps
from tests.conftest import PENGUINS, PENGUINS_CONFIG

# Several whole pipelines in a row: minutes each on two cores.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


# The steps of a pipeline whose search runs one trial at a time, the bundled config's.
SERIAL_STEPS = tuple(step.name for step in steps.active(1))

def tunepipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=1200, env={**env, "COLUMNS": "200"})


def step_states(stderr: str) -> dict[str, str]:
    states = {}
    for line in stderr.splitlines():
        for step in steps.NAMES:
            if line.endswith(f" {step} reused from cache"):
                states[step] = "cached"
            elif f" {step} ran in " in line:
                states[step] = "ran"
            elif f" {step} failed in " in line:
                states[step] = "failed"
    return states


def table_row(stderr: str, step: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith(f"│ {step} "))


def output_path(stderr: str, name: str) -> Path:
    line = next(line for line in stderr.splitlines() if line.strip().startswith(f"{name}:"))
    return Path(line.split(":", 1)[1].strip())


def write_config(directory: Path, name: str, **changes) -> Path:
    config = yaml.safe_load(PENGUINS_CONFIG.read_text())
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    path = directory / name
    path.write_text(yaml.safe_dump(config))
    return path


def step_runs(client: MlflowClient, parent_id: str) -> dict[str, mlflow.entities.Run]:
    runs = client.search_runs([client.get_run(parent_id).info.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.data.tags["tunepipe.step"]: run for run in runs if "tunepipe.step" in run.data.tags}


def parent_id(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if "lineage: MLflow run" in line).split("MLflow run ")[1].split()[0]


def test_pipeline_tunes_pushes_caches_refuses_worse_and_pushes_better(tmp_path):
    shutil.copy(PENGUINS, tmp_path / "penguins.csv")
    config = write_config(tmp_path, "pipeline.yaml")
    serving = tmp_path / "tunepipe-out" / "serving"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'tunepipe-out' / 'mlflow.db'}")
    client = MlflowClient()

    # 1. The bundled configuration: every step runs, the model is good and becomes version 1.
    first = tunepipe("run", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert step_states(first.stderr) == {step: "ran" for step in SERIAL_STEPS}
    runs = step_runs(client, parent_id(first.stderr))
    assert set(runs) == set(SERIAL_STEPS)
    assert runs["train"].data.metrics["eval_accuracy"] >= 0.95
    assert runs["evaluate"].data.metrics["eval_accuracy"] >= 0.95
    assert runs["evaluate"].data.tags["tunepipe.blessed"] == "true"
    trials = client.search_runs([runs["tune"].info.experiment_id],
                                f"tags.mlflow.parentRunId = '{runs['tune'].info.run_id}'")
    tuning = artifacts.read_manifest(output_path(first.stderr, "tuning"), "tuning")
    assert len(trials) == runs["tune"].data.metrics["trials"] >= 2
    assert tuning["digest"] == runs["tune"].data.tags["tunepipe.output.tuning.digest"]
    assert resolve_baseline.serving_versions(serving, "penguins") == [1]
    assert (serving / "penguins" / "1" / "saved_model.pb").is_file()
    assert "version 1: blessed" in table_row(first.stderr, "push")
    production = client.get_model_version_by_alias("penguins", "production")
    assert production.source == str(serving / "penguins" / "1")
    assert production.run_id == runs["train"].info.run_id

    # 2. Nothing changed: the data and training steps come from kfp's cache; the candidate is the model
    # in production, so evaluate does not run TFMA again and push does not run; lineage says so.
    second = tunepipe("run", "--config", str(config), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert step_states(second.stderr) == {"resolve-source": "ran", "ingest": "cached", "preprocess": "cached",
                                          "tune": "cached", "train": "cached", "resolve-baseline": "ran",
                                          "evaluate": "ran"}
    assert "not evaluated again" in table_row(second.stderr, "evaluate")
    assert "skipped" in table_row(second.stderr, "push")
    assert resolve_baseline.serving_versions(serving, "penguins") == [1]
    rerun = client.search_runs([runs["train"].info.experiment_id], "tags.`tunepipe.step` = 'evaluate'",
                               order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert rerun.data.tags["tunepipe.evaluation.unchanged"] == str(serving / "penguins" / "1")

    # 3. A worse candidate (one epoch) is not blessed against version 1: nothing pushed, alias untouched.
    worse = write_config(tmp_path, "worse.yaml", training={"epochs": 1})
    third = tunepipe("run", "--config", str(worse), cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert step_states(third.stderr)["train"] == "ran" and "push" not in step_states(third.stderr)
    push_row = table_row(third.stderr, "push")
    assert "skipped" in push_row and "not blessed: accuracy" in push_row
    assert resolve_baseline.serving_versions(serving, "penguins") == [1]
    assert client.get_model_version_by_alias("penguins", "production").version == production.version

    # ... unless forced, which is recorded as such.
    forced = tunepipe("run", "--config", str(worse), "--force-push", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "version 2: forced" in table_row(forced.stderr, "push")
    assert client.get_model_version_by_alias("penguins", "production").tags["forced"] == "true"

    # 4. New rows under the same path: ingest is not served from the cache; the retrained model is at
    #    least as good as the forced one in production and becomes version 3. (Tuning off keeps this
    #    run short; the search itself ran in step 1.)
    with (tmp_path / "penguins.csv").open("a") as handle:
        handle.write("Gentoo,Biscoe,47.5,15.0,218,4950,female,2009\nAdelie,Dream,38.1,18.6,190,3700,male,2009\n")
    fourth = tunepipe("run", "--config", str(write_config(tmp_path, "untuned.yaml", tuner={"enabled": False})),
                      cwd=tmp_path)
    assert fourth.returncode == 0, fourth.stderr
    assert step_states(fourth.stderr)["ingest"] == "ran"
    assert "346 rows read" in table_row(fourth.stderr, "ingest")
    assert "version 3: blessed" in table_row(fourth.stderr, "push")
    assert resolve_baseline.serving_versions(serving, "penguins") == [1, 2, 3]
    assert client.get_model_version_by_alias("penguins", "production").tags["serving_version"] == "3"

    # 5. A cached artifact changed after it was written (here: the model kfp's cache would hand to
    #    evaluate) is caught by its digest, never consumed: its cache entry goes, train runs again.
    model = output_path(fourth.stderr, "model")
    with (Path(model) / "saved_model.pb").open("ab") as handle:
        handle.write(b"\0")
    fifth = tunepipe("run", "--config", str(tmp_path / "untuned.yaml"), cwd=tmp_path)
    assert fifth.returncode == 0, fifth.stderr
    assert f"{model} was changed after it was written" in " ".join(fifth.stderr.split())
    assert step_states(fifth.stderr)["train"] == "ran"
    assert output_path(fifth.stderr, "model") != model


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


def test_a_parallel_search_runs_its_workers_at_once_and_is_one_search_on_the_record(tmp_path):
    shutil.copy(PENGUINS, tmp_path / "penguins.csv")
    config = write_config(tmp_path, "pipeline.yaml", tuner={"algorithm": "random", "max_trials": 4, "max_epochs": 2,
                                                            "parallel_trials": 2})
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'tunepipe-out' / 'mlflow.db'}")
    client = MlflowClient()

    first = tunepipe("run", "--config", str(config), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    parallel_steps = [step.name for step in steps.active(2)]
    assert step_states(first.stderr) == {step: "ran" for step in parallel_steps}
    # kfp.local started the second worker before the first ended.
    assert "tune-worker ran in" in first.stderr and "(1 of its tasks still running)" in first.stderr
    assert "4 trials on 2 workers" in table_row(first.stderr, "tune-merge")
    runs = step_runs(client, parent_id(first.stderr))
    trials = client.search_runs([runs["tune"].info.experiment_id],
                                f"tags.mlflow.parentRunId = '{runs['tune'].info.run_id}'")
    assert sorted(run.data.tags["tunepipe.worker"] for run in trials) == ["0", "0", "1", "1"]
    listed = tunepipe("trials", parent_id(first.stderr), "--config", str(config), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert sorted(re.findall(r"\b[01]-[01]\b", listed.stdout)) == ["0-0", "0-1", "1-0", "1-1"]
    # The two workers ran on this machine at once, so each had half its CPUs for TensorFlow's pools.
    log = next((tmp_path / "tunepipe-out" / "logs").glob("run-*[0-9].log")).read_text()
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert sorted(re.findall(r"worker (\d) shares this machine's CPUs with the workers running beside it: "
                             rf"TensorFlow's thread pools have {share} thread", log)) == ["0", "1"]

    # The same config again: the workers and the merge come from the cache.
    again = tunepipe("run", "--config", str(config), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    states = step_states(again.stderr)
    assert states["tune-worker"] == states["tune-merge"] == "cached"
    # The summary still says what the cached workers did: the runs that made the results the merge took.
    assert "2 workers: 4 trials" in table_row(again.stderr, "tune-worker")
    assert "4 trials on 2 workers" in table_row(again.stderr, "tune-merge")
