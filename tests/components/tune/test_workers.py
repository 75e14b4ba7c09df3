"""A search over several workers (`tuner.parallel_trials`): what each worker searches, and the merge
of their results into one search; the workers are real Keras Tuner searches over the penguins."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components import artifacts
from components.errors import DataError
from components.model import hyperparameters as model
from components.tune import artifact, step as tune, trials, workers
from tests.tiny_search import HYPERBAND_TRIALS, TINY_SPACE, KillAtTraining, tiny_config


def test_each_algorithm_is_shared_as_its_docs_say():
    random = tiny_config(algorithm="random", max_trials=5, parallel_trials=2)
    shards = [workers.shard(random, worker, 2) for worker in range(2)]
    assert [part.max_trials for part in shards] == [3, 2]
    assert len({part.seed for part in shards}) == 2  # two samplers, not one drawn twice

    # Bayesian: N searches, each starting with its share of the random initial trials.
    bayesian = tiny_config(algorithm="bayesian", max_trials=10, bayesian_initial_trials=3, parallel_trials=2)
    assert [(part.max_trials, part.bayesian_initial_trials) for part in
            (workers.shard(bayesian, worker, 2) for worker in range(2))] == [(5, 2), (5, 1)]

    # Hyperband: the iterations split, and at least one each (N iterations of brackets for N workers).
    assert [workers.shard(tiny_config(hyperband_iterations=3), w, 2).hyperband_iterations for w in range(2)] == [2, 1]
    assert [workers.shard(tiny_config(), w, 3).hyperband_iterations for w in range(3)] == [1, 1, 1]
    assert workers.shard(random, 0, 1) == random


def test_workers_sharing_a_machine_share_its_cpus_between_their_tensorflow_thread_pools():
    # A worker told that two workers run at once on this machine (as `tunepipe run` tells kfp.local's
    # tasks) gives TensorFlow's pools half the CPUs it may use, before TensorFlow starts.
    probe = ("from components.tune import workers; threads = workers.share_machine(); import tensorflow as tf; "
             "print(threads, tf.config.threading.get_intra_op_parallelism_threads(), "
             "tf.config.threading.get_inter_op_parallelism_threads())")
    environment = {**os.environ, workers.SHARED_MACHINE_ENV: "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[3])
    assert done.returncode == 0, done.stderr
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert done.stdout.split() == [str(share)] * 3


def test_a_worker_alone_on_its_machine_or_told_by_its_user_leaves_tensorflow_its_pools(monkeypatch):
    monkeypatch.delenv(workers.SHARED_MACHINE_ENV, raising=False)  # Kubeflow: a pod of its own
    assert workers.share_machine() is None
    monkeypatch.setenv(workers.SHARED_MACHINE_ENV, "2")
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "4")  # the user's own setting wins
    assert workers.share_machine() is None


@pytest.mark.parametrize("value", ["two", "0", "-1", "\u00b2"])
def test_a_bad_count_of_workers_sharing_the_machine_is_one_line(monkeypatch, value):
    monkeypatch.setenv(workers.SHARED_MACHINE_ENV, value)
    with pytest.raises(DataError, match=f"^{workers.SHARED_MACHINE_ENV}=.*: expected the number of tune workers"):
        workers.share_machine()


def search(inputs, root, worker, config, callbacks=None):
    return tune.run(inputs.examples, inputs.transform, root / f"tuning-{worker}", config, work_dir=root / "work",
                    worker=worker, workers=2, callbacks=callbacks)


def test_two_workers_are_one_search_and_the_best_is_the_best_of_all(penguin_inputs, tmp_path):
    config = tiny_config(algorithm="random", max_trials=4, parallel_trials=2)
    parts = [search(penguin_inputs, tmp_path, worker, config) for worker in range(2)]
    assert [len(part.trials) for part in parts] == [2, 2]
    assert {trial.worker for trial in parts[1].trials} == {1}

    # Any order: the merge finds each worker by what its artifact says it is.
    merged = workers.merge([tmp_path / "tuning-1", tmp_path / "tuning-0"], tmp_path / "tuning", config, 2)

    everyone = [trial for part in parts for trial in part.trials]
    assert sorted(trial.label for trial in merged.trials) == ["0-0", "0-1", "1-0", "1-1"]
    best = next(trial for trial in everyone if trial.label == merged.best_trial_id)
    assert best.score == max(trial.score for trial in everyone) and merged.best_score == pytest.approx(best.score)
    assert model.read_hyperparameters(tmp_path / "tuning" / artifact.BEST_HYPERPARAMETERS) == best.hyperparameters
    rows = trials.read_table(tmp_path / "tuning" / trials.TRIALS_TABLE)
    assert sorted((row["worker"], row["trial_id"]) for row in rows) == [
        ("0", "0-0"), ("0", "0-1"), ("1", "1-0"), ("1", "1-1")]
    manifest = artifacts.read_manifest(tmp_path / "tuning", artifacts.TUNING)
    assert manifest["workers"] == 2 and len(set(manifest["worker_searches"])) == 2
    assert (tmp_path / "tuning" / "report.html").is_file()

    # A merge over part of the workers is an error naming the missing one, and writes nothing; so is
    # one given a worker's result twice.
    with pytest.raises(DataError, match=r"2 workers but the results of worker\(s\) 1 are missing"):
        workers.merge([tmp_path / "tuning-0"], tmp_path / "partial", config, 2)
    with pytest.raises(DataError, match="tuning-0: the result of worker 0 of 2, which is not .* the only one"):
        workers.merge([tmp_path / "tuning-0", tmp_path / "tuning-0"], tmp_path / "partial", config, 2)
    assert not (tmp_path / "partial").exists()


def test_a_killed_worker_resumes_its_own_search_without_rerunning_a_finished_trial(penguin_inputs, tmp_path):
    config, ledger = tiny_config(parallel_trials=2), tmp_path / "trainings.txt"
    search(penguin_inputs, tmp_path, 0, config)
    with pytest.raises(KeyboardInterrupt):
        search(penguin_inputs, tmp_path, 1, config, callbacks=[KillAtTraining(ledger, kill_at=3)])
    assert not (tmp_path / "tuning-1").exists()

    # The retry (KFP's, or the next run): worker 1 again, from its own Keras Tuner state.
    again = search(penguin_inputs, tmp_path, 1, config, callbacks=[KillAtTraining(ledger)])
    # 3 trainings before the kill (the third cut short), then only the trials that had not finished.
    assert len(ledger.read_text().splitlines()) == 3 + (HYPERBAND_TRIALS - 2)
    assert len(again.trials) == HYPERBAND_TRIALS and all(trial.status == "completed" for trial in again.trials)
    merged = workers.merge([tmp_path / "tuning-0", tmp_path / "tuning-1"], tmp_path / "tuning", config, 2)
    # One Hyperband iteration per worker: two iterations of brackets, each trial once.
    assert len(merged.trials) == 2 * HYPERBAND_TRIALS
    assert len({trial.label for trial in merged.trials}) == 2 * HYPERBAND_TRIALS


def test_a_grid_is_dealt_to_the_workers_and_each_point_is_tried_once(penguin_inputs, tmp_path):
    space = {**TINY_SPACE, "architecture": {"type": "fixed", "value": "mlp", "branches": {"mlp": {
        "num_layers": 1, "units": {"type": "int", "min": 2, "max": 8, "step": 2}}}},
        "learning_rate": {"type": "choice", "values": [0.01, 0.1]}}
    config = tiny_config(algorithm="grid", max_trials=100, parallel_trials=2, search_space=space)
    parts = [search(penguin_inputs, tmp_path, worker, config) for worker in range(2)]
    merged = workers.merge([tmp_path / "tuning-0", tmp_path / "tuning-1"], tmp_path / "tuning", config, 2)

    tried = [(trial.hyperparameters["mlp.units_0"], trial.hyperparameters["learning_rate"]) for trial in merged.trials]
    assert sorted(tried) == sorted((units, rate) for units in (2, 4, 6, 8) for rate in (0.01, 0.1))
    assert [len(part.trials) for part in parts] == [4, 4]


def test_a_grid_of_fewer_points_than_workers_leaves_the_spare_worker_nothing_to_try(penguin_inputs, tmp_path):
    space = {**TINY_SPACE, "architecture": {"type": "fixed", "value": "mlp", "branches": {"mlp": {
        "num_layers": 1, "units": 4}}}, "learning_rate": 0.01}
    config = tiny_config(algorithm="grid", max_trials=10, parallel_trials=2, search_space=space)
    parts = [search(penguin_inputs, tmp_path, worker, config) for worker in range(2)]
    assert [len(part.trials) for part in parts] == [1, 0]
    merged = workers.merge([tmp_path / "tuning-0", tmp_path / "tuning-1"], tmp_path / "tuning", config, 2)
    assert [trial.label for trial in merged.trials] == [parts[0].trials[0].label]
    assert merged.best_score == pytest.approx(parts[0].best_score)

