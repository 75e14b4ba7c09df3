"""Keras Tuner's own distributed mode (a chief oracle serving gRPC, N workers asking it for trials,
as TFX's Vertex tuner runs it) against tunepipe's independent shards, on the same random-search
budget over the generated table: the measurement behind choosing shards (docs/parallel-trials.md).

Each side runs as processes on this machine: the chief and the workers, or the shard workers and
their merge (parallel.py). The model, data and search space are tunepipe's (the tune step's
builder and tf.data input), the search a plain Keras Tuner RandomSearch.

    uv run python bench/tuning/chief_worker.py [--workers 2] [--seeds 1]

Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def tuner_process(examples: str, transform: str, work: str, trials: int, seed: int) -> None:
    """The chief or a worker (KERASTUNER_TUNER_ID says which): the same tuner in every process."""
    import keras
    import keras_tuner

    from components.model import data
    from components.transform import Transform
    from components.tune import step as tune
    from components.tune.config import TunerConfig

    config = TunerConfig.model_validate({"algorithm": "random", "max_trials": trials, "max_epochs": 9,
                                         "batch_size": 128, "seed": seed}).for_problem("multiclass")
    loaded = Transform.read(transform)
    build = tune.model_builder(loaded, config.search_space, None)
    tuner = keras_tuner.RandomSearch(tune._hypermodel(build, config.seed), objective=keras_tuner.Objective(
        config.objective, "max"), max_trials=trials, seed=seed, directory=work, project_name="search")
    tuner.search(data.dataset(examples, "train", loaded, config.batch_size, shuffle=True, seed=seed),
                 validation_data=data.dataset(examples, "eval", loaded, config.batch_size), epochs=config.max_epochs,
                 callbacks=[keras.callbacks.EarlyStopping(monitor=config.objective, mode="max",
                                                          patience=config.early_stopping_patience)],
                 shuffle=False, verbose=0)
    if os.environ["KERASTUNER_TUNER_ID"] == "chief":
        best = tuner.oracle.get_best_trials(1)[0]
        print(json.dumps({"best_score": best.score, "trials": len(tuner.oracle.trials)}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chief_and_workers(examples: Path, transform: Path, root: Path, workers: int, trials: int, seed: int) -> dict:
    work = root / f"chief-worker-seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    port = str(free_port())
    started = time.time()
    processes = []
    for tuner_id in ["chief", *(f"tuner{index}" for index in range(workers))]:
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERASTUNER_TUNER_ID": tuner_id,
                       "KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": port}
        log = open(work / f"{tuner_id}.log", "w")  # noqa: SIM115 (closed with the process)
        processes.append(subprocess.Popen(
            [sys.executable, __file__, "--process", str(examples), str(transform), str(work / "state"), str(trials),
             str(seed)], env=environment, stdout=subprocess.PIPE, stderr=log, text=True))
    outputs = [process.communicate()[0] for process in processes]
    if any(process.returncode for process in processes):
        raise SystemExit(f"a chief/worker process failed; see the logs in {work}")
    return {**json.loads(outputs[0].strip().splitlines()[-1]), "wall_s": time.time() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "tuning-chief-worker"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--rows", type=int, default=8000)
    args = parser.parse_args()
    import generate
    import parallel
    from run import prepare

    trials = parallel.BUDGETS["random"]["max_trials"]

    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    examples, transform = prepare("generated", {"source": str(generate.write(root / "generated.csv",
                                                                              rows=args.rows)), "label": "label"}, root)
    lines = [f"Random search, {trials} trials of 9 epochs, {args.workers} workers, {os.cpu_count()} cores; "
             "wall time from starting the processes to the search's result, imports included.", "",
             "| seed | Keras Tuner chief + workers (s) | best | tunepipe shards + merge (s) | best |",
             "|---:|---:|---:|---:|---:|"]
    for seed in range(args.seeds):
        chief = chief_and_workers(examples, transform, root, args.workers, trials, seed)
        shards = parallel.search(examples, transform, root / "shards", "random", args.workers, seed)
        lines.append(f"| {seed} | {chief['wall_s']:.0f} | {chief['best_score']:.4f} | {shards['wall_s']:.0f} | "
                     f"{shards['best_score']:.4f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--process"]:
        examples, transform, work, trials, seed = sys.argv[2:]
        tuner_process(examples, transform, work, int(trials), int(seed))
    else:
        main()
