"""`tunepipe run`: the pipeline from `pipeline.dag`, executed on this machine by kfp.local.

kfp.local's SubprocessRunner (in this Python environment, `use_venv=False`) runs each task as a
subprocess, with kfp.local's caching on unless `--no-cache`. The tasks' own output (Beam, MLflow,
TensorFlow) goes to a log file; the terminal shows which step is running, the steps' progress lines
(`pipeline.progress`: each trial, epoch, rows evaluated), whether a step ran or came from the cache,
and a summary per step at the end.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from components.errors import TunepipeError
from components.tune import workers as tune_workers
from pipeline import dag, launcher, progress, run_lock, step_server, steps, tags, tracking
from pipeline.config import PipelineConfig

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"^Executing task '?([\w-]+)'?")
_CACHED = re.compile(r"^Task '?([\w-]+)'? cache hit")
_FINISHED = re.compile(r"^Task '?([\w-]+)'? finished with status (\w+)")


@dataclass
class StepStatus:
    name: str
    state: str = "pending"  # pending, running, ran, cached, failed
    started: float | None = None
    seconds: float = 0.0
    running: int = 0  # tasks of the step running now (a ParallelFor's iterations are several)


@dataclass
class RunSummary:
    steps: dict[str, StepStatus]
    outputs: dict[str, Any] = field(default_factory=dict)
    log_file: Path | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    seconds: float = 0.0
    parallel_trials: int = 1


class _Progress(logging.Filter):
    """Reads kfp.local's log records (task started, cache hit, finished) to follow the run."""

    def __init__(self, steps: dict[str, StepStatus], console: Console):
        super().__init__()
        self._steps = steps
        self._console = console

    def _step(self, task: str) -> StepStatus | None:
        # kfp.local names tasks after their component, e.g. 'ingest' or 'ingest-2'.
        return self._steps.get(task) or self._steps.get(task.rsplit("-", 1)[0])

    def filter(self, record: logging.LogRecord) -> bool:
        message = _ANSI.sub("", record.getMessage())
        if match := _STARTED.match(message):
            if step := self._step(match.group(1)):
                step.state, step.running = "running", step.running + 1
                step.started = step.started or time.monotonic()
                self._console.print(f"[bold]→ {step.name}[/bold] running…")
        elif match := _CACHED.match(message):
            if step := self._step(match.group(1)):
                step.state = "cached"
                self._console.print(f"[cyan]↺ {step.name}[/cyan] reused from cache")
        elif match := _FINISHED.match(message):
            if step := self._step(match.group(1)):
                step.seconds = time.monotonic() - (step.started or time.monotonic())
                step.running = max(0, step.running - 1)
                if match.group(2) != "SUCCESS":
                    step.state = "failed"
                elif step.state != "failed" and not step.running:
                    step.state = "ran"
                mark, state = ("[red]✗", "failed") if match.group(2) != "SUCCESS" else ("[green]✓", "ran")
                more = f" ({step.running} of its tasks still running)" if step.running else ""
                self._console.print(f"{mark} {step.name}[/] {state} in {step.seconds:.1f} s{more}")
        return True


class Interrupted(TunepipeError):
    """The run was cut short by a signal; `exit_code` as a shell has it (130 for SIGINT)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _Interruption:
    """Ctrl-C (SIGINT) or SIGTERM during a run: the steps running are told (they mark their
    tracking runs and end), the steps not started yet do nothing, and the run ends with one line."""

    def __init__(self, server: step_server.Server, statuses: dict[str, StepStatus]):
        self._server, self._statuses = server, statuses
        self.signal: str | None = None
        self._running: list[str] = []

    @contextlib.contextmanager
    def handled(self):
        saved = {number: signal.signal(number, self._received) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in saved.items():
                signal.signal(number, handler)
            os.environ.pop(launcher.INTERRUPTED_ENV, None)

    def _received(self, number: int, _frame: Any) -> None:
        if self.signal is None:
            self.signal = signal.Signals(number).name
            self._running = [status.name for status in self._statuses.values() if status.state == "running"]
        os.environ[launcher.INTERRUPTED_ENV] = self.signal
        self._server.interrupt()

    def check(self) -> None:
        if self.signal is None:
            return
        what = f"while {' and '.join(self._running)} {'were' if len(self._running) > 1 else 'was'} running" \
            if self._running else "between steps"
        raise Interrupted(f"interrupted ({self.signal}) {what}; the finished steps are kept, and the next "
                          "tunepipe run resumes from them (a search from its finished trials)",
                          128 + signal.Signals[self.signal].value)


def _error_from_steps(error_file: Path, log_file: Path) -> TunepipeError:
    lines = []
    with contextlib.suppress(OSError):
        for line in error_file.read_text().splitlines():
            with contextlib.suppress(ValueError):  # blank, or cut short by a full disk
                lines.append(json.loads(line))
    # The first step that failed (those kfp.local runs after it may fail of the same cause), as the
    # run's output showed its line: a full disk may have kept it from writing the file.
    first = next(iter(progress.step_errors or lines), None)
    if first:
        message = f"step {first['step']} failed: {first['message']}"
        changed = next((line["changed"] for line in lines if line.get("changed")), None)
        return _ChangedInput(message, changed) if changed else TunepipeError(message)
    return TunepipeError(f"the pipeline failed; the steps' output is in {log_file}")


def run(config: PipelineConfig, code_version: str, use_cache: bool = True,
        force_push: bool = False, console: Console | None = None, reuse_hyperparameters: bool = False,
        warm_start: bool = False) -> RunSummary:
    """Run the whole pipeline for `config` with kfp.local and return what happened (the last two:
    see `dag.pipeline_arguments`)."""
    console = console or Console(stderr=True)
    output_root = Path(config.output_root).resolve()
    uri = tracking.tracking_uri(str(output_root), config.tracking_uri)
    tracking.check_server(uri)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = output_root / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"run-{stamp}.log"
    error_file = log_dir / f"run-{stamp}.errors.jsonl"
    # The workers of a parallel search share this machine's CPUs (components.tune.workers.share_machine).
    shared = {tune_workers.SHARED_MACHINE_ENV: str(_workers_at_once(config.tuner.workers))} \
        if config.tuner.workers > 1 else {}
    # One run at a time on an output root (a second one refuses); the steps' warm server starts
    # first: it imports while the run gets ready.
    with run_lock.held(output_root), step_server.started(log_dir / f"run-{stamp}.server.log") as server, \
            tracking.environment({step_server.ENV: server.address, **shared}):
        if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).exists():
            server.open_store(uri)  # a store that exists can be opened now, before the first step asks
        try:
            return _run(config, code_version, use_cache, force_push, console, reuse_hyperparameters,
                        warm_start, output_root, stamp, log_file, error_file, server)
        except _ChangedInput as changed:
            # A cached artifact whose files were changed: its producer runs again, once.
            dropped = _drop_cache_entries(output_root / "cache", changed.uri)
            console.print(f"[yellow]↻ {changed.uri} was changed after it was written: "
                          f"{dropped} cache entries dropped, the steps that made it run again[/yellow]")
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-again"
            log_file, error_file = log_dir / f"run-{stamp}.log", log_dir / f"run-{stamp}.errors.jsonl"
            return _run(config, code_version, use_cache, force_push, console, reuse_hyperparameters,
                        warm_start, output_root, stamp, log_file, error_file, server)


def _workers_at_once(workers: int) -> int:
    """How many of a ParallelFor's `workers` kfp.local runs at once: 2 at most in kfp 2.17 (its
    `ParallelExecutor` caps every loop); all of them if that cap cannot be read."""
    try:
        from kfp.local.orchestrator.enhanced_dag_orchestrator import ParallelExecutor

        return max(1, min(workers, int(ParallelExecutor().max_workers)))
    except (ImportError, AttributeError, TypeError, ValueError):
        logging.getLogger("tunepipe").debug("kfp.local's cap on a loop's tasks at once not found; taking all %d",
                                            workers)
        return workers


class _ChangedInput(TunepipeError):
    def __init__(self, message: str, uri: str):
        super().__init__(message)
        self.uri = uri


def _drop_cache_entries(cache_root: Path, uri: str) -> int:
    """Remove kfp.local's cache entries that hand out the artifact at `uri`."""
    dropped = 0
    for entry in cache_root.glob("*.json"):
        with contextlib.suppress(OSError):
            if uri in entry.read_text(encoding="utf-8"):
                entry.unlink()
                dropped += 1
    return dropped


def _run(config: PipelineConfig, code_version: str, use_cache: bool, force_push: bool, console: Console,
         reuse_hyperparameters: bool, warm_start: bool, output_root: Path, stamp: str, log_file: Path,
         error_file: Path, server: step_server.Server) -> RunSummary:
    from kfp import local

    statuses = {step.name: StepStatus(step.name) for step in steps.active(config.tuner.workers)}
    summary = RunSummary(statuses, log_file=log_file, parallel_trials=config.tuner.workers)

    arguments = dag.pipeline_arguments(config, code_version, force_push=force_push,
                                       reuse_hyperparameters=reuse_hyperparameters, warm_start=warm_start)
    pipeline_function = dag.create_pipeline(config, code_version=code_version)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output_root / "pipelines"),
               enable_caching=use_cache, cache_root=str(output_root / "cache"), raise_on_error=True)
    # MLflow announces its database migrations on its own handler, set up when it is imported; the
    # summary says where runs go.
    import mlflow  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    follow = _Progress(statuses, console)
    root_logger = logging.getLogger()
    # kfp.local reports cache hits at INFO on the root logger outside its own logging context;
    # for the run, the root logger writes to the log file only.
    saved_level, saved_handlers = root_logger.level, root_logger.handlers[:]
    root_logger.setLevel(logging.INFO)
    started = time.monotonic()
    params = {"source": config.data.source, "label": config.data.label,
              "code_version": code_version, "cache": use_cache, "force_push": force_push,
              "reuse_hyperparameters": reuse_hyperparameters, "warm_start": warm_start}
    with tracking.pipeline_run(config.name, str(output_root), config.tracking_uri, params,
                              run_name=f"{config.name}-{stamp}") as parent:
        summary.mlflow_run_id = parent.info.run_id
        summary.tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
        server.open_store(summary.tracking_uri)
        os.environ[launcher.ERROR_FILE_ENV] = str(error_file)
        root_logger.addFilter(follow)
        interruption = _Interruption(server, statuses)
        try:
            with open(log_file, "w", encoding="utf-8") as log, \
                    contextlib.redirect_stdout(progress.Tee(log, lambda line: console.print(f"  {line}",
                                                                                            markup=False,
                                                                                            highlight=False))), \
                    warnings.catch_warnings():
                root_logger.handlers[:] = [logging.StreamHandler(log)]
                # The project image's name has no 'python' in it; kfp.local warns about that.
                warnings.filterwarnings("ignore", message=".*non-Python base image.*")
                with interruption.handled():
                    task = pipeline_function(**arguments)
            interruption.check()
        except RuntimeError as error:
            interruption.check()
            if "finished with status FAILURE" not in _ANSI.sub("", str(error)):
                raise
            raise _error_from_steps(error_file, log_file) from None
        finally:
            root_logger.removeFilter(follow)
            root_logger.setLevel(saved_level)
            root_logger.handlers[:] = saved_handlers
            os.environ.pop(launcher.ERROR_FILE_ENV, None)
            summary.seconds = time.monotonic() - started
        summary.outputs = dict(task.outputs)
        _record_cached_steps(summary)
    return summary


def _record_cached_steps(summary: RunSummary) -> None:
    """kfp's cache answered these steps, so nothing recorded them: record what they reused."""
    for status in summary.steps.values():
        step = steps.BY_NAME[status.name]
        if status.state != "cached" or not step.outputs or step.outputs[0] not in summary.outputs:
            continue
        name = step.outputs[0]
        if steps.producer(name, summary.parallel_trials) is not step:
            continue  # a tune worker: the pipeline's tuning output is the merge's
        artifact = summary.outputs[name]
        tracking.record_cached_step(step.recorded_name, {name: (artifact.uri, artifact.metadata.get("digest", ""))},
                                    dict(artifact.metadata))


def _step_facts(summary: RunSummary) -> dict[str, steps.Facts]:
    """What each step of this run recorded, by step: for a step the cache answered, the run that
    did its work (the queries of `tunepipe runs` see the same)."""
    from pipeline.queries.records import inputs_of
    from pipeline.queries.store import Store

    store = Store(summary.tracking_uri)
    with store.errors():
        pipeline = store.run(summary.mlflow_run_id)
        runs = {name: store.effective(record, (pipeline.info.run_id,)) or record
                for name, record in store.steps(pipeline).items()}
        found = {name: steps.Facts.of_run(run) for name, run in runs.items()}
        # The workers of a parallel search: one line for all of them, the runs that produced the
        # results the merge took (the cache may have answered some or all of them); before the merge
        # recorded its inputs, the workers that ran in this run.
        merge = runs.get(steps.BY_NAME["tune-merge"].recorded_name) if summary.parallel_trials > 1 else None
        collected = inputs_of(merge).items() if merge is not None else ()
        produced = [store.input_producer(merge, name, digest) for name, (_, digest) in collected
                    if steps.collected(name) and digest]
        workers = [run for run in produced if run is not None] or [
            run for run in store.children(pipeline) if run.data.tags.get(tags.STEP) == "tune-worker"]
        if workers:
            found["tune-worker"] = steps.Facts.of_runs(workers)
        return found


def print_summary(summary: RunSummary, console: Console) -> None:
    table = Table(title=f"tunepipe run: {summary.seconds:.1f} s", title_justify="left")
    for column in ("step", "status", "time", "result"):
        table.add_column(column)
    facts = _step_facts(summary) if summary.mlflow_run_id else {}
    for status in summary.steps.values():
        step = steps.BY_NAME[status.name]
        state = status.state
        result = step.summary(facts[step.recorded_name]) if step.recorded_name in facts else ""
        if step.name == "push" and step.name not in facts:
            state = "skipped"
            evaluation = summary.outputs.get("evaluation")
            reason = str(evaluation.metadata.get("reason", "")) if evaluation else ""
            result = reason if evaluation and evaluation.metadata.get("unchanged") else "not blessed: " + reason
            result = result if evaluation else ""
        seconds = f"{status.seconds:.1f} s" if status.state == "ran" else "-"
        table.add_row(step.name, state, seconds, result)
    console.print(table)
    for name, artifact in summary.outputs.items():
        console.print(f"{name:>10}: {artifact.path}")
    console.print(f"{'lineage':>10}: MLflow run {summary.mlflow_run_id} in {summary.tracking_uri}")
    console.print(f"{'log':>10}: {summary.log_file}")
