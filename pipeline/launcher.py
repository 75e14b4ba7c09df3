"""What runs inside a pipeline task: one generic "run a step" from KFP artifacts and parameters to
the step's plain component and back.

Every kfp component in `pipeline.dag` is a two-line body calling `run_step(name, **arguments)`.
For every step alike, `run_step` quiets the libraries, turns a user error into one line, parses the
config sections the step reads (`pipeline.steps`), digests its input artifacts, opens its tracking
run, calls the step's hook (`pipeline.hooks`, the few lines where steps really differ) and records
what the hook reports: output digests and facts in the artifacts' metadata (what the KFP UI and
the CLI summary show), metrics and tags in the tracking run.

A user error in a step, or a full disk, ends the task with one line on stderr, written also to the
file named by `TUNEPIPE_ERROR_FILE` so that `tunepipe run` can repeat it, and exit code 1, never a
traceback. A step that fails leaves none of its output artifacts behind, not even a part.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn

from components import artifacts
from components.errors import TunepipeError, disk_full
from components.section import Section
from pipeline import progress, step_server, steps
from pipeline.tracking import StepRecorder

ERROR_FILE_ENV = "TUNEPIPE_ERROR_FILE"
# Set by `tunepipe run` once it is interrupted: a task kfp.local starts after that does nothing.
INTERRUPTED_ENV = "TUNEPIPE_INTERRUPTED"
INTERRUPTED = 130  # the exit code of a step not started because the run was interrupted (Ctrl-C)
# Arguments that only key kfp's cache (they change when the data or the code do), or that are
# recorded otherwise (a hypermodel module's text: as a file and a digest): not recorded as params.
CACHE_KEYS = ("code_version", "data_fingerprint", "hypermodel_source")
# Pipeline parameters that the `data` section is made of besides its own dict (so that `--param
# source=...` overrides them on Kubeflow).
_DATA_PARAMETERS = ("source", "label")


@dataclass
class StepContext:
    """What a step's hook is handed: the parsed config sections, the task's artifacts and
    parameters, the step's component and its tracking run."""

    step: steps.Step
    config: dict[str, Section]  # by section key, e.g. "tuner"
    artifacts: dict[str, Any]  # KFP artifacts (.path, .uri, .metadata) by argument name
    parameters: dict[str, Any]
    record: StepRecorder

    def path(self, name: str) -> str:
        return self.artifacts[name].path

    @property
    def component(self):
        return self.step.load_component()


@dataclass
class Outcome:
    """What a hook reports of a finished step."""

    digests: dict[str, str] = field(default_factory=dict)  # output artifact -> content digest
    metrics: dict[str, float] = field(default_factory=dict)  # into the tracking run and the outputs' metadata
    facts: dict[str, Any] = field(default_factory=dict)  # into the outputs' metadata only
    tags: dict[str, str] = field(default_factory=dict)  # into the tracking run only
    returns: Any = None  # the kfp component's return value


def quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py", "matplotlib", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def user_errors(step: str) -> Iterator[None]:
    """Turn a TunepipeError, or any error that says the disk is full (`errors.disk_full`: whichever
    library raised it), into one line and exit code 1."""
    try:
        yield
    except Exception as raised:
        error = disk_full(raised) or raised
        if not isinstance(error, TunepipeError):
            raise
        print(f"tunepipe: error: {step}: {error}", file=sys.stderr, flush=True)
        error_file = os.environ.get(ERROR_FILE_ENV)
        if error_file:
            changed = {"changed": error.uri} if isinstance(error, ChangedArtifact) else {}
            # On a full disk the file may not take the line: `tunepipe run` has it from the step's output.
            with contextlib.suppress(OSError), open(error_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "message": str(error), **changed}) + "\n")
        raise SystemExit(1) from None


@contextlib.contextmanager
def outputs_removed_on_failure(step: steps.Step, task_artifacts: dict[str, Any]) -> Iterator[None]:
    """A step that fails leaves none of its output artifacts, whole or partial (a full disk, an
    error, Ctrl-C): nothing half-written for a later step or a cache to take. Its outputs are every
    artifact of the task that is not one of its inputs; their paths are the task's own in the
    pipeline root, never an input's and never a working directory that outlives an attempt (the
    tuner's state, which a resumed search needs)."""
    try:
        yield
    except BaseException:
        inputs = [path for key in step.inputs for path in _paths(task_artifacts.get(key))]
        for key, value in task_artifacts.items():
            for path in [] if key in step.inputs else _paths(value):
                if _removable(path, inputs):
                    _remove(path)
        raise


def _paths(value: Any) -> list[str]:
    """The local paths of an artifact argument: one artifact's, or each of a list's."""
    return [item.path for item in (value if isinstance(value, list) else [value]) if item is not None]


def _removable(path: str, inputs: list[str]) -> bool:
    """Not an input, nor a directory holding one (a safeguard: kfp gives every output its own path)."""
    real = os.path.realpath(path)
    return all(os.path.commonpath([real, os.path.realpath(held)]) != real for held in inputs)


def _remove(path: str) -> None:
    """Remove a file or a directory tree; what cannot be removed must not hide the step's own error."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


class ChangedArtifact(TunepipeError):
    """An input artifact whose files are not what its manifest says: changed after it was written."""

    def __init__(self, uri: str, expected: str, found: str):
        super().__init__(f"the input artifact {uri} was changed after it was written (its files digest to "
                         f"{found[:19]}, its manifest says {expected[:19]}); it is not used")
        self.uri = uri


def artifact_digest(path: str, uri: str = "") -> str:
    """The content digest an artifact's manifest holds, checked against its files."""
    expected = artifacts.read_manifest_any(path)["digest"]
    found = artifacts.digest_tree(path)
    if found != expected:
        raise ChangedArtifact(uri or path, expected, found)
    return expected


def _is_artifact(value: Any) -> bool:
    """A KFP artifact, or a list of them (the collected outputs of a ParallelFor's iterations)."""
    if isinstance(value, list):
        return bool(value) and all(_is_artifact(item) for item in value)
    return all(hasattr(value, attribute) for attribute in ("path", "uri", "metadata"))


def _input_digests(step: steps.Step, task_artifacts: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The URI and content digest of each input artifact the step's tracking run records; a list
    input one entry per item (`worker_tunings.0`, ...)."""
    found = {}
    for key in step.inputs:
        value = task_artifacts.get(key)
        if value is None or key in (steps.BASELINE, steps.PUSHED):  # no manifest, recorded by their steps
            continue
        if isinstance(value, list):
            found.update({f"{key}.{index}": (item.uri, artifact_digest(item.path, item.uri))
                          for index, item in enumerate(value)})
        else:
            found[key] = (value.uri, artifact_digest(value.path, value.uri))
    return found


def _section(key: str, parameter: str, parameters: dict[str, Any]) -> Section:
    from pipeline import config

    raw = dict(parameters[parameter])
    if key == "data":
        raw.update({name: parameters[name] for name in _DATA_PARAMETERS if name in parameters})
    return config.section(config.PipelineConfig.model_fields[key].annotation, raw, f"{key} parameter")


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            started_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as handle:
            uptime = float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))


def run_step(name: str, **arguments: Any) -> Any:
    """Run the step `name` of the registry with the kfp task's `arguments`; its hook's return value.
    Under `tunepipe run` the work runs in a fork of the run's warm server (`pipeline.step_server`),
    else here. Its last line on stdout says how long the task took to start and its work took."""
    startup, began = process_age(), time.monotonic()
    if os.environ.get(INTERRUPTED_ENV):
        _not_started(name)
    try:
        server = os.environ.get(step_server.ENV)
        if server:
            try:
                return step_server.submit(server, name, arguments)
            except step_server.Unavailable:
                pass  # the run's server is gone: the step runs here, as it does on Kubeflow
        return run_here(name, arguments)
    except step_server.RunInterrupted as interrupted:
        _not_started(name, 128 + interrupted.signal)
    finally:
        progress.timing(name, startup, time.monotonic() - began)


def _not_started(name: str, code: int = INTERRUPTED) -> NoReturn:
    print(f"tunepipe: {name}: not started: the run was interrupted", file=sys.stderr, flush=True)
    raise SystemExit(code)


@contextlib.contextmanager
def interruptible(step: str) -> Iterator[None]:
    """The first SIGINT (Ctrl-C) or SIGTERM (a pod deleted) ends the step as Ctrl-C does: its
    tracking run is marked, one line says so, exit code 128 + the signal (130, 143); a second one
    changes nothing. Signals can be handled in the main thread only; elsewhere Python's default holds."""
    received: list[int] = []

    def interrupted(number: int, _frame: Any) -> None:
        for ignored in (signal.SIGINT, signal.SIGTERM):
            signal.signal(ignored, signal.SIG_IGN)
        received.append(number)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    saved = {number: signal.signal(number, interrupted) for number in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    except KeyboardInterrupt:
        number = received[0] if received else signal.SIGINT
        print(f"tunepipe: {step}: interrupted ({signal.Signals(number).name})", file=sys.stderr, flush=True)
        raise SystemExit(128 + number) from None
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def run_here(name: str, arguments: dict[str, Any]) -> Any:
    """Run the step `name` in this process."""
    from pipeline import tracking

    step = steps.BY_NAME[name]
    quiet_libraries()
    task_artifacts = {key: value for key, value in arguments.items() if _is_artifact(value)}
    with interruptible(name), user_errors(name), outputs_removed_on_failure(step, task_artifacts):
        parameters = {key: value for key, value in arguments.items() if key not in task_artifacts}
        config = {key: _section(key, parameter, parameters) for parameter, key in step.sections.items()}
        inputs = _input_digests(step, task_artifacts)
        # Sections are recorded under their key in the config file (the `tuner` param of a tune run).
        recorded = {step.sections.get(key, key): value for key, value in parameters.items() if key not in CACHE_KEYS}
        with tracking.step_run(step.recorded_name, recorded, inputs=inputs) as record:
            context = StepContext(step, config, task_artifacts, parameters, record)
            outcome = step.load_hook()(context)
            for output in step.outputs:
                artifact = task_artifacts.get(output)
                if artifact is None:
                    continue
                digest = outcome.digests.get(output)
                artifact.metadata.update({**({"digest": digest} if digest else {}), **outcome.facts,
                                          **outcome.metrics})
                if digest:
                    record.output(output, artifact.uri, digest)
            record.metrics(outcome.metrics)
            record.tags(outcome.tags)
        return outcome.returns


def log_kfp_metrics(metrics: Any, values: dict[str, float]) -> None:
    """A KFP Metrics output: KFP shows its metadata; the file holds the same numbers, and its
    existence is what lets kfp.local's cache accept the artifact as present."""
    for name, value in values.items():
        metrics.log_metric(name, value)
    os.makedirs(os.path.dirname(metrics.path), exist_ok=True)
    with open(metrics.path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2)
