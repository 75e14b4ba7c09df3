"""A parallel search as the pipeline runs its tasks (`tuner.parallel_trials: 2`): two tune-worker
tasks and their merge, launched as kfp launches them. On the record it is one search: every trial
once under the tune run, tagged with its worker; the best over all of them; retraining reuses it."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from components import artifacts
from components.model import hyperparameters as model
from components.tune import artifact, trials
from pipeline import launcher, queries, tags
from tests.conftest import TaskArtifact
from tests.tiny_search import tiny_config, trial_runs

WORKERS = 2


def run_search(inputs, tmp_path: Path, name: str, tuner: dict, reuse: bool, workers=range(WORKERS)):
    """The workers' tasks, then the merge's; the merged tuning and the merge's MLflow run."""
    parts = []
    for worker in workers:
        parts.append(TaskArtifact(str(tmp_path / f"{name}-worker-{worker}")))
        launcher.run_step("tune-worker", **_common(inputs, tuner), work_root=str(tmp_path / "work"),
                          reuse_hyperparameters=reuse, worker=worker, workers=WORKERS, tuning=parts[-1])
    return run_merge(inputs, tmp_path, name, tuner, parts)


def _common(inputs, tuner: dict) -> dict:
    return dict(examples=TaskArtifact(str(inputs.examples)), transform=TaskArtifact(str(inputs.transform)),
                options=tuner, hypermodel_source="", code_version="test")


def run_merge(inputs, tmp_path: Path, name: str, tuner: dict, parts: list[TaskArtifact]):
    """The merge's task over the workers' results `parts`; the merged tuning and the merge's MLflow run."""
    common = _common(inputs, tuner)
    tuning = TaskArtifact(str(tmp_path / name))
    launcher.run_step("tune-merge", **common, worker_tunings=parts, workers=WORKERS, tuning=tuning,
                      report=TaskArtifact(str(tmp_path / f"{name}-report.html")))
    found = mlflow.MlflowClient().search_runs([os.environ["MLFLOW_EXPERIMENT_ID"]],
                                              f"tags.`{tags.output('tuning', 'uri')}` = '{tuning.uri}'")
    return tuning, found[0]


def test_two_workers_are_one_search_on_the_record_and_retraining_reuses_it(penguin_inputs, step_tracking, tmp_path):
    options = tiny_config(algorithm="random", max_trials=4, parallel_trials=WORKERS).model_dump(
        mode="json", exclude_none=True)
    tuning, merge_run = run_search(penguin_inputs, tmp_path, "first", options, reuse=False)

    # The merge is the tune step on the record, and each trial is one run under it, tagged with its worker.
    assert merge_run.data.tags[tags.STEP] == "tune"
    assert merge_run.data.tags[tags.TUNING] == "searched" and merge_run.data.metrics["workers"] == WORKERS
    runs = trial_runs(step_tracking)
    assert len(runs) == 4
    assert {run.data.tags[tags.PARENT_RUN] for run in runs} == {merge_run.info.run_id}
    assert sorted((run.data.tags[tags.WORKER], run.data.tags[tags.TRIAL_ID]) for run in runs) == [
        ("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    # The best over every worker's trials, as MLflow recorded their scores.
    best_score = max(run.data.metrics["score"] for run in runs)
    assert merge_run.data.metrics["best_score"] == pytest.approx(best_score)
    assert merge_run.data.tags[tags.BEST_TRIAL] in {  # ties go to the lower worker
        f"{run.data.tags[tags.WORKER]}-{run.data.tags[tags.TRIAL_ID]}" for run in runs
        if run.data.metrics["score"] == best_score}
    table = trials.read_table(Path(tuning.path, trials.TRIALS_TABLE))
    assert {row["tracking_id"] for row in table} == {run.info.run_id for run in runs}
    # Lineage of the merged tuning goes through each worker's result to the worker run that made it.
    graph = queries.lineage(tuning.uri)
    merge_node = f"step:{merge_run.info.run_id}"
    collected = [graph.nodes[edge.source] for edge in graph.upstream(merge_node)
                 if edge.label.startswith("worker_tunings.")]
    assert sorted(node.label for node in collected) == ["tuning", "tuning"]
    makers = {graph.nodes[edge.source].run_id: graph.nodes[edge.source].facts["step"]
              for node in collected for edge in graph.upstream(node.id)}
    worker_runs = mlflow.MlflowClient().search_runs([step_tracking], f"tags.`{tags.STEP}` = 'tune-worker'")
    assert makers == {run.info.run_id: "tune-worker" for run in worker_runs} and len(makers) == WORKERS

    # Retraining: every worker reuses that search, the merge says so, and no trial runs again.
    again, reused_run = run_search(penguin_inputs, tmp_path, "second", options, reuse=True)
    assert reused_run.data.tags[tags.TUNING] == "reused"
    assert reused_run.data.tags[tags.REUSED_FROM] == merge_run.info.run_id
    assert len(trial_runs(step_tracking)) == 4
    assert (model.read_hyperparameters(Path(again.path, artifact.BEST_HYPERPARAMETERS))
            == model.read_hyperparameters(Path(tuning.path, artifact.BEST_HYPERPARAMETERS)))
    assert reused_run.data.tags[tags.input("tuning", "digest")] == tuning.metadata["digest"]


def test_a_retried_merge_takes_the_trials_its_killed_attempt_had_moved(penguin_inputs, step_tracking, tmp_path,
                                                                       monkeypatch):
    """KFP retries a merge killed after it moved the workers' trial runs under its run: the retry's
    run (under the same pipeline run) holds every trial. A merge of another pipeline run takes
    none from a merge that finished with its output taken (by train), nor from one still running;
    it does from one that was killed, and from one that finished with its output taken by nothing
    (its pipeline run killed before kfp.local cached it)."""
    from pipeline import tracking

    client = mlflow.MlflowClient()

    def pipeline_run() -> str:
        run_id = client.create_run(step_tracking).info.run_id
        monkeypatch.setenv(tracking.PARENT_RUN_ENV, run_id)
        return run_id

    def parents() -> set[str]:
        return {run.data.tags[tags.PARENT_RUN] for run in trial_runs(step_tracking)}

    def train_took(merge) -> None:
        client.create_run(step_tracking, tags={tags.STEP: "train", tags.input("tuning", "uri"):
                                               merge.data.tags[tags.output("tuning", "uri")]})

    options = tiny_config(algorithm="random", max_trials=2, parallel_trials=WORKERS).model_dump(
        mode="json", exclude_none=True)
    pipeline_run()
    _, killed = run_search(penguin_inputs, tmp_path, "attempt", options, reuse=False)
    assert parents() == {killed.info.run_id}
    client.update_run(killed.info.run_id, status="RUNNING")  # as the killed attempt left it
    parts = [TaskArtifact(str(tmp_path / f"attempt-worker-{worker}")) for worker in range(WORKERS)]
    _, retried = run_merge(penguin_inputs, tmp_path, "retry", options, parts)
    assert parents() == {retried.info.run_id}

    pipeline_run()  # the retry's output went nowhere: the next run's merge takes the trials
    _, holder = run_merge(penguin_inputs, tmp_path, "nothing-took-it", options, parts)
    assert parents() == {holder.info.run_id}
    train_took(holder)
    pipeline_run()
    run_merge(penguin_inputs, tmp_path, "finished-elsewhere", options, parts)
    assert parents() == {holder.info.run_id}
    client.update_run(holder.info.run_id, status="RUNNING")  # a merge of another run, still going
    run_merge(penguin_inputs, tmp_path, "running-elsewhere", options, parts)
    assert parents() == {holder.info.run_id}
    client.set_terminated(holder.info.run_id, "KILLED")  # that run was killed
    _, taker = run_merge(penguin_inputs, tmp_path, "after-a-kill", options, parts)
    assert parents() == {taker.info.run_id}


def test_a_merge_over_a_missing_worker_fails_in_one_line_and_writes_nothing(penguin_inputs, step_tracking, tmp_path,
                                                                             capsys):
    options = tiny_config(algorithm="random", max_trials=2, parallel_trials=WORKERS).model_dump(
        mode="json", exclude_none=True)
    with pytest.raises(SystemExit) as failed:
        run_search(penguin_inputs, tmp_path, "partial", options, reuse=False, workers=[0])
    assert failed.value.code != 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "worker(s) 1 are missing" in line and "tune-merge" in line
    assert not (tmp_path / "partial").exists()
    assert artifacts.read_manifest(tmp_path / "partial-worker-0", artifacts.TUNING)["worker"] == 0


def test_workers_logging_the_same_inputs_at_once_both_record_them():
    """The workers start together and log the same examples and transform: MLflow's store inserts
    each dataset it did not find, so one of two inserts fails on the unique key; logging again
    finds it. Any other failure is not retried."""
    from mlflow.exceptions import MlflowException

    from pipeline import tracking

    calls = []

    def lost_once():
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")

    tracking._retrying_a_lost_race(lost_once)
    assert len(calls) == 2

    def broken():
        calls.append(1)
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run not found")

    calls.clear()
    with pytest.raises(MlflowException, match="run not found"):
        tracking._retrying_a_lost_race(broken)
    assert len(calls) == 1


def test_tunepipe_run_tells_the_workers_how_many_share_the_machine_and_then_restores_the_environment(monkeypatch):
    from components.tune.workers import SHARED_MACHINE_ENV
    from pipeline import local_run, tracking

    # kfp.local runs at most two tasks of a loop at once (kfp 2.17), so 3 workers share it two by two.
    assert [local_run._workers_at_once(workers) for workers in (1, 2, 3, 8)] == [1, 2, 2, 2]
    monkeypatch.setenv(SHARED_MACHINE_ENV, "5")  # the user's own value, before the run
    with tracking.environment({SHARED_MACHINE_ENV: "2"}):
        assert os.environ[SHARED_MACHINE_ENV] == "2"
    assert os.environ[SHARED_MACHINE_ENV] == "5"
    monkeypatch.delenv(SHARED_MACHINE_ENV)
    with pytest.raises(KeyboardInterrupt), tracking.environment({SHARED_MACHINE_ENV: "2"}):
        raise KeyboardInterrupt
    assert SHARED_MACHINE_ENV not in os.environ
