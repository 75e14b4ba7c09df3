"""The `tuning` artifact the tune step writes and train reads:

    best_hyperparameters.json   name -> value, the input of the train step
    trials.csv                  one row per trial (`components.tune.trials`)
    trials.json                 the same trials in full, for merging parallel workers
    search_space.json           the Keras Tuner search space as declared, with `conditions`: when
                                each conditional hyperparameter is active
    report.html                 the tuning report (components.tune.report)
    tensorboard/<trial id>/     TensorBoard logs (scalars and HParams) per trial
    _manifest.json              written last
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import artifacts
from components.model.hyperparameters import model_values, write_hyperparameters
from components.tune.config import TunerConfig
from components.tune.observer import FINAL_STATUSES, TrialEnd
from components.tune.report import REPORT, ReportSearch, ReportTrial, render  # noqa: F401 (REPORT: the artifact's file)
from components.tune.trials import TRIALS_RECORDS, TRIALS_TABLE, write_records, write_table

BEST_HYPERPARAMETERS = "best_hyperparameters.json"
SEARCH_SPACE = "search_space.json"
TENSORBOARD_DIR = "tensorboard"


@dataclass(frozen=True)
class TuneResult:
    path: str
    best_hyperparameters: dict[str, Any]
    best_trial_id: str | None
    best_score: float | None
    objective: str
    direction: str
    trials: tuple[TrialEnd, ...]
    digest: str


@dataclass(frozen=True)
class BestTrial:
    trial_id: str | None
    score: float


def report_trials(trials: list[TrialEnd]) -> list[ReportTrial]:
    return [ReportTrial(trial.label, trial.status, trial.score, trial.hyperparameters, trial.epochs,
                        trial.facts.get("bracket"), trial.facts.get("round"), trial.facts.get("max_epoch"),
                        trial.duration_s, trial.error) for trial in trials]


def write(out: Path, config: TunerConfig, best: dict[str, Any], best_trial: BestTrial | None,
          trials: list[TrialEnd], search_space: dict[str, Any], tensorboard: Path | None,
          inputs: dict[str, Any], conditions: dict[str, str] | None = None) -> TuneResult:
    """Write the `tuning` artifact at `out`: the best hyperparameters, every trial, the search space
    and the report."""
    direction = config.resolved_direction
    with artifacts.building(out) as partial:
        write_hyperparameters(partial / BEST_HYPERPARAMETERS, best)
        write_table(partial / TRIALS_TABLE, trials)
        write_records(partial / TRIALS_RECORDS, trials)
        (partial / SEARCH_SPACE).write_text(json.dumps({**search_space, "conditions": conditions or {}}, indent=2,
                                                       default=str) + "\n")
        title = f"Tuning report: {config.algorithm} search on {config.objective}" if config.enabled else \
            "Tuning report: tuning off (the default hyperparameters)"
        (partial / REPORT).write_text(render(ReportSearch(title, config.objective or "", direction,
                                                          report_trials(trials), conditions or {})))
        if tensorboard is not None and tensorboard.is_dir():
            shutil.copytree(tensorboard, partial / TENSORBOARD_DIR)
        counts = {status: sum(trial.status == status for trial in trials) for status in FINAL_STATUSES}
        manifest = artifacts.write_manifest(
            partial, artifacts.TUNING, "tune", algorithm=config.algorithm if config.enabled else None,
            objective=config.objective, direction=direction,
            best_trial_id=best_trial.trial_id if best_trial else None,
            best_score=float(best_trial.score) if best_trial else None, trials=counts, **inputs)
    return TuneResult(str(out), model_values(best), best_trial.trial_id if best_trial else None,
                      float(best_trial.score) if best_trial else None, config.objective, direction, tuple(trials),
                      manifest["digest"])
