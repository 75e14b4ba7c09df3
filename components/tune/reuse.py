"""Retraining without searching again: when an earlier search's best hyperparameters may be reused
(the same search space and objective, not older than `tuner.retune_after_days`), and the `tuning`
artifact of a run that reuses them.

Finding the earlier search is the tracking store's business (`pipeline.hooks` asks it); this module
decides over plain values, so the rule is tested without a store or a model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import artifacts
from components.tune import artifact
from components.tune.config import TunerConfig

log = logging.getLogger("tunepipe.tune")


@dataclass(frozen=True)
class PreviousSearch:
    """The result of an earlier search, as its tune step run recorded it."""

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


def search_space_digest(config: TunerConfig, hypermodel_digest: str | None = None) -> str:
    """What makes an earlier search's best hyperparameters valid for this one: the same search space
    (and the same hypermodel module, if any), ranked by the same objective."""
    identity = {"search_space": config.search_space.model_dump(mode="json"), "objective": config.objective,
                "direction": config.resolved_direction,
                **({"hypermodel": hypermodel_digest} if hypermodel_digest else {})}
    return "space:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


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
          out: str | os.PathLike[str], config: TunerConfig, recorded: dict[str, Any] | None = None
          ) -> artifact.TuneResult:
    """The `tuning` artifact of a run that searches nothing: the best hyperparameters of `previous`
    (`recorded`: more facts for its manifest, e.g. which worker of a parallel search wrote it)."""
    examples_manifest = artifacts.read_manifest(examples, artifacts.EXAMPLES)
    transform_manifest = artifacts.read_manifest(transform, artifacts.TRANSFORM)
    inputs = {"examples": str(examples), "examples_digest": examples_manifest["digest"],
              "transform": str(transform), "transform_digest": transform_manifest["digest"],
              "reused_from": {"tune_run_id": previous.run_id, "pipeline_run_id": previous.pipeline_run_id,
                              "tuning": previous.tuning_uri, "tuning_digest": previous.tuning_digest,
                              "best_trial_id": previous.best_trial_id, "best_score": previous.best_score},
              **(recorded or {})}
    best = artifact.BestTrial(previous.best_trial_id, previous.best_score) if previous.best_score is not None else None
    result = artifact.write(Path(out), config, previous.best_hyperparameters, best, [], {}, None, inputs)
    log.info("tune: reusing the best hyperparameters of search run %s (%.1f days old): %s", previous.run_id,
             previous.age_days(), json.dumps(result.best_hyperparameters, sort_keys=True))
    return result
