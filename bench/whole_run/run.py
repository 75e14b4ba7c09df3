"""Benchmark: the whole default `tunepipe run --config data/penguins/pipeline.yaml` (resolve-source,
ingest, preprocess, 10 Hyperband trials, train, resolve-baseline, TFMA evaluate, push) against a
one-script baseline that does the same work in one Python process, so that the difference is the
orchestration's cost: a process and its imports per step, kfp.local's executor and cache, MLflow.

The driver alternates the two for `--pairs N` pairs (default 2): tunepipe, its rerun, the baseline.
Each repetition has a fresh output directory (under one temporary directory, removed at the end)
and a fresh process; the wall time is the driver's, from spawning the process to its exit.

- tunepipe: `tunepipe run --config FILE --output-root DIR`, the console script of this environment.
  Each step's wall time is read from what it printed (`✓ ingest ran in 25.7 s`), each step's start-up
  and work from the timing line every step writes to the run's log (`<DIR>/logs/run-*.log`).
- rerun: right after it, the same command on the same output root, nothing changed: the steps the
  cache answers, those that run again (never-cached ones, and those whose inputs changed), and its
  wall time. If the code in the tree changed in between (other work in the same checkout), the cache
  cannot answer and the report says so.
- baseline: `python -m bench.whole_run.baseline --config FILE --output-root DIR`: the same components
  with the same config sections, called in order in one process, with no kfp, no MLflow and no
  subprocess per step (its docstring lists the calls).

After each run, a separate untimed process (`bench/whole_run/verify.py`) reads its artifacts back:
split sizes, trials, TFMA's metrics and blessing, the served versions, and that version 1 loads and
scores the held-out split.

    uv run python -m bench.whole_run.run             # 2 pairs (~20 min here); rewrites bench/whole_run/RESULTS.md
    uv run python -m bench.whole_run.run --pairs 5
    uv run python -m bench.whole_run.run --quick     # 1 pair; prints the Markdown, leaves RESULTS.md alone
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # when run as a script by path
    sys.path.insert(0, str(ROOT))

from bench.whole_run import baseline, parse, report  # noqa: E402

DEFAULT_CONFIG = ROOT / "data" / "penguins" / "pipeline.yaml"
TIMEOUT_S = 3600


class RunFailed(Exception):
    pass


def _environment() -> dict[str, str]:
    """The children's environment: each run's tracking store is its own output root's (no
    MLFLOW_TRACKING_URI), and rich's summary table is wide enough to be read back one row a line."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    return {**env, "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"}


def _tunepipe_command() -> list[str]:
    script = Path(sys.executable).with_name("tunepipe")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline"]


def _spawn(command: list[str], what: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_environment(),
                               timeout=TIMEOUT_S)
    seconds = time.monotonic() - started
    if completed.returncode:
        sys.stderr.write(completed.stderr[-4000:] or completed.stdout[-4000:])
        raise RunFailed(f"{what} failed (exit {completed.returncode}): {' '.join(command)}")
    return seconds, completed


def _result_line(stdout: str, what: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith(baseline.RESULT)]
    if not lines:
        raise RunFailed(f"{what} printed no {baseline.RESULT.strip()} line")
    return json.loads(lines[-1].removeprefix(baseline.RESULT))


def _verify(examples: str, tuning: str, evaluation: str, serving_dir: str, model_name: str, what: str) -> dict:
    _, completed = _spawn([sys.executable, "-m", "bench.whole_run.verify", "--examples", examples, "--tuning", tuning,
                           "--evaluation", evaluation, "--serving-dir", serving_dir, "--model-name", model_name],
                          f"checking {what}")
    return _result_line(completed.stdout, f"checking {what}")


def _serving(config_file: Path, output_root: Path) -> tuple[str, str]:
    from pipeline import config

    loaded = config.load(config_file, {"output_root": str(output_root)})
    return str(Path(loaded.resolved_serving_dir).resolve()), loaded.resolved_model_name


def _code_version() -> str:
    from pipeline import version

    return version.code_version()


def run_tunepipe(config_file: Path, output_root: Path, what: str) -> dict:
    """One `tunepipe run` and what it printed, with each step's start-up/work from its log."""
    logs_before = set((output_root / "logs").glob("run-*.log"))
    seconds, completed = _spawn([*_tunepipe_command(), "run", "--config", str(config_file), "--output-root",
                                 str(output_root)], what)
    printed = parse.terminal(completed.stderr)
    log_file = printed.outputs.get("log")
    if not log_file:  # not in the summary: the log this run added
        added = sorted(set((output_root / "logs").glob("run-*.log")) - logs_before)
        log_file = str(added[-1]) if added else ""
    timed_steps = parse.add_timings(printed, log_file) if log_file else 0
    return {"seconds": seconds, "report": printed, "log_file": log_file, "timed_steps": timed_steps}


def measure_pair(pair: int, pairs: int, config_file: Path, work: Path) -> dict:
    """tunepipe, its unchanged rerun, then the baseline, each checked afterwards."""
    label = f"pair {pair}/{pairs}"
    tunepipe_root, baseline_root = work / f"pair-{pair}-tunepipe", work / f"pair-{pair}-baseline"
    measured: dict = {}

    print(f"{label}: tunepipe run …", flush=True)
    code_before = _code_version()
    measured["tunepipe"] = run_tunepipe(config_file, tunepipe_root, f"{label}: tunepipe run")
    first = measured["tunepipe"]
    print(f"{label}: tunepipe {first['seconds']:.1f} s (it printed {first['report'].printed_seconds} s; "
          f"{first['timed_steps']} step timing lines in its log)", flush=True)

    print(f"{label}: tunepipe rerun, nothing changed …", flush=True)
    code_between = _code_version()
    measured["rerun"] = run_tunepipe(config_file, tunepipe_root, f"{label}: tunepipe rerun")
    measured["rerun"]["code_changed"] = code_between != code_before
    states = ", ".join(f"{name} {step.state}" for name, step in measured["rerun"]["report"].steps.items())
    print(f"{label}: rerun {measured['rerun']['seconds']:.1f} s: {states}", flush=True)

    serving_dir, model_name = _serving(config_file, tunepipe_root)
    outputs = first["report"].outputs
    if all(name in outputs for name in ("examples", "tuning", "evaluation")):
        first["facts"] = _verify(outputs["examples"], outputs["tuning"], outputs["evaluation"], serving_dir,
                                 model_name, f"{label}: the tunepipe run's artifacts")
    else:
        first["facts"] = None
        print(f"{label}: the tunepipe run printed no artifact paths; its artifacts are not checked", flush=True)

    print(f"{label}: baseline …", flush=True)
    seconds, completed = _spawn([sys.executable, "-m", "bench.whole_run.baseline", "--config", str(config_file),
                                 "--output-root", str(baseline_root)], f"{label}: baseline")
    result = _result_line(completed.stdout, f"{label}: baseline")
    paths = result["paths"]
    measured["baseline"] = {"seconds": seconds, "result": result,
                            "facts": _verify(paths["examples"], paths["tuning"], paths["evaluation"],
                                             result["serving_dir"], result["model_name"],
                                             f"{label}: the baseline's artifacts")}
    ratio = first["seconds"] / seconds
    print(f"{label}: baseline {seconds:.1f} s; tunepipe / baseline {ratio:.2f}", flush=True)
    return measured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=2, help="tunepipe/baseline pairs (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 pair; prints the Markdown and leaves RESULTS.md alone")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="the pipeline config (default: the penguins')")
    parser.add_argument("--keep", action="store_true", help="keep the output roots (default: removed at the end)")
    parser.add_argument("--results", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs = 1
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    config_file = Path(args.config).resolve()

    work = Path(tempfile.mkdtemp(prefix="bench-whole-run-"))
    print(f"output roots under {work}", flush=True)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    failed = False
    try:
        pairs = [measure_pair(pair, args.pairs, config_file, work) for pair in range(1, args.pairs + 1)]
    except (RunFailed, subprocess.TimeoutExpired) as error:
        failed = True
        raise SystemExit(f"whole_run: {error}; the output roots are kept in {work}") from None
    finally:
        if not failed and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()

    command = "python -m bench.whole_run.run" + (" --quick" if args.quick else f" --pairs {args.pairs}")
    if config_file != DEFAULT_CONFIG:
        command += f" --config {args.config}"
    text = report.render(pairs, command=command, started=started, config_file=config_file, root=ROOT,
                         load_before=load_before, load_after=load_after, what_ran=__doc__, quick=args.quick)
    print(text)
    if args.quick:
        print("(a smoke run: RESULTS.md left alone)")
        return
    report.write(Path(args.results), text)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
