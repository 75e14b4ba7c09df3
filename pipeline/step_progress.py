"""What the tune and train steps show a person while they run: a progress line (`pipeline.progress`)
per finished trial and per epoch, and the composite observers that hand a step's events both to these
lines and to tracking, so that progress shows with tracking on or off.

  tune: trial 3 of 10 (bracket 1, round 0): val_accuracy 1.0000, best 1.0000 · 20 s elapsed, ~46 s left
  tune-worker 1 of 2: trial 2 of 5: val_accuracy 0.9365, best 0.9365 · 12 s elapsed, ~18 s left
  train: epoch 14 of 100: val_loss 0.0057, best 0.0063 (epoch 10), 4 of 10 epochs not 0.001 better · 11 s elapsed

The remaining time of a search is this attempt's time per trial times the trials left: a rough guide
for Hyperband, whose later brackets run fewer trials of more epochs each.
"""
from __future__ import annotations

from collections.abc import Callable

from components import objectives
from components.train import early_stopping
from components.tune.observer import COMPLETED, SearchPlan, TrialEnd, TrialObserver, TrialStart
from pipeline import progress

EpochObserver = Callable[[int, dict[str, float]], None]
_ERROR_SHOWN = 160  # characters of a failed trial's error on its line; the log and the trials table have all of it


def step_label(worker: int | None = None, workers: int = 1) -> str:
    """`tune`, or `tune-worker 0 of 2` for a worker of a parallel search (numbered as its trials are)."""
    return "tune" if workers <= 1 else f"tune-worker {worker} of {workers}"


class TrialProgress(TrialObserver):
    """One line per finished trial: n of N, Hyperband's bracket and round, the score, the best so far,
    the time elapsed and an estimate of the time left."""

    def __init__(self, step: str = "tune", report: Callable[[str, str], None] = progress.report):
        self.step, self.report = step, report
        self.expected, self.done, self.resumed = 0, 0, 0
        self.objective, self.direction = "score", objectives.MAX
        self.best: float | None = None
        self.clock = progress.Clock()

    def search_planned(self, plan: SearchPlan) -> None:
        self.expected, self.done = plan.expected_trials, len(plan.finished)
        self.resumed = self.done
        self.objective, self.direction = plan.objective, plan.direction
        for trial in plan.finished:
            self._keep(trial)
        # This attempt's pace: the trials a resumed search finished earlier took no time now.
        self.clock = progress.Clock(max(0, plan.expected_trials - self.done))
        if self.done:
            best = f", best {self.objective} {self.best:.4f}" if self.best is not None else ""
            self.report(self.step, f"resuming the search: {self.done} of {self._total} trials finished{best}")
        else:
            self.report(self.step, f"searching: {self.expected} trials, {self.objective} "
                                   f"({'higher' if self.direction == objectives.MAX else 'lower'} is better)")

    def trial_ended(self, trial: TrialEnd) -> None:
        self.done += 1
        self._keep(trial)
        where = (f" (bracket {trial.facts['bracket']}, round {trial.facts['round']})"
                 if trial.facts.get("bracket") is not None else "")
        if trial.status == COMPLETED and trial.score is not None:
            outcome = f"{self.objective} {trial.score:.4f}"
        else:
            error = trial.error or "no reason given"
            outcome = f"{trial.status} ({error if len(error) <= _ERROR_SHOWN else error[:_ERROR_SHOWN - 1] + '…'})"
        best = f", best {self.best:.4f}" if self.best is not None else ""
        timing = f"{progress.duration(self.clock.elapsed())} elapsed"
        left = self.clock.remaining(self.done - self.resumed)
        if left is not None and self.done < self._total:
            timing += f", ~{progress.duration(left)} left"
        self.report(self.step, f"trial {self.done} of {self._total}{where}: {outcome}{best} · {timing}")

    @property
    def _total(self) -> int:
        # A search that runs more trials than expected (Keras Tuner decides) is not shown as 11 of 10.
        return max(self.expected, self.done)

    def _keep(self, trial: TrialEnd) -> None:
        if trial.status == COMPLETED and trial.score is not None and (
                self.best is None or objectives.better(trial.score, self.best, self.direction)):
            self.best = trial.score


class EpochProgress:
    """An epoch observer for the train step: one line per epoch with the monitored metric, its best
    so far as early stopping counts it (better by at least `min_delta`), and the epochs since that
    best against the patience: at `patience` of them training stops."""

    def __init__(self, epochs: int, monitor: str, min_delta: float, patience: int,
                 report: Callable[[str, str], None] = progress.report):
        self.epochs, self.monitor, self.min_delta, self.patience = epochs, monitor, min_delta, patience
        self.direction = objectives.direction(monitor)
        self.report = report
        self.best: float | None = None
        self.best_epoch = 0
        self.clock = progress.Clock(epochs)

    def __call__(self, epoch: int, logs: dict[str, float]) -> None:
        value = logs.get(self.monitor)
        if value is None:
            shown = f"{self.monitor} not logged"
        else:
            if early_stopping.improves(value, self.best, self.direction, self.min_delta):
                self.best, self.best_epoch = value, epoch + 1
            shown = f"{self.monitor} {value:.4f}, best {self.best:.4f} (epoch {self.best_epoch})"
            waiting = epoch + 1 - self.best_epoch
            if waiting:
                margin = f" {self.min_delta:g}" if self.min_delta else ""
                shown += f", {waiting} of {self.patience} epochs not{margin} better"
        self.report("train", f"epoch {epoch + 1} of {self.epochs}: {shown} · "
                             f"{progress.duration(self.clock.elapsed())} elapsed")


class Observers(TrialObserver):
    """Every event of a search to each of `observers` in turn (None ones left out); a trial's id is
    the first one any of them gives."""

    def __init__(self, *observers: TrialObserver | None):
        self.observers = [observer for observer in observers if observer is not None]

    def search_began(self, search_id: str) -> None:
        for observer in self.observers:
            observer.search_began(search_id)

    def search_planned(self, plan: SearchPlan) -> None:
        for observer in self.observers:
            observer.search_planned(plan)

    def trial_began(self, trial: TrialStart) -> str | None:
        answers = [observer.trial_began(trial) for observer in self.observers]
        return next((answer for answer in answers if answer is not None), None)

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict[str, float]) -> None:
        for observer in self.observers:
            observer.epoch_ended(trial_id, epoch, logs)

    def trial_ended(self, trial: TrialEnd) -> None:
        for observer in self.observers:
            observer.trial_ended(trial)

    def reconcile(self, finished: list[TrialEnd]) -> dict[str, str]:
        recorded: dict[str, str] = {}
        for observer in self.observers:
            for trial_id, tracking_id in observer.reconcile(finished).items():
                recorded.setdefault(trial_id, tracking_id)
        return recorded

    def interrupted(self) -> None:
        for observer in self.observers:
            observer.interrupted()


def epochs_to(*observers: EpochObserver | None) -> EpochObserver:
    """One epoch observer that calls each of `observers` (None ones left out) in turn."""
    present = [observer for observer in observers if observer is not None]

    def each(epoch: int, logs: dict[str, float]) -> None:
        for observer in present:
            observer(epoch, logs)

    return each


class RowsProgress:
    """Evaluate's progress: the rows TFMA has evaluated so far, at the rate it goes."""

    def __init__(self, step: str = "evaluate"):
        self._step, self._clock = step, progress.Clock()

    def __call__(self, rows: int) -> None:
        elapsed = self._clock.elapsed()
        rate = f", {rows / elapsed:,.0f} rows/s" if elapsed > 0 else ""
        progress.report(self._step, f"{rows:,} rows evaluated · {progress.duration(elapsed)} elapsed{rate}")

