"""Parallel trials (`tuner.parallel_trials`): the same search budget run by one worker and by N at
once, on the generated 8000-row table (generate.py), and a model of the wall time at cluster scale.

Each worker is its own process, started together, as kfp.local starts the tasks of a ParallelFor
(and Kubeflow its pods), and told how many share the machine, as `tunepipe run` tells them (each
sizes TensorFlow's thread pools to its share of the CPUs); then the merge runs in a process of its
own. Wall time is from starting the workers to the merge's end, imports included, as a pipeline
pays them. The budgets:

- Hyperband (the default): `hyperband_iterations` 2 in one worker against 1 in each of 2 workers;
- random search: 16 trials of `max_epochs` in one worker against 8 in each of 2.

Each is run with several seeds, so the N=1 scores show the run-to-run spread the N=2 scores are
compared with.

With `--through-run`, each search is instead a whole `tunepipe run` of the generated table with that
tuner section, as a user runs it on this machine: kfp.local runs the ParallelFor's workers at once and
every step runs in a fork of the run's warm step server (pipeline/step_server.py). The tune phase is
read from the timing line each step writes to the run's log (its process's start-up and its work):
the `tune` step's, or the slowest `tune-worker`'s plus the `tune-merge`'s. These clocks do not jump
when the wall clock is set (this machine's did, by 25 s during one run), which the times kfp.local
logs do. What kfp.local spends starting a task's process and reading its outputs is left out, for
one task more with N > 1 (0.1-0.2 s a task here). The whole run's wall time is reported beside it.

    uv run python bench/tuning/run.py --parallel [--seeds 3] [--workers 2] [--through-run] [--algorithms random]

Prints Markdown (the parallel section of RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The generated table's search, as in run.py: bigger batches and a schedule with a third bracket.
BASE = {"max_epochs": 9, "batch_size": 128}
BUDGETS = {"hyperband": {"algorithm": "hyperband", "hyperband_iterations": 2},
           "random": {"algorithm": "random", "max_trials": 16}}
# The cluster model: a 200-trial random search over N pods, for KFP pod start-ups (scheduling, the
# image already on the node or pulled) that cannot be measured on this machine.
CLUSTER_TRIALS = 200
POD_STARTUPS_S = (10, 60)
CLUSTER_WORKERS = (1, 2, 4, 8, 16, 32, 64)


def worker_main(argv: list[str]) -> None:
    """One worker (or, with --merge, the merge) in its own process; its timings as JSON on stdout."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples")
    parser.add_argument("--transform")
    parser.add_argument("--out")
    parser.add_argument("--work")
    parser.add_argument("--config")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--merge", nargs="*")
    args = parser.parse_args(argv)
    from components.tune.config import TunerConfig

    config = TunerConfig.model_validate(json.loads(args.config))
    ready = time.time()
    if args.merge is not None:
        from components.tune import workers

        result = workers.merge(args.merge, args.out, config, args.workers)
    else:
        from components.tune import step as tune

        result = tune.run(args.examples, args.transform, args.out, config, work_dir=args.work, worker=args.worker,
                          workers=args.workers)
    print(json.dumps({"ready": ready, "ended": time.time(), "best_score": result.best_score,
                      "trials": len(result.trials),
                      "trial_s": [trial.duration_s for trial in result.trials if trial.duration_s]}))


def _process(root: Path, *arguments: str, at_once: int = 1) -> subprocess.Popen:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if at_once > 1:  # as `tunepipe run` tells the workers it starts on one machine
        from components.tune.workers import SHARED_MACHINE_ENV

        environment[SHARED_MACHINE_ENV] = str(at_once)
    log = open(root / f"process-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, __file__, "--process", *arguments], cwd=ROOT, env=environment,
                            stdout=subprocess.PIPE, stderr=log, text=True)


def _finished(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"a benchmark process failed (exit {process.returncode}); see its log in the output folder")
    return json.loads(out.strip().splitlines()[-1])


def search(examples: Path, transform: Path, root: Path, algorithm: str, workers: int, seed: int) -> dict:
    """The budget of `algorithm` run by `workers` processes at once, then merged; timings and result."""
    config = {**BASE, **BUDGETS[algorithm], "seed": seed, "parallel_trials": workers}
    name = f"{algorithm}-n{workers}-seed{seed}"
    folder = root / name
    folder.mkdir(parents=True)
    started = time.time()
    if workers == 1:
        parts = []
        runs = [_finished(_process(folder, "--examples", str(examples), "--transform", str(transform),
                                   "--out", str(folder / "tuning"), "--work", str(folder / "work"),
                                   "--config", json.dumps(config)))]
        merge = None
    else:
        parts = [folder / f"worker-{worker}" for worker in range(workers)]
        processes = [_process(folder, "--examples", str(examples), "--transform", str(transform), "--out",
                              str(part), "--work", str(folder / "work"), "--config", json.dumps(config),
                              "--worker", str(worker), "--workers", str(workers), at_once=workers)
                     for worker, part in enumerate(parts)]
        runs = [_finished(process) for process in processes]
        merge = _finished(_process(folder, "--out", str(folder / "tuning"), "--config", json.dumps(config),
                                   "--workers", str(workers), "--merge", *map(str, parts)))
    wall = time.time() - started
    best = merge["best_score"] if merge else runs[0]["best_score"]
    trials = merge["trials"] if merge else runs[0]["trials"]
    # What a worker spends outside its trials: the imports, reading the data, writing its result.
    overheads = [(run["ended"] - started) - sum(run["trial_s"]) for run in runs]
    return {"algorithm": algorithm, "workers": workers, "seed": seed, "wall_s": wall, "best_score": best,
            "trials": trials, "trial_s": [seconds for run in runs for seconds in run["trial_s"]],
            "overhead_s": statistics.median(overheads),
            # The merge's process, imports included, after the last worker ended.
            "merge_s": merge["ended"] - max(run["ended"] for run in runs) if merge else 0.0}


def cluster_model(per_trial_s: float, overhead_s: float, merge_s: float) -> list[str]:
    header = " | ".join(f"wall time, pod start-up {startup} s (min)" for startup in POD_STARTUPS_S)
    lines = [f"| workers N | {header} | speed-up over N=1 ({POD_STARTUPS_S[0]} s start-up) |",
             "|---:|" + "---:|" * (len(POD_STARTUPS_S) + 1)]
    for workers in CLUSTER_WORKERS:
        times = []
        for startup in POD_STARTUPS_S:
            worker = startup + overhead_s + math.ceil(CLUSTER_TRIALS / workers) * per_trial_s
            merge = (startup + merge_s) if workers > 1 else 0.0
            times.append(worker + merge)
        serial = POD_STARTUPS_S[0] + overhead_s + CLUSTER_TRIALS * per_trial_s
        lines.append(f"| {workers} | " + " | ".join(f"{seconds / 60:.1f}" for seconds in times)
                     + f" | {serial / times[0]:.1f}x |")
    return lines


def through_run(table: Path, root: Path, algorithm: str, workers: int, seed: int) -> dict:
    """One search as a whole `tunepipe run` of `table`: the tune phase's wall time (module docstring),
    the whole run's, the best score and the trials."""
    from bench.whole_run import parse
    from bench.whole_run.run import run_tunepipe
    from components import artifacts

    tuner = {**BASE, **BUDGETS[algorithm], "seed": seed, "parallel_trials": workers}
    folder = root / f"{algorithm}-n{workers}-seed{seed}"
    folder.mkdir(parents=True)
    config_file = folder / "pipeline.yaml"  # JSON is YAML
    config_file.write_text(json.dumps({"name": "generated", "model_name": "generated",
                                       "data": {"source": str(table), "label": "label"}, "tuner": tuner}))
    run = run_tunepipe(config_file, folder / "out", f"{folder.name}: tunepipe run")
    seconds: dict[str, list[float]] = {}  # each tune step's start-up + work, one per task
    for name, startup, work in parse.timings(run["log_file"]) if run["log_file"] else []:
        seconds.setdefault(name, []).append(startup + work)
    stages = ["tune"] if workers == 1 else ["tune-worker", "tune-merge"]  # the tune phase's steps, in turn
    ran = all(run["report"].steps.get(name, parse.StepReport()).state == "ran" for name in stages)
    if not ran or [len(seconds.get(name, [])) for name in stages] != ([1] if workers == 1 else [workers, 1]):
        raise SystemExit(f"{folder.name}: the run's log does not show its tune tasks running ({run['log_file']})")
    manifest = artifacts.read_manifest(run["report"].outputs["tuning"], artifacts.TUNING)
    return {"algorithm": algorithm, "workers": workers, "seed": seed,
            "tune_s": sum(max(seconds[name]) for name in stages), "run_s": run["seconds"],
            "best_score": manifest["best_score"], "trials": sum(manifest["trials"].values())}


def _generated_table(out: Path, rows: int) -> Path:
    """`out` emptied, with the generated table written in it; puts this folder and the project on
    the import path (generate.py and run.py are imported as sibling scripts)."""
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(ROOT)]
    import generate

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return generate.write(out / "generated.csv", rows=rows)


def _measured_on(load_before: float, seeds: int, bench_started: float) -> str:
    from bench.whole_run.report import machine

    return (f"Measured on {machine()}, shared with other work (1-minute load average {load_before:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end), {seeds} seeds; the whole benchmark took "
            f"{(time.perf_counter() - bench_started) / 60:.1f} min.")


def _compared(runs: list[dict], algorithm: str, workers: int, seconds: str) -> tuple[list[dict], list[dict], str]:
    """`algorithm`'s runs over one worker and over `workers`, and the sentence comparing their median
    `seconds` and best scores."""
    mine = [run for run in runs if run["algorithm"] == algorithm]
    serial = [run for run in mine if run["workers"] == 1]
    parallel = [run for run in mine if run["workers"] == workers]
    one, many = (statistics.median(run[seconds] for run in group) for group in (serial, parallel))
    per_seed = ", ".join(f"{a[seconds] / b[seconds]:.2f}x" for a, b in zip(serial, parallel))
    scores = [[run["best_score"] for run in group] for group in (serial, parallel)]
    return serial, parallel, (
        f"N=1 {one:.1f} s, N={workers} {many:.1f} s: **{one / many:.2f}x** faster (per seed {per_seed}). Best "
        f"val_accuracy: N=1 {min(scores[0]):.4f}-{max(scores[0]):.4f} over the seeds, N={workers} "
        f"{min(scores[1]):.4f}-{max(scores[1]):.4f}.")


def main_through_run(out: Path, seeds: int, workers: int, rows: int, algorithms: tuple[str, ...]) -> None:
    bench_started, load_before = time.perf_counter(), os.getloadavg()[0]
    table = _generated_table(out, rows)
    runs = [through_run(table, out / "runs", algorithm, count, seed)
            for algorithm in algorithms for seed in range(seeds) for count in (1, workers)]
    lines = [f"{_measured_on(load_before, seeds, bench_started)} Each search a whole `tunepipe run`; tune phase: the "
             f"tune step's start-up and work, or the slowest worker's and the merge's, from the run's log.", ""]
    for algorithm in algorithms:
        serial, parallel, compared = _compared(runs, algorithm, workers, "tune_s")
        lines += [f"### {algorithm}: {json.dumps(BUDGETS[algorithm])} over 1 and {workers} workers, through "
                  f"`tunepipe run`", "",
                  "| seed | N | trials | tune phase (s) | whole run (s) | best val_accuracy |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {run['seed']} | {run['workers']} | {run['trials']} | {run['tune_s']:.1f} | "
                  f"{run['run_s']:.0f} | {run['best_score']:.4f} |"
                  for run in serial + parallel]
        whole_one, whole_many = (statistics.median(run["run_s"] for run in group) for group in (serial, parallel))
        lines += ["", f"Median tune phase: {compared} Whole run {whole_one:.0f} s against {whole_many:.0f} s "
                  f"({whole_one / whole_many:.2f}x).", ""]
    print("\n".join(lines))


def main(out: Path, seeds: int, workers: int, rows: int, algorithms: tuple[str, ...] = tuple(BUDGETS)) -> None:
    bench_started, load_before = time.perf_counter(), os.getloadavg()[0]
    table = _generated_table(out, rows)
    from run import prepare  # the sibling script, importable once _generated_table set the path

    examples, transform = prepare("generated", {"source": str(table), "label": "label"}, out)
    runs = [search(examples, transform, out / "runs", algorithm, count, seed)
            for algorithm in algorithms for seed in range(seeds) for count in (1, workers)]

    lines = [f"{_measured_on(load_before, seeds, bench_started)} Wall time: from starting the workers' processes to "
             f"the end of the merge's, imports included.", ""]
    for algorithm in algorithms:
        serial, parallel, compared = _compared(runs, algorithm, workers, "wall_s")
        lines += [f"### {algorithm}: {json.dumps(BUDGETS[algorithm])} over 1 and {workers} workers", "",
                  "| seed | N | trials | wall time (s) | best val_accuracy | of which merge (s) |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {run['seed']} | {run['workers']} | {run['trials']} | {run['wall_s']:.0f} | "
                  f"{run['best_score']:.4f} | {run['merge_s']:.1f} |" for run in serial + parallel]
        lines += ["", f"Median wall time: {compared}", ""]
    if "random" not in algorithms:  # the cluster model is of a random search
        print("\n".join(lines))
        return
    random_serial = [run for run in runs if run["algorithm"] == "random" and run["workers"] == 1]
    per_trial = statistics.median(seconds for run in random_serial for seconds in run["trial_s"])
    overhead = statistics.median(run["overhead_s"] for run in runs)
    merge = statistics.median(run["merge_s"] for run in runs if run["workers"] > 1)
    lines += [f"### Cluster scale: {CLUSTER_TRIALS} random-search trials over N pods (a model)", "",
              f"T(N) = pod start-up + worker overhead + ceil({CLUSTER_TRIALS}/N) x trial + (N > 1: pod start-up + "
              f"merge), with this run's medians: a trial of {BASE['max_epochs']} epochs {per_trial:.1f} s, a worker's "
              f"time outside its trials (imports, data, result) {overhead:.1f} s, the merge {merge:.1f} s; KFP's pod "
              f"start-up is not measurable here, so two values bracket it.", "", *cluster_model(per_trial, overhead,
                                                                                               merge)]
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--process"]:
        sys.path.insert(0, str(ROOT))
        worker_main(sys.argv[2:])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "tuning-parallel"))
        parser.add_argument("--seeds", type=int, default=3)
        parser.add_argument("--workers", type=int, default=2)
        parser.add_argument("--rows", type=int, default=8000)
        arguments = parser.parse_args()
        main(Path(arguments.out), arguments.seeds, arguments.workers, arguments.rows)
