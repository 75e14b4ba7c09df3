"""Runs a killed `tunepipe run` left RUNNING (a SIGKILLed process closes nothing) are marked KILLED
when the next run on the same output root starts; runs of other output roots or hosts are not touched."""
from __future__ import annotations

import socket

import mlflow
from mlflow import MlflowClient

from pipeline import tags, tracking


def open_runs(client: MlflowClient, experiment_id: str, root: str, host: str) -> dict[str, str]:
    """A pipeline run as a killed run leaves it: it, a step run and a trial run all RUNNING."""
    pipeline = client.create_run(experiment_id, tags={tags.KIND: tags.PIPELINE, tags.OUTPUT_ROOT: root,
                                                      tags.HOST: host})
    step = client.create_run(experiment_id, tags={tags.PARENT_RUN: pipeline.info.run_id, tags.STEP: "tune"})
    trial = client.create_run(experiment_id, tags={tags.PARENT_RUN: step.info.run_id, tags.TRIAL_ID: "0001"})
    return {"pipeline": pipeline.info.run_id, "step": step.info.run_id, "trial": trial.info.run_id}


def test_the_next_run_marks_what_a_killed_run_left_running_and_nothing_else(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    root = tmp_path / "out"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("killed")
    here = socket.gethostname()
    killed = open_runs(client, experiment_id, str(root.resolve()), here)
    elsewhere = open_runs(client, experiment_id, str(tmp_path / "other-root"), here)
    other_host = open_runs(client, experiment_id, str(root.resolve()), "another-host")
    finished = client.create_run(experiment_id, tags={tags.PARENT_RUN: killed["pipeline"]})
    client.set_terminated(finished.info.run_id, "FINISHED")
    try:
        with tracking.pipeline_run("killed", str(root), None, {}, run_name="next") as run:
            assert client.get_run(run.info.run_id).data.tags[tags.CLOSED_ABANDONED] == "3"
    finally:
        mlflow.set_tracking_uri(None)

    status = {run_id: client.get_run(run_id).info.status for run_id in killed.values()}
    assert set(status.values()) == {"KILLED"}
    assert "next run on this output root" in client.get_run(killed["trial"]).data.tags[tags.ERROR]
    untouched = [*elsewhere.values(), *other_host.values()]
    assert {client.get_run(run_id).info.status for run_id in untouched} == {"RUNNING"}
    assert client.get_run(finished.info.run_id).info.status == "FINISHED"
