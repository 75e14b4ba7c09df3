"""Benchmark of the tune step: Hyperband against RandomSearch and BayesianOptimization at the same
planned epoch budget, on the bundled penguins and on a harder generated table (generate.py), plus
the default tune + train on the penguins (time and eval accuracy).

For each search: the best objective (val_accuracy), the epochs actually trained (early stopping
ends trials before their planned epochs), the epochs trained until a trial first came within 1% of
the best val_accuracy any algorithm reached on that table, and the wall time. Every search uses the
same seed and search space; the random and Bayesian searches get as many trials of `max_epochs` as
fit in Hyperband's planned epochs.

    uv run python bench/tuning/run.py [--out bench/out/tuning] [--rows 8000]
    uv run python bench/tuning/run.py --parallel [--seeds 3] [--workers 2]   # see parallel.py
    uv run python bench/tuning/run.py --parallel --through-run                # each search a `tunepipe run`

Prints Markdown tables (the content of RESULTS.md).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import generate  # noqa: E402  (the sibling data generator)

from components.beam_run import BeamConfig  # noqa: E402
from components.ingest import step as ingest  # noqa: E402
from components.preprocess import step as preprocess  # noqa: E402
from components.train import step as train  # noqa: E402
from components.train.config import TrainingConfig  # noqa: E402
from components.tune import step as tune  # noqa: E402
from components.tune.config import TunerConfig  # noqa: E402
from pipeline import config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("hyperband", "random", "bayesian")
WITHIN = 0.01


def hyperband_planned_epochs(tuner_config: TunerConfig) -> int:
    """Epochs Hyperband plans for one search: every trial trains from its round's start to its end epoch.

    Uses Keras Tuner's own bracket arithmetic (the oracle's size and epoch schedule)."""
    import keras_tuner

    oracle = keras_tuner.oracles.HyperbandOracle(objective="val_accuracy", max_epochs=tuner_config.max_epochs,
                                                 factor=tuner_config.factor)
    total = 0
    for bracket in range(oracle._get_num_brackets()):
        for round_num in range(bracket + 1):
            start = oracle._get_epochs(bracket, round_num - 1) if round_num else 0
            total += oracle._get_size(bracket, round_num) * (oracle._get_epochs(bracket, round_num) - start)
    return total * tuner_config.hyperband_iterations


def prepare(name: str, data: dict, root: Path) -> tuple[Path, Path]:
    pipeline_config = config.from_dict({"data": data})
    examples, transform = root / name / "examples", root / name / "transform"
    ingest.run(pipeline_config.data, BeamConfig(), examples)
    preprocess.run(examples, transform, pipeline_config.preprocess, BeamConfig())
    return examples, transform


def search(algorithm: str, base: TunerConfig, examples: Path, transform: Path, root: Path, budget: int) -> dict:
    tuner_config = base.model_copy(update={"algorithm": algorithm,
                                           "max_trials": max(1, round(budget / base.max_epochs))})
    out = root / f"tuning-{algorithm}"
    shutil.rmtree(root / f"work-{algorithm}", ignore_errors=True)
    started = time.perf_counter()
    result = tune.run(examples, transform, out, tuner_config, work_dir=root / f"work-{algorithm}")
    wall = time.perf_counter() - started
    return {"algorithm": algorithm, "result": result, "wall_s": wall, "out": out,
            "trials": len(result.trials), "epochs": sum(trial.epochs or 0 for trial in result.trials)}


def epochs_until(trials, target: float) -> int | None:
    """Epochs trained, in trial order, until the first completed trial scoring at least `target`."""
    spent = 0
    for trial in sorted(trials, key=lambda t: t.trial_id):
        spent += trial.epochs or 0
        if trial.score is not None and trial.score >= target:
            return spent
    return None


def table(name: str, runs: list[dict], budget: int) -> str:
    best_overall = max(run["result"].best_score for run in runs)
    target = best_overall * (1 - WITHIN)
    lines = [f"### {name}", "",
             f"Planned budget: {budget} epochs (Hyperband's schedule); target: within 1% of the best "
             f"val_accuracy any algorithm reached ({best_overall:.4f}), i.e. >= {target:.4f}.", "",
             "| algorithm | trials | epochs trained | best val_accuracy | epochs to within 1% | wall time (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for run in runs:
        reached = epochs_until(run["result"].trials, target)
        lines.append(f"| {run['algorithm']} | {run['trials']} | {run['epochs']} | {run['result'].best_score:.4f} | "
                     f"{reached if reached is not None else 'not reached'} | {run['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "tuning"))
    parser.add_argument("--rows", type=int, default=8000, help="rows of the generated table")
    parser.add_argument("--parallel", action="store_true",
                        help="instead: the same budget over 1 and --workers workers at once (parallel.py)")
    parser.add_argument("--workers", type=int, default=2, help="with --parallel: the workers of the parallel runs")
    parser.add_argument("--seeds", type=int, default=3, help="with --parallel: seeds of each search")
    parser.add_argument("--through-run", action="store_true",
                        help="with --parallel: each search a whole `tunepipe run`, as a user runs it here")
    parser.add_argument("--algorithms", nargs="+", choices=("hyperband", "random"), default=["hyperband", "random"],
                        help="with --parallel: the searches to run")
    args = parser.parse_args()
    if args.parallel:
        import parallel

        default_out = "tuning-parallel-run" if args.through_run else "tuning-parallel"
        out = Path(args.out) if args.out != parser.get_default("out") else ROOT / "bench" / "out" / default_out
        measure = parallel.main_through_run if args.through_run else parallel.main
        measure(out, args.seeds, args.workers, args.rows, tuple(args.algorithms))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bench_started, load_before = time.perf_counter(), os.getloadavg()[0]
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    sections = []
    # The penguins with the default tuner config, then the default training on the Hyperband result:
    # what `tunepipe run` does with the bundled data.
    penguins_config = config.load(ROOT / "data" / "penguins" / "pipeline.yaml")
    examples, transform = prepare("penguins", penguins_config.data.model_dump(mode="json"), root)
    base = TunerConfig()
    budget = hyperband_planned_epochs(base)
    runs = [search(algorithm, base, examples, transform, root / "penguins", budget) for algorithm in ALGORITHMS]
    started = time.perf_counter()
    model = train.run(examples, transform, root / "penguins" / "model", TrainingConfig(), runs[0]["out"])
    train_wall = time.perf_counter() - started
    defaults = [
        "### Defaults on the penguins (tune + train)", "",
        f"`TunerConfig()` (Hyperband, max_epochs {base.max_epochs}, factor {base.factor}, batch size "
        f"{base.batch_size}) then `TrainingConfig()` (up to {TrainingConfig().epochs} epochs, early stopping "
        f"on val_loss with patience {TrainingConfig().early_stopping_patience}):", "",
        "| step | wall time (s) | result |", "|---|---:|---|",
        f"| tune | {runs[0]['wall_s']:.0f} | {runs[0]['trials']} trials, best val_accuracy "
        f"{runs[0]['result'].best_score:.4f} |",
        f"| train | {train_wall:.0f} | {model.epochs_trained} epochs, eval accuracy {model.metrics['accuracy']:.4f}, "
        f"loss {model.metrics['loss']:.4f} |",
        f"| tune + train | {runs[0]['wall_s'] + train_wall:.0f} | |"]
    sections.append("\n".join(defaults))
    sections.append(table("Penguins (344 rows, 3 classes)", runs, budget))

    generated = generate.write(root / "generated" / "generated.csv", rows=args.rows)
    examples, transform = prepare("generated", {"source": str(generated), "label": "label"}, root)
    # A larger table and a harder boundary: bigger batches, and a schedule with a third bracket.
    base = TunerConfig(max_epochs=9, batch_size=128)
    budget = hyperband_planned_epochs(base)
    runs = [search(algorithm, base, examples, transform, root / "generated", budget) for algorithm in ALGORITHMS]
    sections.append(table(f"Generated ({args.rows} rows, 4 classes, interactions, 3% missing; generate.py)",
                          runs, budget))

    header = (f"Measured on {platform.machine()} with {os.cpu_count()} CPU cores shared with other work (1-minute "
              f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end), Python "
              f"{platform.python_version()}, one seed ({base.seed}); the whole benchmark took "
              f"{(time.perf_counter() - bench_started) / 60:.1f} min. Wall times include building each trial's "
              f"model and tracing its training function, not the TensorFlow import.")
    print("\n\n".join([header, *sections]))


if __name__ == "__main__":
    main()
