"""The tune step: a Keras Tuner search (Hyperband by default, RandomSearch or BayesianOptimization on
request) over the search space in the config, with every trial recorded as it ends.

Each trial is recorded by hooks in the tuner itself (`_RecordingTuner`), not by reading results
afterwards: a nested MLflow run per trial under the step's run (trial id, Hyperband bracket and
round, hyperparameters as params, train/eval metrics per epoch, the objective, the status and the
duration), a record file beside Keras Tuner's own `trial.json`, and TensorBoard logs.

The search is resumable. Keras Tuner keeps its state in a project directory under `work_dir`, named
by the config and the input digests; after a kill, running the step again reloads it: finished
trials are neither re-run nor recorded again (a trial's MLflow run is looked up by its search and
trial id before one is created), and the trial that was cut short runs again.

Output layout (a `tuning` artifact):

    best_hyperparameters.json   name -> value, the input of the train step
    trials.csv                  one row per trial: id, status, score, epochs, bracket, round,
                                duration, error, MLflow run id and one `hp.<name>` column per hyperparameter
    search_space.json           the Keras Tuner search space as declared
    tensorboard/<trial id>/     TensorBoard logs (scalars and HParams) per trial
    _manifest.json              written last
"""
from __future__ import annotations

import csv
import gc
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import artifacts, ingest, model
from components.preprocess import Transform
from pipeline import lineage
from pipeline.config import TunerConfig
from pipeline.errors import TunepipeError

log = logging.getLogger("tunepipe.tune")

KIND = "tuning"
BEST_HYPERPARAMETERS = "best_hyperparameters.json"
TRIALS_TABLE = "trials.csv"
SEARCH_SPACE = "search_space.json"
TENSORBOARD_DIR = "tensorboard"
# Beside Keras Tuner's own files in its project directory: the search's identity (for MLflow look-ups)
# and, in each trial's directory, what Keras Tuner does not keep (status kind, duration, epochs, error).
SEARCH_ID_FILE = "tunepipe_search.json"
TRIAL_RECORD = "tunepipe_trial.json"

COMPLETED = "completed"
FAILED = "failed"
# Failed before training started: the hyperparameters did not give a model that could be built.
INVALID = "invalid"
INTERRUPTED = "interrupted"
FINAL_STATUSES = (COMPLETED, FAILED, INVALID)

TAG_SEARCH_ID = "tunepipe.search_id"
TAG_TRIAL_ID = "tunepipe.trial_id"
TAG_STATUS = "tunepipe.trial_status"
TAG_ERROR = "tunepipe.error"
_PARENT_RUN_TAG = "mlflow.parentRunId"
_MLFLOW_TAG_LIMIT = 5000


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    status: str  # completed, failed or invalid
    score: float | None
    hyperparameters: dict[str, Any]
    epochs: int | None  # epochs trained in this trial (Hyperband continues earlier trials: only the new ones)
    initial_epoch: int | None
    bracket: int | None
    round: int | None
    continued_from: str | None
    best_epoch: int | None
    duration_s: float | None
    error: str | None
    mlflow_run_id: str | None


@dataclass(frozen=True)
class TuneResult:
    path: str
    best_hyperparameters: dict[str, Any]
    best_trial_id: str | None
    best_score: float | None
    objective: str
    direction: str
    trials: tuple[TrialSummary, ...]
    digest: str


@dataclass(frozen=True)
class PreviousSearch:
    """The result of an earlier search, as its tune step run recorded it in MLflow."""

    run_id: str
    pipeline_run_id: str | None
    started: float  # seconds since the epoch
    best_hyperparameters: dict[str, Any]
    best_trial_id: str | None
    best_score: float | None
    tuning_uri: str
    tuning_digest: str

    def age_days(self, now: float | None = None) -> float:
        return ((time.time() if now is None else now) - self.started) / 86400


# --- reusing an earlier search ------------------------------------------------------------------

def search_space_digest(config: TunerConfig) -> str:
    """What makes an earlier search's best hyperparameters valid for this one: the same search space,
    ranked by the same objective."""
    identity = {"search_space": config.search_space.model_dump(mode="json"), "objective": config.objective,
                "direction": config.resolved_direction}
    return "space:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def last_search(experiment_id: str, config: TunerConfig) -> PreviousSearch | None:
    """The newest finished search over the same search space in `experiment_id` (the pipeline's)."""
    from mlflow import MlflowClient

    query = (f"tags.`{lineage.STEP_TAG}` = 'tune' and tags.`{lineage.TUNING_TAG}` = '{lineage.SEARCHED}' "
             f"and tags.`{lineage.SEARCH_SPACE_TAG}` = '{search_space_digest(config)}' "
             "and attributes.status = 'FINISHED'")
    for run in MlflowClient().search_runs([experiment_id], query, order_by=["attributes.start_time DESC"],
                                          max_results=5):
        tags, metrics = run.data.tags, run.data.metrics
        try:
            best = json.loads(tags[lineage.BEST_HYPERPARAMETERS_TAG])
        except (KeyError, ValueError):
            continue  # cut short by MLflow's tag limit, or written by hand: not reusable
        return PreviousSearch(run.info.run_id, tags.get(_PARENT_RUN_TAG), run.info.start_time / 1000, best,
                              tags.get(lineage.BEST_TRIAL_TAG) or None, metrics.get("best_score"),
                              tags.get(lineage.output_tag("tuning", "uri"), ""),
                              tags.get(lineage.output_tag("tuning", "digest"), ""))
    return None


def reuse_decision(previous: PreviousSearch | None, config: TunerConfig, now: float | None = None) -> str | None:
    """Why a run that may reuse hyperparameters searches anyway; None when it reuses `previous`."""
    if not config.enabled:
        return "tuning is off"
    if previous is None:
        return "no earlier search over this search space"
    age = previous.age_days(now)
    if config.retune_after_days is not None and age > config.retune_after_days:
        return (f"the last search (run {previous.run_id}) is {age:.1f} days old, more than "
                f"tuner.retune_after_days={config.retune_after_days:g}")
    return None


def reuse(previous: PreviousSearch, examples: str | os.PathLike[str], transform: str | os.PathLike[str],
          out: str | os.PathLike[str], config: TunerConfig) -> TuneResult:
    """The `tuning` artifact of a run that searches nothing: the best hyperparameters of `previous`."""
    examples_manifest = artifacts.read_manifest(examples, ingest.KIND)
    transform_manifest = artifacts.read_manifest(transform, "transform")
    inputs = {"examples": str(examples), "examples_digest": examples_manifest["digest"],
              "transform": str(transform), "transform_digest": transform_manifest["digest"],
              "reused_from": {"tune_run_id": previous.run_id, "pipeline_run_id": previous.pipeline_run_id,
                              "tuning": previous.tuning_uri, "tuning_digest": previous.tuning_digest,
                              "best_trial_id": previous.best_trial_id, "best_score": previous.best_score}}
    best = _ReusedTrial(previous.best_trial_id, previous.best_score) if previous.best_score is not None else None
    result = _write_artifact(Path(out), config, previous.best_hyperparameters, best, [], {}, None, inputs)
    log.info("tune: reusing the best hyperparameters of search run %s (%.1f days old): %s", previous.run_id,
             previous.age_days(), json.dumps(result.best_hyperparameters, sort_keys=True))
    return result


@dataclass(frozen=True)
class _ReusedTrial:
    trial_id: str | None
    score: float


# --- recording ----------------------------------------------------------------------------------

def _one_line(message: str | None) -> str | None:
    """The last line of a Keras Tuner trial message (a traceback), with the exception's module path cut."""
    if not message:
        return None
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = re.match(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)): (.*)$", lines[-1])
    return f"{match.group(1)}: {match.group(2)}" if match else lines[-1]


def _trial_facts(trial) -> dict[str, Any]:
    values = trial.hyperparameters.values
    return {
        "bracket": values.get("tuner/bracket"),
        "round": values.get("tuner/round"),
        "initial_epoch": values.get("tuner/initial_epoch"),
        "max_epoch": values.get("tuner/epochs"),
        "continued_from": values.get("tuner/trial_id"),
    }


def _best_epoch(trial) -> int | None:
    """The 1-based epoch of the trial's best objective value; Keras Tuner counts from the trial's first epoch."""
    if trial.score is None or trial.best_step is None:
        return None
    return (trial.hyperparameters.values.get("tuner/initial_epoch") or 0) + trial.best_step + 1


class TrialRecorder:
    """Writes each trial's record file and, when there is a parent MLflow run, its nested MLflow run."""

    def __init__(self, search_id: str, objective: str, direction: str, parent_run_id: str | None,
                 expected_trials: int | None = None):
        self.search_id = search_id
        self.objective = objective
        self.direction = direction
        self.expected_trials = expected_trials
        self._client = None
        self._experiment_id = None
        self.parent_run_id = parent_run_id
        if parent_run_id is not None:
            import mlflow

            self._client = mlflow.MlflowClient()
            self._experiment_id = self._client.get_run(parent_run_id).info.experiment_id
        self._open_run_id: str | None = None
        self._started = 0.0
        self._epochs = 0
        self._best: tuple[float, str] | None = None

    # MLflow look-ups ------------------------------------------------------------------------

    def _runs(self, trial_id: str | None = None) -> dict[str, Any]:
        """This search's trial runs in MLflow by trial id (deleted runs excluded)."""
        if self._client is None:
            return {}
        query = f"tags.`{TAG_SEARCH_ID}` = '{self.search_id}'"
        if trial_id is not None:
            query += f" and tags.`{TAG_TRIAL_ID}` = '{trial_id}'"
        runs, token = {}, None
        while True:
            page = self._client.search_runs([self._experiment_id], filter_string=query, max_results=1000,
                                            page_token=token)
            for run in page:
                runs[run.data.tags[TAG_TRIAL_ID]] = run
            token = page.token
            if not token:
                return runs

    def _create_run(self, trial) -> str:
        from mlflow.entities import Param

        facts = _trial_facts(trial)
        run = self._client.create_run(self._experiment_id, run_name=f"trial-{trial.trial_id}", tags={
            _PARENT_RUN_TAG: self.parent_run_id, TAG_SEARCH_ID: self.search_id, TAG_TRIAL_ID: trial.trial_id,
            "tunepipe.objective": self.objective})
        params = {"trial_id": trial.trial_id, **{name: value for name, value in facts.items() if value is not None},
                  **model.model_values(trial.hyperparameters.values)}
        self._client.log_batch(run.info.run_id, params=[Param(name, str(value)) for name, value in params.items()])
        return run.info.run_id

    def _finish_run(self, run_id: str, trial, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = {"duration_s": record["duration_s"], "epochs": record["epochs"], "score": trial.score,
                   "best_epoch": _best_epoch(trial) if record["status"] == COMPLETED else None}
        self._client.log_batch(run_id, metrics=[
            Metric(name, float(value), now, 0) for name, value in metrics.items()
            if value is not None and math.isfinite(float(value))])
        self._client.set_tag(run_id, TAG_STATUS, record["status"])
        if record["error"]:
            self._client.set_tag(run_id, TAG_ERROR, record["error"][:_MLFLOW_TAG_LIMIT])
        self._client.set_terminated(run_id, "FINISHED" if record["status"] == COMPLETED else "FAILED")

    # the trial life cycle ---------------------------------------------------------------------

    def begin(self, trial) -> None:
        self._started = time.monotonic()
        self._epochs = 0
        self._open_run_id = None
        if self._client is None:
            return
        existing = self._runs(trial.trial_id).get(trial.trial_id)
        if existing is not None:
            if existing.data.tags.get(TAG_STATUS) in FINAL_STATUSES:
                log.warning("tune: trial %s is already recorded in MLflow run %s; not recording it again",
                            trial.trial_id, existing.info.run_id)
                return
            # An attempt cut short by a kill: its partial epochs would mix with the rerun's.
            self._client.delete_run(existing.info.run_id)
        self._open_run_id = self._create_run(trial)

    def epoch(self, epoch: int, logs: dict[str, Any] | None) -> None:
        self._epochs += 1
        if self._open_run_id is None or not logs:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, epoch) for name, value in logs.items()
                   if isinstance(value, (int, float)) and math.isfinite(float(value))]
        if metrics:
            self._client.log_batch(self._open_run_id, metrics=metrics)

    def end(self, trial, trial_dir: str, training_started: bool) -> None:
        status = COMPLETED if trial.status == "COMPLETED" else FAILED if training_started else INVALID
        error = None
        if status != COMPLETED:
            # Keras Tuner fails a trial whose objective is NaN without an exception, hence no message.
            error = _one_line(trial.message) or f"the objective {self.objective} was not a number"
        record = {"trial_id": trial.trial_id, "status": status,
                  "duration_s": round(time.monotonic() - self._started, 3), "epochs": self._epochs, "error": error,
                  "mlflow_run_id": self._open_run_id}
        Path(trial_dir, TRIAL_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if self._open_run_id is not None:
            self._finish_run(self._open_run_id, trial, record)
            self._open_run_id = None
        self._report(trial, record)

    def abort(self) -> None:
        """The search was cut short (a kill, Ctrl-C): close the running trial's MLflow run as killed."""
        if self._open_run_id is not None and self._client is not None:
            self._client.set_tag(self._open_run_id, TAG_STATUS, INTERRUPTED)
            self._client.set_terminated(self._open_run_id, "KILLED")
            self._open_run_id = None

    def search_begins(self, tuner) -> None:
        """Carry over what a resumed search already has: its best trial so far and its MLflow records."""
        for trial in tuner.oracle.trials.values():
            if trial.status == "COMPLETED" and trial.score is not None and (
                    self._best is None or self._better(trial.score, self._best[0])):
                self._best = (trial.score, trial.trial_id)
        self.reconcile(tuner)

    def reconcile(self, tuner) -> None:
        """Give every finished trial exactly one finished MLflow run.

        A kill between Keras Tuner ending a trial and the recorder finishing its run, or an earlier
        attempt without an MLflow run to nest under, leaves a finished trial without one.
        """
        if self._client is None:
            return
        runs = self._runs()
        for trial in tuner.oracle.trials.values():
            if trial.status not in ("COMPLETED", "FAILED"):
                continue
            run = runs.get(trial.trial_id)
            if run is not None and run.data.tags.get(TAG_STATUS) in FINAL_STATUSES:
                continue
            record = read_trial_record(tuner.get_trial_dir(trial.trial_id)) or {
                "trial_id": trial.trial_id, "status": COMPLETED if trial.status == "COMPLETED" else FAILED,
                "duration_s": None, "epochs": None, "error": _one_line(trial.message), "mlflow_run_id": None}
            run_id = run.info.run_id if run is not None else self._create_run(trial)
            self._finish_run(run_id, trial, record)
            record["mlflow_run_id"] = run_id
            Path(tuner.get_trial_dir(trial.trial_id), TRIAL_RECORD).write_text(json.dumps(record, indent=2) + "\n")

    def _report(self, trial, record: dict[str, Any]) -> None:
        facts = _trial_facts(trial)
        where = f"bracket {facts['bracket']} round {facts['round']}, " if facts["bracket"] is not None else ""
        if record["status"] == COMPLETED:
            if self._best is None or self._better(trial.score, self._best[0]):
                self._best = (trial.score, trial.trial_id)
            outcome = f"{self.objective} {trial.score:.4f}"
        else:
            outcome = f"{record['status']}: {record['error']}"
        best = f"; best {self._best[0]:.4f} (trial {self._best[1]})" if self._best else ""
        count = f" [{int(trial.trial_id) + 1}/{self.expected_trials}]" if self.expected_trials else ""
        log.info("tune: trial %s (%s%d epochs, %.1fs): %s%s%s", trial.trial_id, where, record["epochs"],
                 record["duration_s"], outcome, best, count)

    def _better(self, score: float, than: float) -> bool:
        return score > than if self.direction == "max" else score < than


def read_trial_record(trial_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        return json.loads(Path(trial_dir, TRIAL_RECORD).read_text())
    except (FileNotFoundError, ValueError):
        return None


# --- the tuner ----------------------------------------------------------------------------------

def _tuner_classes():
    """Keras Tuner's tuners with the recording hooks, imported late: Keras Tuner pulls in TensorFlow."""
    import keras
    import keras_tuner

    class TabularHyperModel(keras_tuner.HyperModel):
        """`components.model.build_model` for Keras Tuner, failing a trial whose loss turns NaN."""

        def __init__(self, transform: Transform, space, seed: int):
            super().__init__(name="tunepipe")
            self.transform = transform
            self.space = space
            self.seed = seed
            self.training_started = False

        def build(self, hp):
            # The same initial weights for the same architecture: trials differ by their hyperparameters only.
            keras.utils.set_random_seed(self.seed)
            return model.build_model(hp, self.transform, self.space)

        def fit(self, hp, keras_model, *args, **kwargs):
            self.training_started = True
            history = keras_model.fit(*args, **kwargs)
            first_epoch = kwargs.get("initial_epoch", 0)
            for offset, loss in enumerate(history.history.get("loss", [])):
                if not math.isfinite(loss):
                    # FailedTrialError: Keras Tuner marks the trial failed without retrying it.
                    raise keras_tuner.errors.FailedTrialError(
                        f"the training loss became {loss} in epoch {first_epoch + offset + 1}: training diverged")
            return history

    class RecordingTuner:
        """Hooks into Keras Tuner's trial life cycle; mixed into each of its tuner classes."""

        def __init__(self, *args, recorder: TrialRecorder, **kwargs):
            self.recorder = recorder
            super().__init__(*args, **kwargs)

        def on_search_begin(self):
            super().on_search_begin()
            self.recorder.search_begins(self)

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            self.hypermodel.training_started = False
            self.recorder.begin(trial)

        def on_epoch_end(self, trial, keras_model, epoch, logs=None):
            super().on_epoch_end(trial, keras_model, epoch, logs=logs)
            self.recorder.epoch(epoch, logs)

        def on_trial_end(self, trial):
            try:
                # Keras Tuner decides the final status here (a NaN score makes a trial failed) and saves it.
                super().on_trial_end(trial)
            finally:
                self.recorder.end(trial, self.get_trial_dir(trial.trial_id), self.hypermodel.training_started)

        def on_search_end(self):
            super().on_search_end()
            self.recorder.reconcile(self)

    class Hyperband(RecordingTuner, keras_tuner.Hyperband):
        pass

    class RandomSearch(RecordingTuner, keras_tuner.RandomSearch):
        pass

    class BayesianOptimization(RecordingTuner, keras_tuner.BayesianOptimization):
        pass

    return TabularHyperModel, {"hyperband": Hyperband, "random": RandomSearch, "bayesian": BayesianOptimization}


def _search_fingerprint(config: TunerConfig, examples_digest: str, transform_digest: str) -> str:
    """Names the Keras Tuner project: a changed config or input starts a new search instead of resuming."""
    identity = {"config": config.model_dump(mode="json", exclude={"enabled", "retune_after_days"}),
                "examples": examples_digest, "transform": transform_digest}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _search_id(project_dir: Path) -> str:
    path = project_dir / SEARCH_ID_FILE
    try:
        return json.loads(path.read_text())["search_id"]
    except (FileNotFoundError, ValueError, KeyError):
        project_dir.mkdir(parents=True, exist_ok=True)
        search_id = uuid.uuid4().hex
        path.write_text(json.dumps({"search_id": search_id}) + "\n")
        return search_id


def _expected_trials(config: TunerConfig, oracle) -> int | None:
    if config.algorithm != "hyperband":
        return config.max_trials
    try:  # Keras Tuner's own bracket arithmetic, so the count cannot drift from what it runs
        brackets = oracle._get_num_brackets()
        per_iteration = sum(oracle._get_size(bracket, round_num)
                            for bracket in range(brackets) for round_num in range(bracket + 1))
        return per_iteration * config.hyperband_iterations
    except AttributeError:
        return None


def _parent_run_id(tracking: str | None) -> str | None:
    if tracking is not None:
        return tracking
    import mlflow

    active = mlflow.active_run()
    return active.info.run_id if active is not None else None


# --- the step -----------------------------------------------------------------------------------

def _summaries(tuner) -> list[TrialSummary]:
    summaries = []
    for trial_id in sorted(tuner.oracle.trials):
        trial = tuner.oracle.trials[trial_id]
        if trial.status not in ("COMPLETED", "FAILED"):
            continue  # cut short and not yet run again
        record = read_trial_record(os.path.join(tuner.project_dir, f"trial_{trial_id}")) or {}
        facts = _trial_facts(trial)
        completed = trial.status == "COMPLETED"
        summaries.append(TrialSummary(
            trial_id=trial_id,
            status=record.get("status") or (COMPLETED if completed else FAILED),
            score=float(trial.score) if completed and trial.score is not None else None,
            hyperparameters=model.model_values(trial.hyperparameters.values),
            epochs=record.get("epochs"), initial_epoch=facts["initial_epoch"], bracket=facts["bracket"],
            round=facts["round"], continued_from=facts["continued_from"],
            best_epoch=_best_epoch(trial) if completed else None,
            duration_s=record.get("duration_s"),
            error=record.get("error") or (None if completed else _one_line(trial.message)),
            mlflow_run_id=record.get("mlflow_run_id")))
    return summaries


def write_trials_table(path: str | os.PathLike[str], trials: list[TrialSummary]) -> None:
    names = sorted({name for trial in trials for name in trial.hyperparameters})
    columns = ["trial_id", "status", "score", "epochs", "initial_epoch", "best_epoch", "bracket", "round",
               "continued_from", "duration_s", "error", "mlflow_run_id"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + [f"hp.{name}" for name in names])
        for trial in trials:
            row = [getattr(trial, column) for column in columns]
            row += [trial.hyperparameters.get(name) for name in names]
            writer.writerow(["" if value is None else value for value in row])


def read_trials_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_artifact(out: Path, config: TunerConfig, best: dict[str, Any], best_trial, trials: list[TrialSummary],
                    search_space: dict[str, Any], tensorboard: Path | None, inputs: dict[str, str]) -> TuneResult:
    direction = config.resolved_direction
    with artifacts.building(out) as partial:
        model.write_hyperparameters(partial / BEST_HYPERPARAMETERS, best)
        write_trials_table(partial / TRIALS_TABLE, trials)
        (partial / SEARCH_SPACE).write_text(json.dumps(search_space, indent=2, default=str) + "\n")
        if tensorboard is not None and tensorboard.is_dir():
            shutil.copytree(tensorboard, partial / TENSORBOARD_DIR)
        counts = {status: sum(trial.status == status for trial in trials) for status in FINAL_STATUSES}
        manifest = artifacts.write_manifest(
            partial, KIND, "tune", algorithm=config.algorithm if config.enabled else None,
            objective=config.objective, direction=direction,
            best_trial_id=best_trial.trial_id if best_trial else None,
            best_score=float(best_trial.score) if best_trial else None, trials=counts, **inputs)
    return TuneResult(str(out), model.model_values(best), best_trial.trial_id if best_trial else None,
                      float(best_trial.score) if best_trial else None, config.objective, direction, tuple(trials),
                      manifest["digest"])


def run(examples: str | os.PathLike[str], transform: str | os.PathLike[str], out: str | os.PathLike[str],
        config: TunerConfig, tracking: str | None = None, *, work_dir: str | os.PathLike[str] | None = None,
        callbacks: list | None = None) -> TuneResult:
    """Search the hyperparameters and write the `tuning` artifact at `out`.

    `tracking` is the MLflow run to nest the trial runs under (default: the active run; with
    neither, trials are only written to the artifact). `work_dir` holds Keras Tuner's state and must
    survive a kill for the search to resume (default: beside `out`). `callbacks` are extra Keras
    callbacks for every trial. With `config.enabled` false, no search runs and the default
    hyperparameters are the result.
    """
    out = Path(out)
    examples_manifest = artifacts.read_manifest(examples, ingest.KIND)
    transform_manifest = artifacts.read_manifest(transform, "transform")
    inputs = {"examples": str(examples), "examples_digest": examples_manifest["digest"],
              "transform": str(transform), "transform_digest": transform_manifest["digest"]}
    loaded = Transform.read(transform)
    space = config.search_space
    if not config.enabled:
        log.info("tune: tuning is off; the result is the search space's default hyperparameters")
        return _write_artifact(out, config, model.default_hyperparameters(space), None, [], {}, None, inputs)

    import keras
    import keras_tuner

    work_dir = Path(work_dir) if work_dir is not None else out.parent / f".{out.name}.tuner"
    fingerprint = _search_fingerprint(config, inputs["examples_digest"], inputs["transform_digest"])
    project_name = f"{config.algorithm}-{fingerprint}"
    project_dir = work_dir / project_name
    resuming = (project_dir / "oracle.json").exists()
    search_id = _search_id(project_dir)
    direction = config.resolved_direction

    hypermodel_class, tuner_classes = _tuner_classes()
    recorder = TrialRecorder(search_id, config.objective, direction, _parent_run_id(tracking))
    algorithm_args: dict[str, Any] = {"max_trials": config.max_trials}
    if config.algorithm == "hyperband":
        algorithm_args = {"max_epochs": config.max_epochs, "factor": config.factor,
                          "hyperband_iterations": config.hyperband_iterations}
    elif config.algorithm == "bayesian":
        algorithm_args["num_initial_points"] = config.bayesian_initial_trials or max(3, config.max_trials // 3)
    try:
        tuner = tuner_classes[config.algorithm](
            hypermodel=hypermodel_class(loaded, space, config.seed),
            objective=keras_tuner.Objective(config.objective, direction),
            seed=config.seed, max_consecutive_failed_trials=config.max_consecutive_failed_trials,
            directory=str(work_dir), project_name=project_name, overwrite=False, recorder=recorder,
            **algorithm_args)
    except RuntimeError as error:
        raise TunepipeError(f"the tuner state in {project_dir} cannot be reloaded ({_one_line(str(error))}); "
                            f"delete that directory to start the search over") from None
    recorder.expected_trials = _expected_trials(config, tuner.oracle)
    if resuming:
        finished = sum(trial.status in ("COMPLETED", "FAILED") for trial in tuner.oracle.trials.values())
        log.info("tune: resuming the search in %s: %d trial(s) finished", project_dir, finished)
    else:
        log.info("tune: %s search over %d hyperparameters, about %s trials; state in %s", config.algorithm,
                 len(tuner.oracle.hyperparameters.space), recorder.expected_trials or "?", project_dir)

    train_split = model.dataset(examples, "train", loaded, config.batch_size, shuffle=True, seed=config.seed)
    eval_split = model.dataset(examples, "eval", loaded, config.batch_size)
    tensorboard = project_dir / TENSORBOARD_DIR
    trial_callbacks = [
        keras.callbacks.EarlyStopping(monitor=config.objective, mode=direction,
                                      patience=config.early_stopping_patience),
        keras.callbacks.TerminateOnNaN(),
        # Keras Tuner gives this a directory per trial and adds the trial's HParams to it.
        keras.callbacks.TensorBoard(log_dir=str(tensorboard), write_graph=False),
        *(callbacks or []),
    ]
    started = time.monotonic()
    # Keras Tuner collects garbage before every trial; with TensorFlow's many long-lived objects a full
    # collection took ~0.6 s, a third of a small trial. Frozen objects are skipped by the collector.
    gc.freeze()
    try:
        with model.expected_warnings():
            # shuffle=False: the dataset shuffles itself (Keras cannot shuffle a stream and warns if asked).
            tuner.search(train_split, validation_data=eval_split, epochs=config.max_epochs,
                         callbacks=trial_callbacks, shuffle=False, verbose=0)
    except RuntimeError as error:
        if "consecutive failures" not in str(error):
            raise
        last = _one_line(str(error).split("\n", 1)[-1])
        raise TunepipeError(f"tuning failed: {config.max_consecutive_failed_trials} trials in a row failed "
                            f"(tuner.max_consecutive_failed_trials); last error: {last}") from None
    finally:
        recorder.abort()
        gc.unfreeze()

    trials = _summaries(tuner)
    completed = [trial for trial in trials if trial.status == COMPLETED]
    if not completed:
        errors = [trial.error for trial in trials if trial.error]
        raise TunepipeError(f"tuning failed: none of the {len(trials)} trials completed"
                            + (f"; last error: {errors[-1]}" if errors else ""))
    best_trial = tuner.oracle.get_best_trials(1)[0]
    result = _write_artifact(out, config, best_trial.hyperparameters.values, best_trial, trials,
                             tuner.oracle.hyperparameters.get_config(), tensorboard,
                             {**inputs, "work_dir": str(project_dir)})
    log.info("tune: %d trials (%d completed) in %.0fs; best %s %.4f in trial %s: %s", len(trials), len(completed),
             time.monotonic() - started, config.objective, result.best_score, result.best_trial_id,
             json.dumps(result.best_hyperparameters, sort_keys=True))
    return result
