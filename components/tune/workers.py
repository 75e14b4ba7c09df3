"""One search over several workers (`tuner.parallel_trials: N`): what each worker searches, and the
merge of their results into one tuning result.

The workers are independent shards, each its own Keras Tuner search in its own state directory
(KFP's ParallelFor runs them at once, one pod each; kfp.local as processes):

- random: the `max_trials` trials split among the workers, each sampling with its own seed;
- grid: the grid's points dealt round-robin to the workers, each trying its own, in order;
- hyperband: `hyperband_iterations` split among the workers, at least one iteration each (with more
  workers than iterations the search runs one iteration per worker: N iterations of brackets);
- bayesian: N independent Bayesian searches of max_trials / N trials each: a worker's Gaussian
  process sees only its own trials (observations are not shared).

The merge reads every worker's trials, picks the best over all of them and writes one tuning
artifact, which train, the report and retraining read as they read a single search's.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from components import artifacts, objectives
from components.errors import DataError
from components.tune import artifact
from components.tune.config import TunerConfig
from components.model.hyperparameters import read_hyperparameters
from components.tune.observer import COMPLETED
from components.tune.trials import TRIALS_RECORDS, read_records

log = logging.getLogger("tunepipe.tune")


# How many tune workers run at once on this machine, where they share its CPUs: `tunepipe run` sets it
# for kfp.local's processes. Unset (Kubeflow, where each worker is a pod), TensorFlow sizes its pools itself.
SHARED_MACHINE_ENV = "TUNEPIPE_TUNE_WORKERS_PER_MACHINE"
# TensorFlow's own settings of its pools: a user who sets them keeps them.
_TENSORFLOW_THREADS_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def share_machine() -> int | None:
    """Limit TensorFlow's thread pools to this worker's share of the CPUs, when workers share them.

    Each TensorFlow process sizes its inter- and intra-op pools to every CPU it may run on; two
    workers on two cores, each with two threads a pool, slowed each other's trials more than with
    one thread each (docs/parallel-trials.md). Returns the threads each pool got, or None if
    nothing was limited. Must run before TensorFlow's runtime starts in this process (its first
    operation or device query).
    """
    at_once = os.environ.get(SHARED_MACHINE_ENV)
    if not at_once or any(os.environ.get(name) for name in _TENSORFLOW_THREADS_ENV):
        return None
    if not (at_once.isascii() and at_once.isdigit()) or int(at_once) < 1:
        raise DataError(f"{SHARED_MACHINE_ENV}={at_once!r}: expected the number of tune workers that run at once "
                        f"on this machine, a whole number of at least 1")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cpus // int(at_once))
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.warning("tune: TensorFlow had already started in this process, so its thread pools keep their sizes "
                    "(%s asked for %d thread(s) each)", SHARED_MACHINE_ENV, threads)
        return None
    return threads


def shard(config: TunerConfig, worker: int, workers: int) -> TunerConfig:
    """The part of the search `worker` (0-based, of `workers`) runs."""
    if workers == 1:
        return config
    update = {"seed": config.seed + worker}
    if config.algorithm == "hyperband":
        update["hyperband_iterations"] = max(1, _part(config.hyperband_iterations, worker, workers))
    else:
        update["max_trials"] = _part(config.max_trials, worker, workers)
        if config.bayesian_initial_trials:
            update["bayesian_initial_trials"] = max(1, _part(config.bayesian_initial_trials, worker, workers))
    return config.model_copy(update=update)


def _part(total: int, worker: int, workers: int) -> int:
    """`worker`'s share of `total` split as evenly as it goes (the first ones one more)."""
    return total // workers + (1 if worker < total % workers else 0)


# What every worker's result must agree on to be one search: the inputs, the objective, and whether
# (and which) earlier search retraining reused. Workers decide reuse each on its own, so one retried
# after the last search passed tuner.retune_after_days disagrees with the others.
_SHARED = {"examples_digest": "the examples", "transform_digest": "the transform",
           "hypermodel_digest": "the model module", "objective": "the objective",
           "direction": "the objective's direction", "reused_from": "whether to reuse an earlier search"}


def merge(parts: list[str | os.PathLike[str]], out: str | os.PathLike[str], config: TunerConfig,
          workers: int) -> artifact.TuneResult:
    """One tuning artifact at `out` from the workers' (`parts`, one per worker, any order)."""
    found: dict[int, tuple[Path, dict]] = {}
    for part in parts:
        manifest = artifacts.read_manifest(part, artifacts.TUNING)
        worker = int(manifest.get("worker", 0))
        if worker in found or not 0 <= worker < workers or manifest.get("workers", 1) != workers:
            raise DataError(f"{part}: the result of worker {worker} of {manifest.get('workers', 1)}, which is not "
                            f"one of the {workers} workers of this search or not the only one of its number")
        found[worker] = (Path(part), manifest)
    missing = sorted(set(range(workers)) - set(found))
    if missing:
        raise DataError(f"the search has {workers} workers but the results of worker(s) "
                        f"{', '.join(map(str, missing))} are missing: not merging a smaller search")
    manifests = [found[worker][1] for worker in range(workers)]
    first = manifests[0]
    for fact, what in _SHARED.items():
        if len({json.dumps(manifest.get(fact), sort_keys=True) for manifest in manifests}) > 1:
            raise DataError(f"the workers of the search disagree on {what}, so they are not one search; run the "
                            f"pipeline again without the cache (tunepipe run --no-cache)")
    if first.get("objective"):
        # What the workers searched for (the config's objective resolved for the problem).
        config = config.model_copy(update={"objective": first["objective"], "direction": first["direction"]})
    inputs = {key: first[key] for key in ("examples", "examples_digest", "transform", "transform_digest",
                                          "hypermodel", "hypermodel_digest") if key in first}
    if first.get("reused_from"):
        # Retraining that reuses an earlier search: every worker wrote the same result.
        previous = first["reused_from"]
        best = read_hyperparameters(found[0][0] / artifact.BEST_HYPERPARAMETERS)
        best_trial = (artifact.BestTrial(previous["best_trial_id"], previous["best_score"])
                      if previous.get("best_score") is not None else None)
        return artifact.write(Path(out), config, best, best_trial, [], {}, None,
                              {**inputs, "reused_from": previous, "workers": workers})
    trials = [trial for worker in range(workers) for trial in read_records(found[worker][0] / TRIALS_RECORDS)]
    completed = [trial for trial in trials if trial.status == COMPLETED and trial.score is not None]
    if not completed:
        raise DataError(f"none of the {len(trials)} trials of the {workers} workers completed")
    best = completed[0]
    for trial in completed[1:]:
        if objectives.better(trial.score, best.score, config.resolved_direction):
            best = trial
    space = json.loads((found[0][0] / artifact.SEARCH_SPACE).read_text())
    conditions = space.pop("conditions", {})
    searches = [manifest["search_id"] for manifest in manifests if manifest.get("search_id")]
    inputs.update(workers=workers, worker_searches=searches)
    return artifact.write(Path(out), config, best.hyperparameters, artifact.BestTrial(best.label, best.score),
                          trials, space, None, inputs, conditions)
