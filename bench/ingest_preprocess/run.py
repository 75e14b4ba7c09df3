"""Benchmark: tunepipe's ingest + preprocess (Beam DirectRunner) against the same work in plain pyarrow.

For each table size N, both implementations run `--reps` times, alternating, each repetition in a
fresh Python process. The child imports everything first, then measures the wall time around the
work only (no interpreter start-up, no imports) and reports its peak RSS (VmHWM; see _peak_rss_kb).

- tunepipe: `components.ingest.step.run(...)` then `components.preprocess.step.run(...)` with the default
  config (DirectRunner, which tunepipe runs on Beam's in-process FnApiRunner).
- pyarrow: one process, no Beam. Read the whole CSV with `pyarrow.csv`, cast numbers to float64 as
  tunepipe's schema does, split 80/20 by the same stable hash (`pandas.util.hash_pandas_object` of the
  whole row, 10,000 buckets), write one snappy Parquet file per split, compute per-split, per-column
  statistics (count, missing, min/max/mean/std, value counts) and the train split's
  mean/variance/vocabulary, and write them as JSON.

The parent checks that both produced the same split sizes and the same train-split analyzers, then
prints a Markdown section and writes it to RESULTS.md beside this file (or to `--results`).

    uv run python -m bench.ingest_preprocess.run                  # 100k and 1M rows, 3 reps each
    uv run python -m bench.ingest_preprocess.run --quick          # 20k rows, 1 rep: a smoke run
    uv run python -m bench.ingest_preprocess.run --rows 300000 --reps 5 --profile
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
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

IMPLEMENTATIONS = ("pyarrow", "tunepipe")
LABEL = "species"
EXCLUDE = ("year",)
DEFAULT_ROWS = (100_000, 1_000_000)
QUICK_ROWS = (20_000,)
SEED = 0
# The split tunepipe uses by default (pipeline.config.SplitConfig) and its hash resolution (ingest._BUCKETS).
TRAIN, EVAL = 0.8, 0.2
BUCKETS = 10_000
GOAL_TIME_RATIO = 3.0
NOTES_MARKER = "<!-- notes: everything below this line is kept when run.py rewrites the file -->"


# --- the children --------------------------------------------------------------------------

def _peak_rss_kb() -> int:
    """This process's peak resident set, in KiB: `VmHWM` from /proc/self/status.

    Not `getrusage(RUSAGE_SELF).ru_maxrss` alone: on Linux that value survives fork + exec, so a child
    reports at least the RSS its parent had when it forked (a parent holding a 700 MB table makes every
    child look 700 MB big). VmHWM belongs to the process image and starts afresh at exec. ru_maxrss is
    the fallback where /proc is missing; the parent also stays small (no data, no Beam) so both agree.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child_tunepipe(csv: Path, work: Path, profile: Path | None) -> dict:
    import apache_beam.io.parquetio  # noqa: F401  (Beam imports these lazily inside the first run())
    import apache_beam.runners.portability.fn_api_runner  # noqa: F401

    import resource

    from components.examples import STATISTICS_FILE
    from components.ingest import step as ingest
    from components.preprocess import step as preprocess
    from pipeline import config

    cfg = config.from_dict({"data": {"source": str(csv), "label": LABEL, "features": {"exclude": list(EXCLUDE)}}})
    examples, transform = work / "examples", work / "transform"
    rss_after_imports = _peak_rss_kb()
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    started = time.perf_counter()
    ingested = ingest.run(cfg.data, cfg.beam, examples)
    ingested_at = time.perf_counter()
    # Each step's own peak: read the high-water mark, then reset it (outside the timed work).
    ingest_peak = _peak_rss_kb()
    ingest_ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    separate = _reset_peak_rss()
    resumed = time.perf_counter()
    analyzed = preprocess.run(examples, transform, cfg.preprocess, cfg.beam)
    finished = time.perf_counter()
    preprocess_peak = _peak_rss_kb() if separate else None
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    statistics_file = json.loads((examples / STATISTICS_FILE).read_text())
    return {
        "wall_s": (ingested_at - started) + (finished - resumed),
        "ingest_s": ingested_at - started,
        "preprocess_s": finished - resumed,
        "rss_after_imports_kb": rss_after_imports,
        "ingest_peak_kb": ingest_peak,
        "ingest_ru_maxrss_kb": ingest_ru_maxrss,
        "preprocess_peak_kb": preprocess_peak,
        "splits": ingested.counts["splits"],
        "rows_read": ingested.counts["rows_read"],
        "transform": analyzed.transform.to_json(),
        "statistics_columns": sorted(statistics_file["splits"]["train"]["columns"]),
        "parquet_mb": _size_mb(examples, "*.parquet"),
    }


def _numeric_summary(column) -> dict:
    import pyarrow.compute as pc

    present = column.drop_null()
    count = len(present)
    summary = {"kind": "numeric", "count": count, "missing": column.null_count}
    if count:
        extremes = pc.min_max(present)
        mean = pc.mean(present).as_py()
        variance = pc.variance(present, ddof=0).as_py()
        summary.update(min=extremes["min"].as_py(), max=extremes["max"].as_py(), mean=mean, variance=variance,
                       std=variance ** 0.5)
    else:
        summary.update(min=None, max=None, mean=None, variance=None, std=None)
    return summary


def _categorical_summary(column) -> dict:
    import pyarrow.compute as pc

    counted = pc.value_counts(column.drop_null())
    ordered = sorted(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()),
                     key=lambda item: (-item[1], str(item[0])))
    return {"kind": "categorical", "count": len(column) - column.null_count, "missing": column.null_count,
            "distinct": len(ordered), "values": [{"value": value, "count": count} for value, count in ordered]}


def _child_pyarrow(csv: Path, work: Path, profile: Path | None) -> dict:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from components.ingest.config import DEFAULT_NULL_VALUES

    rss_after_imports = _peak_rss_kb()
    started = time.perf_counter()
    table = pacsv.read_csv(csv, convert_options=pacsv.ConvertOptions(
        null_values=list(DEFAULT_NULL_VALUES), strings_can_be_null=True, quoted_strings_can_be_null=True))
    # tunepipe's schema: numbers as float64, the rest as text.
    kinds = {field.name: "numeric" if pa.types.is_integer(field.type) or pa.types.is_floating(field.type)
             else "categorical" for field in table.schema}
    table = pa.table({name: table.column(name).cast(pa.float64() if kind == "numeric" else pa.string())
                      for name, kind in kinds.items()})
    # The same stable split as ingest.split_assignment: a hash of the whole row, in buckets.
    hashes = pd.util.hash_pandas_object(table.to_pandas(), index=False).to_numpy()
    assignment = np.searchsorted(np.array([round(TRAIN * BUCKETS), BUCKETS]), hashes % BUCKETS, side="right")
    splits, split_statistics = {}, {}
    for index, split in enumerate(("train", "eval")):
        part = table.filter(pa.array(assignment == index))
        (work / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(part, work / split / "part-0.parquet", compression="snappy")
        splits[split] = part.num_rows
        split_statistics[split] = {name: _numeric_summary(part.column(name)) if kind == "numeric"
                                   else _categorical_summary(part.column(name)) for name, kind in kinds.items()}
        if split == "train":
            train = part
    (work / "statistics.json").write_text(json.dumps({"splits": splits, "statistics": split_statistics}))
    # The train split's analyzers, as preprocess computes them (features and label only).
    features = []
    for name, kind in kinds.items():
        if name == LABEL or name in EXCLUDE:
            continue
        if kind == "numeric":
            summary = split_statistics["train"][name]
            features.append({"name": name, "kind": kind, "mean": summary["mean"], "variance": summary["variance"]})
        else:
            vocabulary = [item["value"] for item in split_statistics["train"][name]["values"]]
            features.append({"name": name, "kind": kind, "vocabulary": vocabulary})
    label_vocabulary = sorted(pc.unique(train.column(LABEL).drop_null()).to_pylist())
    transform = {"label": {"name": LABEL, "vocabulary": label_vocabulary}, "features": features,
                 "train_rows": split_statistics["train"][LABEL]["count"]}
    (work / "transform.json").write_text(json.dumps(transform))
    finished = time.perf_counter()
    return {
        "wall_s": finished - started,
        "rss_after_imports_kb": rss_after_imports,
        "splits": splits,
        "rows_read": table.num_rows,
        "transform": transform,
        "statistics_columns": sorted(split_statistics["train"]),
        "parquet_mb": _size_mb(work, "*.parquet"),
    }


def _size_mb(root: Path, pattern: str) -> float:
    return sum(path.stat().st_size for path in root.rglob(pattern)) / 1e6


def child_main(implementation: str, csv: Path, work: Path, profile: Path | None) -> None:
    run = _child_tunepipe if implementation == "tunepipe" else _child_pyarrow
    result = run(csv, work, profile)
    import resource

    # The tunepipe child resets the high-water mark between its two steps: the peak is the larger one.
    peak = max(_peak_rss_kb(), result.get("ingest_peak_kb") or 0)
    result.update(implementation=implementation, peak_rss_kb=peak,
                  ru_maxrss_kb=max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                   result.get("ingest_ru_maxrss_kb") or 0),
                  children_peak_rss_kb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print("BENCH-RESULT " + json.dumps(result), flush=True)


# --- the parent ----------------------------------------------------------------------------

def run_child(implementation: str, csv: Path, work_root: Path, profile: Path | None = None,
              timeout: float = 3600) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{implementation}-", dir=work_root))
    command = [sys.executable, "-m", "bench.ingest_preprocess.run", "--child", implementation,
               "--csv", str(csv), "--work", str(work)]
    if profile is not None:
        command += ["--profile-out", str(profile)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH-RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{implementation} child failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("BENCH-RESULT "))


def dataset(rows: int, data_dir: Path) -> Path:
    """The generated CSV for `rows`, reused when already written with the same seed."""
    path = data_dir / f"penguins-{rows}-seed{SEED}.csv"
    if not path.exists():
        # In a child process, so that this parent never holds a table (see _peak_rss_kb).
        partial = path.with_suffix(".csv.partial")
        subprocess.run([sys.executable, str(HERE / "generate.py"), "--rows", str(rows), "--out", str(partial),
                        "--seed", str(SEED)], check=True, stdout=subprocess.DEVNULL)
        partial.rename(path)
    return path


def machine() -> dict:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "unknown"

    import apache_beam
    import numpy
    import pandas
    import pyarrow

    memory = first("/proc/meminfo", "MemTotal")
    try:
        memory = f"{int(memory.split()[0]) / 1024 ** 2:.1f} GiB"
    except ValueError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "components", "pipeline"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {
        "dirty": dirty,
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count()),
        "memory": memory,
        "cpu": first("/proc/cpuinfo", "model name"),
        "os": platform.platform(),
        "python": platform.python_version(),
        "beam": apache_beam.__version__,
        "pyarrow": pyarrow.__version__,
        "pandas": pandas.__version__,
        "numpy": numpy.__version__,
        "commit": commit,
    }


def compare(tunepipe: dict, baseline: dict) -> list[str]:
    """Differences between the two implementations' outputs (empty when they agree)."""
    problems = []
    if tunepipe["splits"] != baseline["splits"]:
        problems.append(f"split sizes differ: tunepipe {tunepipe['splits']}, pyarrow {baseline['splits']}")
    ours, theirs = tunepipe["transform"], baseline["transform"]
    if ours["train_rows"] != theirs["train_rows"]:
        problems.append(f"train rows differ: {ours['train_rows']} vs {theirs['train_rows']}")
    if ours["label"]["vocabulary"] != theirs["label"]["vocabulary"]:
        problems.append("label vocabularies differ")
    if tunepipe["statistics_columns"] != baseline["statistics_columns"]:
        problems.append("statistics cover different columns")
    expected = {feature["name"]: feature for feature in theirs["features"]}
    for feature in ours["features"]:
        other = expected.pop(feature["name"], None)
        if other is None:
            problems.append(f"{feature['name']}: only tunepipe has it")
        elif feature["kind"] == "numeric":
            for key in ("mean", "variance"):
                if abs(feature[key] - other[key]) > 1e-9 * max(1.0, abs(other[key])):
                    problems.append(f"{feature['name']}: {key} {feature[key]!r} vs {other[key]!r}")
        elif list(feature["vocabulary"]) != list(other["vocabulary"]):
            problems.append(f"{feature['name']}: vocabularies differ")
    problems += [f"{name}: only pyarrow has it" for name in expected]
    return problems


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _mb(kb: float) -> float:
    return kb / 1024


def _rows(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows // 1000}k" if rows % 1000 == 0 else str(rows)


def _rate(rows_per_s: float) -> str:
    if rows_per_s >= 1e6:
        return f"{rows_per_s / 1e6:.2f}M"
    return f"{rows_per_s / 1e3:.0f}k" if rows_per_s >= 1e4 else f"{rows_per_s:,.0f}"


def report(results: dict[int, dict[str, list[dict]]], info: dict, reps: int, command: str,
           checks: dict[int, list[str]], loads: tuple[str, str], profile_text: str | None) -> str:
    sizes = sorted(results)
    every_run = [run for by_size in results.values() for runs in by_size.values() for run in runs]
    lines = [
        "## Ingest + preprocess: tunepipe (Beam DirectRunner) vs plain pyarrow",
        "",
        f"Generated by `{command}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"(commit {info['commit']}"
        + (", with uncommitted changes under components/ or pipeline/)." if info["dirty"] else ")."),
        "",
        "**What was run.** A penguins-like CSV (`bench/ingest_preprocess/generate.py`, seed 0; 8 columns, "
        "~0.6% of rows without measurements, ~3.6% without a sex) of each size below. Per size, "
        f"{reps} repetition(s) of each implementation, alternating pyarrow/tunepipe, each in a fresh Python "
        "process; the wall time is measured inside that process around the work only (imports and "
        "interpreter start-up excluded). Peak RSS is the process's `VmHWM` (/proc/self/status), its own "
        "high-water mark; `getrusage(RUSAGE_SELF).ru_maxrss` would do only if the parent stayed small, "
        "since Linux carries it over from the parent across fork + exec (the parent here holds no data, "
        "and the largest difference between the two is given below the table).",
        "",
        "- **tunepipe**: `components.ingest.run` + `components.preprocess.run` with the default config "
        "(`pipeline.config.from_dict({'data': {'source': csv, 'label': 'species', 'features': "
        "{'exclude': ['year']}}})`: Beam DirectRunner, i.e. the in-process FnApiRunner, 80/20 split). "
        "Includes everything those calls do: schema inference, Beam pipeline construction, CSV blocks "
        "validated and split, Parquet shards, statistics.json, the artifact digests and manifests, "
        "then the second pipeline reading the train shards back for the analyzers.",
        "- **pyarrow**: one process, no Beam: `pyarrow.csv.read_csv` of the whole file, numbers cast "
        "to float64, the same row hash split (`pandas.util.hash_pandas_object`, 10,000 buckets), one "
        "snappy Parquet file per split, per-split per-column statistics (count, missing, min/max/mean/"
        "std, value counts) and the train split's mean/variance/vocabulary, written as JSON. It does "
        "not validate rows (no rejects), digest its outputs or re-read the train split from Parquet.",
        "",
        f"**Machine.** {info['nproc']} CPUs (`nproc`), {info['memory']} RAM, CPU `{info['cpu']}`; "
        f"{info['os']}; Python {info['python']}, apache-beam {info['beam']}, pyarrow {info['pyarrow']}, "
        f"pandas {info['pandas']}, numpy {info['numpy']}. Load average (1/5/15 min) before: {loads[0]}; "
        f"after: {loads[1]} (the machine is shared, so times are noisy; medians are reported).",
        "",
        f"| rows | implementation | wall s (median of {reps}) | min–max s | rows/s | peak RSS MB | "
        "RSS after imports MB | peak − imports MB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rows in sizes:
        for implementation in IMPLEMENTATIONS:
            runs = results[rows][implementation]
            wall = _median(runs, "wall_s")
            peak = _mb(_median(runs, "peak_rss_kb"))
            imports = _mb(_median(runs, "rss_after_imports_kb"))
            lines.append(f"| {rows:,} | {implementation} | {wall:.2f} | {min(r['wall_s'] for r in runs):.2f}–"
                         f"{max(r['wall_s'] for r in runs):.2f} | {_rate(rows / wall)} | {peak:.0f} | {imports:.0f} | "
                         f"{peak - imports:.0f} |")
    lines += [
        "",
        "MB = MiB (KiB / 1024). \"RSS after imports\" is the peak before the timed work started; "
        "\"peak − imports\" is what the work itself added. Largest |VmHWM − ru_maxrss| over all runs: "
        f"{_mb(max(abs(run['peak_rss_kb'] - run['ru_maxrss_kb']) for run in every_run)):.0f} MB.",
        "",
        "| rows | time tunepipe / pyarrow | per-rep time ratios, min–max | peak RSS tunepipe / pyarrow | "
        "tunepipe ingest s | tunepipe preprocess s | within 3x? | outputs agree? |",
        "|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for rows in sizes:
        ours, theirs = results[rows]["tunepipe"], results[rows]["pyarrow"]
        time_ratio = _median(ours, "wall_s") / _median(theirs, "wall_s")
        memory_ratio = _median(ours, "peak_rss_kb") / _median(theirs, "peak_rss_kb")
        agree = "yes" if not checks[rows] else "NO: " + "; ".join(checks[rows])
        paired = [our_run["wall_s"] / their_run["wall_s"] for our_run, their_run in zip(ours, theirs)]
        lines.append(f"| {rows:,} | {time_ratio:.2f}x | {min(paired):.2f}–{max(paired):.2f}x | {memory_ratio:.2f}x | "
                     f"{_median(ours, 'ingest_s'):.2f} | "
                     f"{_median(ours, 'preprocess_s'):.2f} | {'yes' if time_ratio <= GOAL_TIME_RATIO else 'no'} | "
                     f"{agree} |")
    lines += ["", "Ratios are of the medians above, both measured in the same run; the per-rep ratios pair "
              "each tunepipe run with the pyarrow run just before it.", ""]
    if len(sizes) >= 2:
        growth = []
        for implementation in IMPLEMENTATIONS:
            peaks = [_mb(_median(results[rows][implementation], "peak_rss_kb")) for rows in sizes]
            work = [peak - _mb(_median(results[rows][implementation], "rss_after_imports_kb"))
                    for rows, peak in zip(sizes, peaks)]
            growth.append(f"{implementation} peak RSS " + " → ".join(f"{peak:.0f}" for peak in peaks)
                          + " MB (the work's own share " + " → ".join(f"{share:.0f}" for share in work) + " MB)")
        lines += [f"**Peak memory as the table grows ({' → '.join(_rows(rows) for rows in sizes)} rows):** "
                  + "; ".join(growth) + ".", ""]
    verdicts = []
    for rows in sizes:
        ratio = _median(results[rows]["tunepipe"], "wall_s") / _median(results[rows]["pyarrow"], "wall_s")
        verdicts.append(f"{_rows(rows)}: {ratio:.2f}x ({'met' if ratio <= GOAL_TIME_RATIO else 'missed'})")
    lines += [f"**Goal: within {GOAL_TIME_RATIO:g}x of pyarrow's time.** " + "; ".join(verdicts) + ".", ""]
    if profile_text:
        lines += [profile_text, ""]
    return "\n".join(lines)


def profile_section(rows: int, csv: Path, work_root: Path, top: int) -> str:
    """One extra tunepipe run under cProfile: where the time goes, by function."""
    import io
    import pstats

    profile = work_root / f"tunepipe-{rows}.prof"
    result = run_child("tunepipe", csv, work_root, profile)
    text = io.StringIO()
    stats = pstats.Stats(str(profile), stream=text)
    stats.sort_stats("tottime").print_stats(top)
    own = text.getvalue()
    text = io.StringIO()
    stats = pstats.Stats(str(profile), stream=text)
    stats.sort_stats("cumulative").print_stats(top)
    cumulative = text.getvalue()

    def table(raw: str) -> str:
        # From the start of the header line, so the header stays aligned with its columns.
        body = raw[raw.rfind("\n", 0, raw.find("ncalls")) + 1:] if "ncalls" in raw else raw
        import sysconfig

        prefixes = [sysconfig.get_paths()["purelib"] + "/", sysconfig.get_paths()["stdlib"] + "/", str(ROOT) + "/"]
        cleaned = []
        for line in body.splitlines():
            for prefix in prefixes:
                line = line.replace(prefix, "")
            if line.strip():
                cleaned.append(line)
        return "\n".join(cleaned)

    return "\n".join([
        f"### Where tunepipe's time goes ({_rows(rows)} rows, one run under cProfile)",
        "",
        f"Wall time under the profiler {result['wall_s']:.2f} s (ingest {result['ingest_s']:.2f} s, "
        f"preprocess {result['preprocess_s']:.2f} s); the profiler adds overhead, so read the shares, not "
        f"the seconds. Profile file: `{profile}`.",
        "",
        f"Top {top} functions by own time:",
        "", "```", table(own), "```", "",
        f"Top {top} by cumulative time:",
        "", "```", table(cumulative), "```",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", help=f"table sizes (default {' '.join(map(str, DEFAULT_ROWS))})")
    parser.add_argument("--reps", type=int, help="repetitions per implementation and size (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k rows, 1 repetition, RESULTS.md untouched")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "tunepipe-bench" / "ingest_preprocess",
                        help="where generated CSVs are kept and reused")
    parser.add_argument("--results", type=Path, help="Markdown file to write (default RESULTS.md beside this script; "
                                                     "not written with --quick unless given)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one tunepipe run (cProfile) and add its top functions")
    parser.add_argument("--profile-rows", type=int, help="the size to profile (default: the largest of --rows)")
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per profile table")
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--csv", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child_main(args.child, args.csv, args.work, args.profile_out)
        return

    sizes = tuple(args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS))
    reps = args.reps or (1 if args.quick else 3)
    results_path = args.results or (None if args.quick else HERE / "RESULTS.md")
    command = "uv run python -m bench.ingest_preprocess.run " + " ".join(argv if argv is not None else sys.argv[1:])
    args.data_dir.mkdir(parents=True, exist_ok=True)
    work_root = Path(tempfile.mkdtemp(prefix="run-", dir=args.data_dir))
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])

    results: dict[int, dict[str, list[dict]]] = {}
    checks: dict[int, list[str]] = {}
    for rows in sizes:
        csv = dataset(rows, args.data_dir)
        print(f"# {rows:,} rows: {csv} ({csv.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
        results[rows] = {implementation: [] for implementation in IMPLEMENTATIONS}
        for rep in range(reps):
            for implementation in IMPLEMENTATIONS:
                result = run_child(implementation, csv, work_root)
                results[rows][implementation].append(result)
                print(f"  rep {rep + 1}/{reps} {implementation:8s} {result['wall_s']:7.2f} s  "
                      f"peak RSS {_mb(result['peak_rss_kb']):6.0f} MB  (after imports "
                      f"{_mb(result['rss_after_imports_kb']):.0f} MB)", file=sys.stderr)
        checks[rows] = compare(results[rows]["tunepipe"][0], results[rows]["pyarrow"][0])
        for problem in checks[rows]:
            print(f"  MISMATCH: {problem}", file=sys.stderr)
    profile_text = None
    if args.profile:
        profiled = args.profile_rows or max(sizes)
        print(f"# profiling tunepipe at {profiled:,} rows", file=sys.stderr)
        profile_text = profile_section(profiled, dataset(profiled, args.data_dir), args.data_dir, args.profile_top)
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    shutil.rmtree(work_root, ignore_errors=True)

    markdown = report(results, machine(), reps, command.strip(), checks, (load_before, load_after), profile_text)
    print(markdown)
    if results_path is not None:
        # Hand-written notes below the marker survive a regeneration.
        kept = ""
        if results_path.exists() and NOTES_MARKER in results_path.read_text():
            kept = "\n" + NOTES_MARKER + results_path.read_text().split(NOTES_MARKER, 1)[1]
        results_path.write_text("# Benchmark results: ingest + preprocess\n\n" + markdown + "\n" + kept)
        print(f"\n(written to {results_path})", file=sys.stderr)


if __name__ == "__main__":
    main()
