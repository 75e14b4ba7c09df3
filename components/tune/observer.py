"""What the search tells whoever records it: what it will run, a trial began, an epoch ended, a
trial ended.

The tune step knows nothing of the tracking store. It reports each trial's life to the observer it
is given; `pipeline.trial_tracking` is the observer that turns those events into nested MLflow
runs, and the tests give an in-memory one (as Keras Tuner's own tests drive an oracle with a stub).
The base class ignores every event, so a search run without tracking passes `TrialObserver()`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COMPLETED = "completed"
FAILED = "failed"
# Failed before training started: the hyperparameters did not give a model that could be built.
INVALID = "invalid"
INTERRUPTED = "interrupted"
FINAL_STATUSES = (COMPLETED, FAILED, INVALID)


@dataclass(frozen=True)
class TrialStart:
    trial_id: str
    hyperparameters: dict[str, Any]  # the model's, without Keras Tuner's bookkeeping
    # Keras Tuner's bookkeeping: Hyperband's bracket and round, the epochs the trial trains
    # (initial_epoch, max_epoch) and the trial it continues (continued_from); None when it has none.
    facts: dict[str, Any] = field(default_factory=dict)
    worker: int | None = None  # the worker of a search run in parallel (tuner.parallel_trials)


@dataclass(frozen=True)
class TrialEnd:
    trial_id: str
    status: str  # COMPLETED, FAILED or INVALID
    score: float | None
    hyperparameters: dict[str, Any]
    facts: dict[str, Any]
    epochs: int | None  # epochs trained in this trial (Hyperband continues earlier trials: only the new ones)
    best_epoch: int | None  # 1-based, counted from the first epoch of the trial it continues
    duration_s: float | None
    error: str | None
    tracking_id: str | None  # what the observer answered when the trial began
    worker: int | None = None

    @property
    def label(self) -> str:
        return trial_label(self.trial_id, self.worker)


@dataclass(frozen=True)
class SearchPlan:
    """What a search (or a worker's share of one) is about to run, said once its tuner is loaded."""

    expected_trials: int  # every trial it is expected to run, those a resumed search finished included
    finished: list[TrialEnd]  # the trials a resumed search finished before this attempt (not run again)
    objective: str
    direction: str  # max or min


class TrialObserver:
    """Receives a search's events; every method may be left as it is."""

    def search_began(self, search_id: str) -> None:
        """A search starts or resumes. `search_id` names it across attempts: a resumed search has
        the id of the attempt it continues."""

    def search_planned(self, plan: SearchPlan) -> None:
        """The tuner is loaded and the first trial is about to run: how many trials the search is
        expected to run and which a resumed search has finished already."""

    def trial_began(self, trial: TrialStart) -> str | None:
        """A trial starts training. Returns the observer's id for it (e.g. its tracking run), kept
        in the trial's record and the trials table; None when it records nothing for it."""
        return None

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict[str, float]) -> None:
        """Epoch `epoch` (0-based, counted across a continued trial) ended with these metrics."""

    def trial_ended(self, trial: TrialEnd) -> None:
        """A trial ended with its final status (not called for one cut short by a kill)."""

    def reconcile(self, finished: list[TrialEnd]) -> dict[str, str]:
        """Called when a search starts (a resumed one has finished trials) and when it ends, with
        every finished trial: record the ones not recorded yet (a kill between Keras Tuner ending a
        trial and `trial_ended`). Returns the ids of the trials it recorded now."""
        return {}

    def interrupted(self) -> None:
        """The search was cut short (a kill, Ctrl-C) while a trial was running."""


def trial_label(trial_id: str, worker: int | str | None) -> str:
    """A trial's name in one search over every worker: `03`, or `1-03` for worker 1's trial 03 of a
    parallel search (Keras Tuner's ids count each worker's trials from 0)."""
    return trial_id if worker is None or worker == "" else f"{worker}-{trial_id}"
