"""The tune step: a Keras Tuner search (`components.tune.algorithms`: Hyperband by default) over the
search space in the config, every trial reported to an observer as it begins, trains and ends.

Each trial is followed by hooks in the tuner itself (`RecordingTuner`), not by reading results
afterwards: a record file beside Keras Tuner's own `trial.json` (`components.tune.trials`), a
line in the log, TensorBoard logs, and the observer's events (`components.tune.observer`; the
pipeline records them as nested MLflow runs and shows a progress line per trial).

The search is resumable. Keras Tuner keeps its state in a project directory under `work_dir`, named
by the config and the input digests; after a kill, running the step again reloads it: finished
trials are neither re-run nor reported again as new (the observer reconciles what it already has),
and the trial that was cut short runs again.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components import artifacts, objectives
from components.errors import TunepipeError, disk_full
from components.model import data, hypermodel, network
from components.model.hyperparameters import model_values
from components.model.hypermodel import HypermodelSource
from components.transform import Transform
from components.tune import artifact, trials
from components.tune.algorithms import ALGORITHMS, grid_assignments, grid_points
from components.tune.config import TunerConfig
from components.tune.report import conditions_of
from components.tune.workers import shard, share_machine
from components.tune.observer import COMPLETED, FAILED, INVALID, SearchPlan, TrialObserver

log = logging.getLogger("tunepipe.tune")

# Beside Keras Tuner's own files in its project directory: the search's identity, which names the
# search to the observer (and so to the tracking store) across attempts.
SEARCH_ID_FILE = "tunepipe_search.json"


class _Progress:
    """The search's own account of its trials: record files, the observer's events, progress lines."""

    def __init__(self, observer: TrialObserver, objective: str, direction: str, expected_trials: int,
                 worker: int | None = None):
        self.observer = observer
        self.worker = worker
        self.objective = objective
        self.direction = direction
        self.expected_trials = expected_trials
        self._running: str | None = None
        self._tracking_id: str | None = None
        self._started = 0.0
        self._epochs = 0
        self._best: tuple[float, str] | None = None

    def search_begins(self, tuner) -> None:
        finished = trials.finished(tuner, self.worker)
        for trial in finished:
            if trial.status == COMPLETED and trial.score is not None:
                self._keep_best(trial.score, trial.label)
        self.reconcile(tuner)
        self.observer.search_planned(SearchPlan(self.expected_trials, finished, self.objective, self.direction))

    def reconcile(self, tuner) -> None:
        recorded = self.observer.reconcile(trials.finished(tuner, self.worker))
        for trial_id, tracking_id in recorded.items():
            trial_dir = tuner.get_trial_dir(trial_id)
            record = trials.read_record(trial_dir) or {"trial_id": trial_id}
            trials.write_record(trial_dir, {**record, "tracking_id": tracking_id})

    def trial_begins(self, trial) -> None:
        self._running, self._started, self._epochs = trial.trial_id, time.monotonic(), 0
        self._tracking_id = self.observer.trial_began(trials.start(trial, self.worker))

    def epoch_ends(self, trial, epoch: int, logs: dict[str, Any] | None) -> None:
        self._epochs += 1
        numbers = {name: float(value) for name, value in (logs or {}).items()
                   if isinstance(value, (int, float)) and math.isfinite(float(value))}
        try:
            self.observer.epoch_ended(trial.trial_id, epoch, numbers)
        except Exception as error:
            # The record failing (a tracking server gone) is not the trial failing: Keras Tuner would
            # fail it for good; this ends the search, the trial unfinished, to run again on resume.
            import keras_tuner

            raise keras_tuner.errors.FatalError(f"recording trial {trial.trial_id}: {error}") from error

    def trial_ends(self, trial, trial_dir: str, training_started: bool) -> None:
        status = COMPLETED if trial.status == "COMPLETED" else FAILED if training_started else INVALID
        error = None
        if status != COMPLETED:
            # Keras Tuner fails a trial whose objective is NaN without an exception, hence no message.
            error = trials.one_line(trial.message) or f"the objective {self.objective} was not a number"
        record = {"trial_id": trial.trial_id, "status": status,
                  "duration_s": round(time.monotonic() - self._started, 3), "epochs": self._epochs, "error": error,
                  "tracking_id": self._tracking_id}
        trials.write_record(trial_dir, record)
        self._running = None
        ended = trials.ended(trial, record, self.worker)
        self.observer.trial_ended(ended)
        self._report(ended)

    def interrupted(self) -> None:
        if self._running is not None:
            self.observer.interrupted()
            self._running = None

    def _keep_best(self, score: float, trial_id: str) -> None:
        if self._best is None or objectives.better(score, self._best[0], self.direction):
            self._best = (score, trial_id)

    def _report(self, trial) -> None:
        where = (f"bracket {trial.facts['bracket']} round {trial.facts['round']}, "
                 if trial.facts.get("bracket") is not None else "")
        if trial.status == COMPLETED:
            self._keep_best(trial.score, trial.label)
            outcome = f"{self.objective} {trial.score:.4f}"
        else:
            outcome = f"{trial.status}: {trial.error}"
        best = f"; best {self._best[0]:.4f} (trial {self._best[1]})" if self._best else ""
        log.info("tune: trial %s (%s%d epochs, %.1fs): %s%s [%d/%d]", trial.label, where, trial.epochs,
                 trial.duration_s, outcome, best, int(trial.trial_id) + 1, self.expected_trials)


@contextlib.contextmanager
def _state_written_whole() -> Iterator[None]:
    """Keras Tuner rewrites its state files (oracle.json, trial.json, tuner0.json) in place, so a
    full disk or a kill mid-write would leave one cut short and the search could not be resumed:
    while this holds, they are written whole (`artifacts.write_text_whole`), and a full disk ends
    the search even where Keras Tuner would fail a trial for it."""
    import keras_tuner
    from keras_tuner.src import utils

    original = utils.save_json

    def save_json(path, obj):
        if "://" in str(path):  # not a local file (gs://...): as Keras Tuner writes it
            return original(path, obj)
        text = json.dumps(obj)
        try:
            artifacts.write_text_whole(path, text)
        except OSError as error:
            if disk_full(error) is None:
                raise
            raise keras_tuner.errors.FatalError(str(error)) from error
        return text

    utils.save_json = save_json
    try:
        yield
    finally:
        utils.save_json = original


def _tuner_class(algorithm: str | None):
    """Keras Tuner's tuner class for `algorithm` (None: its base Tuner, for an oracle of our own), with
    the recording hooks; imported late, as Keras Tuner pulls in TensorFlow."""
    import keras_tuner

    base = getattr(keras_tuner, ALGORITHMS[algorithm].tuner) if algorithm else keras_tuner.Tuner

    class RecordingTuner(base):
        """Hooks into Keras Tuner's trial life cycle."""

        def __init__(self, *args, progress: _Progress, **kwargs):
            self.progress = progress
            super().__init__(*args, **kwargs)

        def on_search_begin(self):
            super().on_search_begin()
            self.progress.search_begins(self)

        def run_trial(self, trial, *args, **kwargs):
            try:
                return super().run_trial(trial, *args, **kwargs)
            except Exception as error:
                # A full disk is not the trial's failing (Keras Tuner would fail it for good): it
                # ends the search, the trial unfinished, to run again when the search resumes.
                if disk_full(error) is None:
                    raise
                raise keras_tuner.errors.FatalError(str(error)) from error

        def on_trial_begin(self, trial):
            super().on_trial_begin(trial)
            self.hypermodel.training_started = False
            self.progress.trial_begins(trial)

        def on_epoch_end(self, trial, keras_model, epoch, logs=None):
            super().on_epoch_end(trial, keras_model, epoch, logs=logs)
            self.progress.epoch_ends(trial, epoch, logs)

        def on_trial_end(self, trial):
            try:
                # Keras Tuner decides the final status here (a NaN score makes a trial failed) and saves it.
                super().on_trial_end(trial)
            finally:
                self.progress.trial_ends(trial, self.get_trial_dir(trial.trial_id), self.hypermodel.training_started)

        def on_search_end(self):
            super().on_search_end()
            self.progress.reconcile(self)

    return RecordingTuner


def model_builder(transform: Transform, space, source: HypermodelSource | None):
    """How a trial's model is built: the user's hypermodel module, or the built-in network."""
    if source is not None:
        return lambda hp: hypermodel.build_model(hp, transform, source, space)
    return lambda hp: network.build_model(hp, transform, space)


def declared_space(build) -> list:
    """The hyperparameters `build` declares with its defaults, as Keras Tuner holds them."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    build(hp)
    return hp.space


def _grid_space(space: list) -> list:
    """A Keras Tuner space as `components.tune.algorithms` counts and enumerates grids."""
    return [(found.name, list(found.values), [(condition.name, list(condition.values))
                                              for condition in found.conditions]) for found in space]


def _grid_shard_oracle(points: list[dict[str, Any]], **kwargs):
    """An oracle that proposes `points`, in order, each once (also across a resumed search)."""
    import keras_tuner

    class GridShardOracle(keras_tuner.Oracle):
        def populate_space(self, trial_id):
            for values in points:
                digest = self._compute_values_hash(values)
                if digest not in self._tried_so_far:
                    self._tried_so_far.add(digest)
                    return {"status": "RUNNING", "values": values}
            return {"status": "STOPPED", "values": None}

    return GridShardOracle(**kwargs)


def _grid(space: list, config: TunerConfig) -> int:
    """The number of grid points, said before the search starts (and capped by max_trials)."""
    points = grid_points(_grid_space(space))
    shown = f"more than {points - 1:,}" if points > 10**6 else f"{points:,}"
    if points > config.max_trials:
        log.warning("tune: the grid has %s points; tuner.max_trials=%d caps the search at the first %d",
                    shown, config.max_trials, config.max_trials)
    else:
        log.info("tune: grid search over %s points", shown)
    print(f"tune: grid search over {shown} points" + (f", capped at tuner.max_trials={config.max_trials}"
                                                       if points > config.max_trials else ""))
    return min(points, config.max_trials)


def _hypermodel(build, seed: int):
    import keras
    import keras_tuner

    class TabularHyperModel(keras_tuner.HyperModel):
        """`components.model.network.build_model` for Keras Tuner, failing a trial whose loss turns NaN."""

        def __init__(self):
            super().__init__(name="tunepipe")
            self.training_started = False

        def build(self, hp):
            # The same initial weights for the same architecture: trials differ by their hyperparameters only.
            keras.utils.set_random_seed(seed)
            return build(hp)

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

    return TabularHyperModel()


def _search_fingerprint(config: TunerConfig, examples_digest: str, transform_digest: str,
                        hypermodel_digest: str | None = None) -> str:
    """Names the Keras Tuner project: a changed config, input or hypermodel module starts a new
    search instead of resuming."""
    # parallel_trials is left out: a worker's share (components.tune.workers.shard) and its own state
    # directory already tell the searches of N workers apart, and serial searches keep their names.
    identity = {"config": config.model_dump(mode="json", exclude={"enabled", "retune_after_days", "hypermodel",
                                                                   "parallel_trials"}),
                "examples": examples_digest, "transform": transform_digest, "hypermodel": hypermodel_digest}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def search_id(project: Path) -> str:
    """The search's identity, made once per Keras Tuner project and kept across attempts."""
    path = project / SEARCH_ID_FILE
    try:
        return json.loads(path.read_text())["search_id"]
    except (FileNotFoundError, ValueError, KeyError):
        project.mkdir(parents=True, exist_ok=True)
        identity = uuid.uuid4().hex
        artifacts.write_text_whole(path, json.dumps({"search_id": identity}) + "\n")
        return identity


def project_dir(config: TunerConfig, examples: str | os.PathLike[str], transform: str | os.PathLike[str],
                work_dir: str | os.PathLike[str], hypermodel_digest: str | None = None) -> Path:
    """Where Keras Tuner keeps this search's state under `work_dir`."""
    examples_digest = artifacts.read_manifest(examples, artifacts.EXAMPLES)["digest"]
    transform_digest = artifacts.read_manifest(transform, artifacts.TRANSFORM)["digest"]
    fingerprint = _search_fingerprint(config, examples_digest, transform_digest, hypermodel_digest)
    return Path(work_dir) / f"{config.algorithm}-{fingerprint}"


@_state_written_whole()
def run(examples: str | os.PathLike[str], transform: str | os.PathLike[str], out: str | os.PathLike[str],
        config: TunerConfig, observer: TrialObserver | None = None, *, work_dir: str | os.PathLike[str] | None = None,
        callbacks: list | None = None, hypermodel_source: HypermodelSource | None = None, worker: int = 0,
        workers: int = 1) -> artifact.TuneResult:
    """Search the hyperparameters and write the `tuning` artifact at `out`.

    `observer` hears of every trial (see `components.tune.observer`). `work_dir` holds Keras
    Tuner's state and must survive a kill for the search to resume (default: beside `out`).
    `callbacks` are extra Keras callbacks for every trial. `hypermodel_source` is the user's model
    module (default: read from `config.hypermodel`, if set). `worker` of `workers` runs its share
    of a parallel search (`components.tune.workers`). With `config.enabled` false, no search runs
    and the default hyperparameters are the result.
    """
    out = Path(out)
    if workers > 1 and (threads := share_machine()) is not None:
        log.info("tune: worker %d shares this machine's CPUs with the workers running beside it: TensorFlow's "
                 "thread pools have %d thread(s) each", worker, threads)
    examples_manifest = artifacts.read_manifest(examples, artifacts.EXAMPLES)
    transform_manifest = artifacts.read_manifest(transform, artifacts.TRANSFORM)
    inputs = {"examples": str(examples), "examples_digest": examples_manifest["digest"],
              "transform": str(transform), "transform_digest": transform_manifest["digest"]}
    loaded = Transform.read(transform)
    whole = config.for_problem(loaded.kind)
    config = shard(whole, worker, workers)
    recorded_worker = worker if workers > 1 else None  # how its trials are labelled and recorded
    if workers > 1:
        inputs.update(worker=worker, workers=workers)
    space = config.search_space
    source = hypermodel_source or (HypermodelSource.read(config.hypermodel) if config.hypermodel else None)
    if source is not None:
        hypermodel.check(source, loaded, space)  # before any trial: a broken module is one line now
        inputs["hypermodel"], inputs["hypermodel_digest"] = f"{source.path}:{source.function}", source.digest
    build = model_builder(loaded, space, source)
    if not config.enabled:
        log.info("tune: tuning is off; the result is the model's default hyperparameters")
        import keras_tuner

        defaults = keras_tuner.HyperParameters()
        build(defaults)
        active = {found.name for found in defaults.space if defaults.is_active(found)}
        values = {name: value for name, value in model_values(defaults.values).items() if name in active}
        return artifact.write(out, config, values, None, [], {}, None, inputs)

    import keras
    import keras_tuner

    work_dir = Path(work_dir) if work_dir is not None else out.parent / f".{out.name}.tuner"
    project = project_dir(config, examples, transform, work_dir, source.digest if source else None)
    resuming = (project / "oracle.json").exists()
    direction = config.resolved_direction
    algorithm = ALGORITHMS[config.algorithm]
    points = None
    if config.algorithm == "grid":
        declared = declared_space(build)
        expected = _grid(declared, whole)
        if workers > 1:
            # A shard of the grid: the points dealt to this worker, tried in order by an oracle of our own.
            points = grid_assignments(_grid_space(declared), whole.max_trials)[worker::workers]
            expected = len(points)
            print(f"tune: worker {worker} of {workers} tries {expected} of them")
            if not points:  # a grid of fewer points than workers: this one has nothing to try
                return artifact.write(out, config, {}, None, [], {}, None, inputs)
    else:
        expected = algorithm.expected_trials(config)
    progress = _Progress(observer or TrialObserver(), config.objective, direction, expected, recorded_worker)
    inputs["search_id"] = search_id(project)
    progress.observer.search_began(inputs["search_id"])
    objective = keras_tuner.Objective(config.objective, direction)
    try:
        if points is not None:
            oracle = _grid_shard_oracle(points, objective=objective, max_trials=len(points), seed=config.seed,
                                        max_consecutive_failed_trials=config.max_consecutive_failed_trials)
            tuner = _tuner_class(None)(oracle, hypermodel=_hypermodel(build, config.seed), directory=str(work_dir),
                                       project_name=project.name, overwrite=False, progress=progress)
        else:
            tuner = _tuner_class(config.algorithm)(
                hypermodel=_hypermodel(build, config.seed), objective=objective, seed=config.seed,
                max_consecutive_failed_trials=config.max_consecutive_failed_trials, directory=str(work_dir),
                project_name=project.name, overwrite=False, progress=progress, **algorithm.arguments(config))
    except RuntimeError as error:
        raise TunepipeError(f"the tuner state in {project} cannot be reloaded ({trials.one_line(str(error))}); "
                            f"delete that directory to start the search over") from None
    if resuming:
        finished = sum(trial.status in ("COMPLETED", "FAILED") for trial in tuner.oracle.trials.values())
        log.info("tune: resuming the search in %s: %d trial(s) finished", project, finished)
    else:
        log.info("tune: %s search over %d hyperparameters, about %d trials; state in %s", config.algorithm,
                 len(tuner.oracle.hyperparameters.space), progress.expected_trials, project)

    train_split = data.dataset(examples, "train", loaded, config.batch_size, shuffle=True, seed=config.seed)
    eval_split = data.dataset(examples, "eval", loaded, config.batch_size)
    tensorboard = project / artifact.TENSORBOARD_DIR
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
        with network.expected_warnings():
            # shuffle=False: the dataset shuffles itself (Keras cannot shuffle a stream and warns if asked).
            tuner.search(train_split, validation_data=eval_split, epochs=config.max_epochs,
                         callbacks=trial_callbacks, shuffle=False, verbose=0)
    except RuntimeError as error:
        if "consecutive failures" not in str(error):
            raise
        last = trials.one_line(str(error).split("\n", 1)[-1])
        raise TunepipeError(f"tuning failed: {config.max_consecutive_failed_trials} trials in a row failed "
                            f"(tuner.max_consecutive_failed_trials); last error: {last}") from None
    finally:
        progress.interrupted()
        gc.unfreeze()

    finished = trials.finished(tuner, recorded_worker)
    completed = [trial for trial in finished if trial.status == COMPLETED]
    if not completed:
        errors = [trial.error for trial in finished if trial.error]
        raise TunepipeError(f"tuning failed: none of the {len(finished)} trials completed"
                            + (f"; last error: {errors[-1]}" if errors else ""))
    best_trial = tuner.oracle.get_best_trials(1)[0]
    result = artifact.write(out, config, best_trial.hyperparameters.values,
                            artifact.BestTrial(best_trial.trial_id, best_trial.score), finished,
                            tuner.oracle.hyperparameters.get_config(), tensorboard,
                            {**inputs, "work_dir": str(project)}, conditions_of(tuner.oracle.hyperparameters.space))
    log.info("tune: %d trials (%d completed) in %.0fs; best %s %.4f in trial %s: %s", len(finished), len(completed),
             time.monotonic() - started, config.objective, result.best_score, result.best_trial_id,
             json.dumps(result.best_hyperparameters, sort_keys=True))
    return result
