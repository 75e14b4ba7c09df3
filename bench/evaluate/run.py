"""Benchmark: tunepipe's evaluate step (TFMA on Beam DirectRunner), its metrics batched ("after") and
TFMA's own per-example metrics as before ("before"), against a plain batched predict with the same
model plus numpy metrics, on the same rows.

Setup (once, not timed): a model is trained on a 20k-row penguins-like table (ingest, preprocess,
train with the default hyperparameters, 3 epochs). For each size N, an `examples` artifact is written
whose held-out (`eval`) split holds N generated rows (`bench/ingest_preprocess/generate.py`, seed 1,
one Parquet file, 64k-row row groups; the schema is the one ingest inferred for the training table).

Each repetition runs in a fresh Python process that imports everything first and times the work only:

- tunepipe: `components.evaluate.step.run(...)` with the default config (no thresholds, so the defaults)
  and `slices: [island]`, no baseline (`--baseline` adds the same model again as the baseline):
  reading the shards, building tf.Examples in batches grouped by island, TFMA's extract/evaluate/write
  on the FnApiRunner with every metric computed per batch (`components.evaluate.batched_metrics`),
  then reading TFMA's output back into blessing.json, metrics.json, confusion_matrix.json and report.md.
- before: the same call with `per_example=True`: TFMA's default extractors (which unbatch) and its own
  per-example metric combiners, the configuration the step ran before the metrics were batched. Run
  only at the `--before-rows` sizes (it takes ~50 minutes at 1M rows).
- plain: the same Parquet file in 4096-row batches, each batch turned into serialized tf.Examples (the
  same vectorized tfx_bsl encoder) and scored by the SavedModel's `serving_default` signature; then
  numpy over all rows: accuracy, cross-entropy, per-class precision/recall (top-1), one-vs-rest AUC
  (exact, by ranks) and its macro average, calibration, the confusion matrix, and accuracy and count
  per island. No Beam, no output files besides a JSON of the numbers.

The parent checks that all report the same accuracy and per-island counts, and writes RESULTS.md.

    uv run python -m bench.evaluate.run                  # after and plain at 100k and 1M, before at 100k
    uv run python -m bench.evaluate.run --rows 100000 1000000 --before-rows 100000 --reps 1
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # when run as a script by path
    sys.path.insert(0, str(ROOT))

IMPLEMENTATIONS = ("plain", "before", "tunepipe")
DEFAULT_ROWS = (100_000, 1_000_000)
DEFAULT_BEFORE_ROWS = (100_000,)
TRAIN_ROWS = 20_000
BATCH_ROWS = 4096
ROW_GROUP_ROWS = 65_536


# --- setup --------------------------------------------------------------------------------------------

def prepare(root: Path, sizes: list[int]) -> dict:
    """The trained model and one examples artifact per size (reused if already there)."""
    import pyarrow.parquet as pq

    from bench.ingest_preprocess.generate import generate, penguins
    from components import artifacts
    from components.beam_run import BeamConfig
    from components.ingest import step as ingest
    from components.preprocess import step as preprocess
    from components.schema import Schema
    from components.train import step as train
    from components.train.config import TrainingConfig
    from pipeline import config

    model = root / "model"
    train_examples = root / "train-examples"
    if not model.exists():
        csv = generate(TRAIN_ROWS, root / "train.csv", seed=0)
        pipeline = config.from_dict({"data": {"source": str(csv), "label": "species",
                                              "features": {"exclude": ["year"]}}})
        ingest.run(pipeline.data, BeamConfig(), train_examples)
        preprocess.run(train_examples, root / "transform", pipeline.preprocess, BeamConfig())
        train.run(train_examples, root / "transform", model, TrainingConfig(epochs=3))
    schema = Schema.read(train_examples)
    examples = {}
    for rows in sizes:
        target = root / f"examples-{rows}"
        if not target.exists():
            table = penguins(rows, seed=1).cast(schema.arrow_schema())
            with artifacts.building(target) as partial:
                (partial / "eval").mkdir()
                pq.write_table(table, partial / "eval" / "part-00000-of-00001.parquet", row_group_size=ROW_GROUP_ROWS)
                schema.write(partial)
                artifacts.write_manifest(partial, artifacts.EXAMPLES, "bench", counts={"splits": {"eval": rows}})
        examples[rows] = str(target)
    return {"model": str(model), "examples": examples}


# --- the children ---------------------------------------------------------------------------------------

def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_tunepipe(examples: str, model: str, out: str, baseline: bool, per_example: bool) -> dict:
    from components.beam_run import BeamConfig
    from components.evaluate import step as evaluate
    from components.evaluate.config import EvaluationConfig

    reported: list[int] = []
    started = time.perf_counter()
    result = evaluate.run(examples, model, out, EvaluationConfig(slices=("island",)), BeamConfig(),
                          baseline=model if baseline else None, progress=reported.append, per_example=per_example)
    seconds = time.perf_counter() - started
    metrics = json.loads(Path(out, evaluate.METRICS).read_text())
    return {"seconds": seconds, "rows": result.example_count, "accuracy": result.metrics["accuracy"],
            "macro_auc": result.metrics["macro_auc"], "progress_calls": len(reported),
            "islands": {name: values["candidate"]["example_count"]
                        for name, values in metrics["slices"]["island"].items()}}


def _auc(scores, positive) -> float:
    """Exact one-vs-rest ROC AUC by ranks (ties get their mean rank)."""
    import pandas as pd

    ranks = pd.Series(scores).rank(method="average").to_numpy()
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    return float((ranks[positive].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def run_plain(examples: str, model: str, out: str) -> dict:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    from components.evaluate.tfma_inputs import list_array
    from components.examples import split_files
    from components.schema import NUMERIC, Schema

    schema = Schema.read(examples)
    vocabulary = Path(model, "label_vocabulary.txt").read_text().split()
    started = time.perf_counter()
    serve = tf.saved_model.load(model).signatures["serving_default"]
    probabilities, labels, islands = [], [], []
    columns = [column.name for column in schema.features] + [schema.label.name]
    for path in split_files(examples, "eval"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            arrays = [list_array(batch.column(column.name) if column.kind == NUMERIC
                                           else batch.column(column.name).cast(pa.string()),
                                           pa.float32() if column.kind == NUMERIC else pa.large_binary())
                      for column in schema.features]
            serialized = example_coder.RecordBatchToExamples(
                pa.RecordBatch.from_arrays(arrays, [column.name for column in schema.features]))
            probabilities.append(serve(examples=tf.constant(serialized))["probabilities"].numpy())
            labels.append(pc.index_in(batch.column(schema.label.name), value_set=pa.array(vocabulary))
                          .to_numpy(zero_copy_only=False))
            islands.append(batch.column("island").to_numpy(zero_copy_only=False))
    probabilities, labels, islands = np.concatenate(probabilities), np.concatenate(labels), np.concatenate(islands)
    predicted = probabilities.argmax(axis=1)
    classes = len(vocabulary)
    confusion = np.zeros((classes, classes), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    correct = predicted == labels
    metrics = {
        "accuracy": float(correct.mean()),
        "loss": float(-np.log(np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1)).mean()),
        "precision": (np.diag(confusion) / np.maximum(confusion.sum(axis=0), 1)).tolist(),
        "recall": (np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)).tolist(),
        "auc": [_auc(probabilities[:, index], labels == index) for index in range(classes)],
        "calibration": [float(probabilities[:, index].mean() / max((labels == index).mean(), 1e-12))
                        for index in range(classes)],
        "confusion_matrix": confusion.tolist(),
    }
    metrics["macro_auc"] = float(np.nanmean(metrics["auc"]))
    names, inverse = np.unique(islands.astype(str), return_inverse=True)
    counts = np.bincount(inverse)
    metrics["islands"] = {str(name): {"count": int(count), "accuracy": float(correct[inverse == index].mean())}
                          for index, (name, count) in enumerate(zip(names, counts))}
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "metrics.json").write_text(json.dumps(metrics, indent=2))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": int(len(labels)), "accuracy": metrics["accuracy"],
            "macro_auc": metrics["macro_auc"],
            "islands": {name: value["count"] for name, value in metrics["islands"].items()}}


def child(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow", "tensorflow_model_analysis"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Import the heavy libraries before the clock starts, in both implementations.
    import apache_beam  # noqa: F401
    import tensorflow  # noqa: F401
    import tensorflow_model_analysis  # noqa: F401

    if args.child in ("tunepipe", "before"):
        result = run_tunepipe(args.examples, args.model, args.out, args.baseline, per_example=args.child == "before")
    else:
        result = run_plain(args.examples, args.model, args.out)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


# --- the parent -----------------------------------------------------------------------------------------

def _measure(implementation: str, examples: str, model: str, work: Path, baseline: bool) -> dict:
    out = work / f"{implementation}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "bench.evaluate.run", "--child", implementation, "--examples", examples,
               "--model", model, "--out", str(out)] + (["--baseline"] if baseline else [])
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    if completed.returncode or not lines:
        sys.stderr.write(completed.stderr[-5000:])
        raise SystemExit(f"{implementation} failed (exit {completed.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) / 1024 ** 2 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), float("nan"))
    from importlib.metadata import version

    packages = ", ".join(f"{name} {version(name)}" for name in
                         ("tensorflow", "tensorflow-model-analysis", "tfx-bsl", "apache-beam", "keras", "pyarrow"))
    return (f"{os.cpu_count()} CPUs (`nproc`), {memory:.1f} GiB RAM, CPU `{cpu}`; {platform.platform()}; "
            f"Python {platform.python_version()}, {packages}")


def _commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return commit + (", with uncommitted work in the tree" if dirty.strip() else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS))
    parser.add_argument("--reps", type=int, nargs="+", default=[3],
                        help="repetitions, one number for all sizes or one per size")
    parser.add_argument("--before-rows", type=int, nargs="*", default=list(DEFAULT_BEFORE_ROWS),
                        help="the sizes (of --rows) at which TFMA's per-example metrics run too (none: omit)")
    parser.add_argument("--baseline", action="store_true", help="tunepipe also evaluates a baseline model")
    parser.add_argument("--work", help="directory for the model and tables (default: a temporary one)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.reps) not in (1, len(args.rows)):
        parser.error("give one --reps or one per --rows")
    if not set(args.before_rows) <= set(args.rows):
        parser.error("every --before-rows size must be one of --rows")
    args.reps = dict(zip(args.rows, args.reps * len(args.rows) if len(args.reps) == 1 else args.reps))
    if args.child:
        child(args)
        return

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-evaluate-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"setting up in {work} ...", flush=True)
    setup = prepare(work, args.rows)
    load_before = os.getloadavg()
    started = time.monotonic()
    measured: dict[tuple[int, str], list[dict]] = {}
    for rows in args.rows:
        for rep in range(args.reps[rows]):
            for implementation in IMPLEMENTATIONS:
                if implementation == "before" and rows not in args.before_rows:
                    continue
                result = _measure(implementation, setup["examples"][rows], setup["model"], work,
                                  args.baseline and implementation != "plain")
                measured.setdefault((rows, implementation), []).append(result)
                print(f"{rows:>9,} rows  {implementation:<8} rep {rep + 1}/{args.reps[rows]}: "
                      f"{result['seconds']:.1f} s, "
                      f"accuracy {result['accuracy']:.6f}, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    load_after = os.getloadavg()
    write_results(args, measured, load_before, load_after, time.monotonic() - started)


def write_results(args: argparse.Namespace, measured: dict, load_before, load_after, total_seconds: float) -> None:
    counts = [args.reps[rows] for rows in args.rows]
    reps = str(counts[0]) if len(set(counts)) == 1 else " ".join(map(str, counts))
    before_rows = " ".join(map(str, args.before_rows))
    lines = [
        "# Benchmark results: evaluate", "",
        "## TFMA on Beam DirectRunner, batched (after) and per example (before), vs a plain batched predict + "
        "numpy metrics", "",
        f"Generated by `python -m bench.evaluate.run --rows {' '.join(map(str, args.rows))} --before-rows "
        f"{before_rows} --reps {reps}{' --baseline' if args.baseline else ''}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC (commit {_commit()}); the whole run took "
        f"{total_seconds / 60:.1f} minutes.", "",
        "**What was run.** " + " ".join(__doc__.split("\n\n")[1].split()), "",
        "- **tunepipe** (after): " + " ".join(__doc__.split("- tunepipe:")[1].split("- before:")[0].split()),
        "- **before**: " + " ".join(__doc__.split("- before:")[1].split("- plain:")[0].split()),
        "- **plain**: " + " ".join(__doc__.split("- plain:")[1].split("\n\n")[0].split()), "",
        f"Each repetition is a fresh Python process; the time excludes interpreter start-up and imports. "
        f"Median of the repetitions per size ({reps} for {', '.join(f'{rows:,}' for rows in args.rows)} rows: "
        f"a single number is one repetition, not a median); "
        f"before only at {', '.join(f'{rows:,}' for rows in args.before_rows) or 'no size'} rows.", "",
        f"**Machine.** {_machine()}. Load average (1/5/15 min) before: "
        f"{' '.join(f'{x:.2f}' for x in load_before)}; after: {' '.join(f'{x:.2f}' for x in load_after)} "
        f"(the machine is shared with other work, so times are noisy).", "",
        "| rows | implementation | wall s (median) | min–max s | rows/s | peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    order = {name: index for index, name in enumerate(IMPLEMENTATIONS)}
    for (rows, implementation), results in sorted(measured.items(), key=lambda item: (item[0][0], order[item[0][1]])):
        seconds = [result["seconds"] for result in results]
        median = statistics.median(seconds)
        name = "tunepipe (after)" if implementation == "tunepipe" else implementation
        lines.append(f"| {rows:,} | {name} | {median:.1f} | {min(seconds):.1f}–{max(seconds):.1f} | "
                     f"{rows / median:,.0f} | {max(result['peak_rss_mb'] for result in results):.0f} |")
    lines += ["", "| rows | after / plain | before / plain | before / after | accuracy after | accuracy before | "
                  "accuracy plain | macro AUC after | macro AUC before | macro AUC plain (exact) | "
                  "per-island counts agree |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]

    def median(rows: int, implementation: str) -> float | None:
        results = measured.get((rows, implementation))
        return statistics.median(r["seconds"] for r in results) if results else None

    def number(results: list[dict], name: str, digits: int) -> str:
        return f"{results[0][name]:.{digits}f}" if results else "–"

    for rows in args.rows:
        ours, plain, before = (measured.get((rows, name), []) for name in ("tunepipe", "plain", "before"))
        after_s, plain_s, before_s = median(rows, "tunepipe"), median(rows, "plain"), median(rows, "before")
        agree = all(r["islands"] == plain[0]["islands"] and r["rows"] == plain[0]["rows"] for r in ours + before)
        lines.append(
            f"| {rows:,} | {after_s / plain_s:.1f}x | {f'{before_s / plain_s:.1f}x' if before else '–'} | "
            f"{f'{before_s / after_s:.1f}x' if before else '–'} | {number(ours, 'accuracy', 6)} | "
            f"{number(before, 'accuracy', 6)} | {number(plain, 'accuracy', 6)} | {number(ours, 'macro_auc', 4)} | "
            f"{number(before, 'macro_auc', 4)} | {number(plain, 'macro_auc', 4)} | {'yes' if agree else 'NO'} |")
    lines.append("")
    marker = "<!-- notes: everything below this line is kept when run.py rewrites the file -->"
    results_path = Path(args.results)
    notes = ""
    if results_path.exists() and marker in results_path.read_text():
        notes = results_path.read_text().split(marker, 1)[1]
    results_path.write_text("\n".join(lines) + "\n" + marker + notes)
    print("\n".join(lines))
    print(f"wrote {results_path}")


if __name__ == "__main__":
    main()
