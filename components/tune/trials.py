"""A search's trials as the tune step keeps them: what Keras Tuner does not save itself (the status
kind, duration, epochs trained, error and the observer's id) in a record file beside each trial's
`trial.json`, and the trials table of the `tuning` artifact.

    trials.csv   one row per trial: id, status, score, epochs, bracket, round, duration, error,
                 the observer's id (`tracking_id`) and one `hp.<name>` column per hyperparameter
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from components import artifacts
from components.model.hyperparameters import model_values
from components.tune.observer import COMPLETED, FAILED, TrialEnd, TrialStart

TRIAL_RECORD = "tunepipe_trial.json"
TRIALS_TABLE = "trials.csv"
_TABLE_COLUMNS = ("trial_id", "worker", "status", "score", "epochs", "initial_epoch", "best_epoch", "bracket", "round",
                  "continued_from", "duration_s", "error", "tracking_id")


def one_line(message: str | None) -> str | None:
    """The last line of a Keras Tuner trial message (a traceback), with the exception's module path cut."""
    if not message:
        return None
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = re.match(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)): (.*)$", lines[-1])
    return f"{match.group(1)}: {match.group(2)}" if match else lines[-1]


def facts(trial) -> dict[str, Any]:
    """Keras Tuner's bookkeeping of a trial: Hyperband's bracket and round, its epochs, what it continues."""
    values = trial.hyperparameters.values
    return {
        "bracket": values.get("tuner/bracket"),
        "round": values.get("tuner/round"),
        "initial_epoch": values.get("tuner/initial_epoch"),
        "max_epoch": values.get("tuner/epochs"),
        "continued_from": values.get("tuner/trial_id"),
    }


def start(trial, worker: int | None = None) -> TrialStart:
    return TrialStart(trial.trial_id, model_values(trial.hyperparameters.values), facts(trial), worker)


def best_epoch(trial) -> int | None:
    """The 1-based epoch of the trial's best objective value; Keras Tuner counts from the trial's first epoch."""
    if trial.score is None or trial.best_step is None:
        return None
    return (trial.hyperparameters.values.get("tuner/initial_epoch") or 0) + trial.best_step + 1


def write_record(trial_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    artifacts.write_text_whole(Path(trial_dir, TRIAL_RECORD), json.dumps(record, indent=2) + "\n")


def read_record(trial_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        return json.loads(Path(trial_dir, TRIAL_RECORD).read_text())
    except (FileNotFoundError, ValueError):
        return None


def ended(trial, record: dict[str, Any], worker: int | None = None) -> TrialEnd:
    """A finished Keras Tuner trial and its record file as one `TrialEnd`."""
    completed = trial.status == "COMPLETED"
    return TrialEnd(
        trial_id=trial.trial_id,
        status=record.get("status") or (COMPLETED if completed else FAILED),
        score=float(trial.score) if completed and trial.score is not None else None,
        hyperparameters=model_values(trial.hyperparameters.values), facts=facts(trial),
        epochs=record.get("epochs"), best_epoch=best_epoch(trial) if completed else None,
        duration_s=record.get("duration_s"),
        error=record.get("error") or (None if completed else one_line(trial.message)),
        tracking_id=record.get("tracking_id"), worker=worker)


def finished(tuner, worker: int | None = None) -> list[TrialEnd]:
    """Every trial of the search that ran to an end, in trial order (one cut short is left out
    until it has run again)."""
    found = []
    for trial_id in sorted(tuner.oracle.trials):
        trial = tuner.oracle.trials[trial_id]
        if trial.status in ("COMPLETED", "FAILED"):
            found.append(ended(trial, read_record(tuner.get_trial_dir(trial_id)) or {}, worker))
    return found


def write_table(path: str | os.PathLike[str], trials: list[TrialEnd]) -> None:
    names = sorted({name for trial in trials for name in trial.hyperparameters})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*_TABLE_COLUMNS, *(f"hp.{name}" for name in names)])
        for trial in trials:
            cells = {**trial.facts, **{column: getattr(trial, column) for column in _TABLE_COLUMNS
                                       if hasattr(trial, column)}, "trial_id": trial.label}
            row = [cells.get(column) for column in _TABLE_COLUMNS] + [trial.hyperparameters.get(name) for name in names]
            writer.writerow(["" if value is None else value for value in row])


def read_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


TRIALS_RECORDS = "trials.json"


def write_records(path: str | os.PathLike[str], trials: list[TrialEnd]) -> None:
    """Every trial in full, as a later step (merging parallel workers) reads them back."""
    Path(path).write_text(json.dumps([dataclasses.asdict(trial) for trial in trials], indent=2, default=str) + "\n")


def read_records(path: str | os.PathLike[str]) -> list[TrialEnd]:
    return [TrialEnd(**record) for record in json.loads(Path(path).read_text())]
