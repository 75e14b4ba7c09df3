"""What-if runs for the suggestions in RESULTS.md: tunepipe's ingest + preprocess with two internals of
`components.ingest` patched in the child process. Nothing in the repository changes.

- `--block-mb`: the CSV block size (`components.ingest.infer._CSV_BLOCK_BYTES`, 16 MB as shipped). pyarrow's streaming
  CSV reader reads up to 32 blocks ahead, so this caps how much raw CSV ingest holds.
- `--fast-numeric`: `components.ingest.blocks.conform` first casts every column with `pyarrow.compute.cast`. Only a
  block where that raises falls back to the shipped regex validation, which then finds the rejects.
  Note: Arrow's cast also accepts text such as `inf`, which the regex rejects.

Each configuration runs `--reps` times in fresh processes, timed and measured like run.py (work only,
VmHWM). The split sizes and the train mean of bill_length_mm are printed, so you can see the
output is unchanged.

    uv run python -m bench.ingest_preprocess.what_if --rows 10000000 --configs 16 16:fast 4 4:fast 2
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ingest_preprocess.run import LABEL, EXCLUDE, _peak_rss_kb, dataset  # noqa: E402


def child(csv: Path, work: Path, block_mb: float, fast: bool) -> dict:
    import apache_beam.io.parquetio  # noqa: F401
    import apache_beam.runners.portability.fn_api_runner  # noqa: F401
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from components.ingest import blocks, infer, step as ingest
    from components.preprocess import step as preprocess
    from pipeline import config

    infer._CSV_BLOCK_BYTES = int(block_mb * (1 << 20))
    if fast:
        shipped = blocks.conform

        def conform(batch, schema, source):
            try:
                columns = [pc.cast(batch.column(column.name), column.arrow_type) for column in schema.columns]
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return shipped(batch, schema, source)
            typed = pa.RecordBatch.from_arrays(columns, schema=schema.arrow_schema())
            label = typed.column(schema.label.name)
            missing = label.is_null().to_numpy(zero_copy_only=False)
            missing |= pc.fill_null(pc.equal(pc.utf8_trim_whitespace(label), ""), False).to_numpy(zero_copy_only=False)
            return (typed.filter(pa.array(~missing)) if missing.any() else typed), [], int(missing.sum())

        blocks.conform = conform

    cfg = config.from_dict({"data": {"source": str(csv), "label": LABEL, "features": {"exclude": list(EXCLUDE)}}})
    started = time.perf_counter()
    ingested = ingest.run(cfg.data, cfg.beam, work / "examples")
    middle = time.perf_counter()
    analyzed = preprocess.run(work / "examples", work / "transform", cfg.preprocess, cfg.beam)
    finished = time.perf_counter()
    train = sorted((work / "examples" / "train").glob("*.parquet"))
    bill = next(f for f in analyzed.transform.features if f.name == "bill_length_mm")
    return {"wall_s": finished - started, "ingest_s": middle - started, "preprocess_s": finished - middle,
            "peak_rss_kb": _peak_rss_kb(), "splits": ingested.counts["splits"], "bill_length_mean": bill.mean,
            "train_row_groups": sum(pq.ParquetFile(path).metadata.num_row_groups for path in train)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--configs", nargs="+", default=["16", "16:fast", "4", "4:fast"],
                        help="block size in MB, with ':fast' for the numeric fast path")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tunepipe-bench" / "ingest_preprocess")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        block, _, fast = args.child.partition(":")
        print("WHAT-IF " + json.dumps(child(args.csv, args.work, float(block), fast == "fast")), flush=True)
        return

    args.data_dir.mkdir(parents=True, exist_ok=True)
    csv = dataset(args.rows, args.data_dir)
    print(f"{args.rows:,} rows, {args.reps} rep(s) per configuration, median wall time and peak RSS\n")
    print("| block MB | numeric check | wall s | ingest s | preprocess s | peak RSS MB | train row groups | "
          "splits | train mean bill_length_mm |")
    print("|---:|---|---:|---:|---:|---:|---:|---|---:|")
    for configuration in args.configs:
        runs = []
        for _ in range(args.reps):
            work = Path(tempfile.mkdtemp(prefix="what-if-", dir=args.data_dir))
            try:
                done = subprocess.run([sys.executable, "-m", "bench.ingest_preprocess.what_if", "--child", configuration,
                                       "--csv", str(csv), "--work", str(work)], cwd=ROOT, capture_output=True, text=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("WHAT-IF ")]
            if done.returncode or not lines:
                raise SystemExit(f"{configuration} failed:\n{done.stderr[-3000:]}")
            runs.append(json.loads(lines[-1].removeprefix("WHAT-IF ")))
        block, _, fast = configuration.partition(":")
        median = {key: statistics.median(run[key] for run in runs)
                  for key in ("wall_s", "ingest_s", "preprocess_s", "peak_rss_kb")}
        print(f"| {block} | {'cast, regex on failure' if fast == 'fast' else 'regex (shipped)'} | "
              f"{median['wall_s']:.2f} | {median['ingest_s']:.2f} | {median['preprocess_s']:.2f} | "
              f"{median['peak_rss_kb'] / 1024:.0f} | {runs[0]['train_row_groups']} | {runs[0]['splits']} | "
              f"{runs[0]['bill_length_mean']:.12g} |", flush=True)


if __name__ == "__main__":
    main()
