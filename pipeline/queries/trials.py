"""`tunepipe trials`: the tuner trials behind a pipeline run, best first; and `find_run`.

Trial runs are nested under the tune step's run (`pipeline.trial_tracking` writes them). When the
pipeline run's tune step came from kfp's cache, or retraining reused an earlier search's best
hyperparameters, the trials shown are those of the search that did the work.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from components import objectives
from components.errors import TunepipeError
from components.tune.observer import trial_label
from pipeline import tags
from pipeline.queries.records import _direction, _int, _json_param, _number
from pipeline.queries.store import Store, open_store

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class TrialRow:
    """One tuner trial (a nested run under the tune step's run)."""

    trial_id: str
    run_id: str
    status: str  # completed, failed, invalid, interrupted (components.tune.observer)
    score: float | None
    epochs: int | None
    duration_s: float | None
    best_epoch: int | None
    hyperparameters: dict[str, Any]
    bracket: int | None = None
    round: int | None = None
    continued_from: str | None = None
    error: str | None = None
    max_epoch: int | None = None


@dataclass(frozen=True)
class TrialSearch:
    """The trials of one tune step run, best first, and what ranked them."""

    tune_run_id: str
    pipeline_run_id: str | None
    objective: str | None
    direction: str  # max or min
    rows: tuple[TrialRow, ...]
    reused_by: str | None = None  # the pipeline run whose tune step the cache answered with this search

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def find_run(store: Store, reference: str) -> Any:
    """A run by id, or a pipeline run by its name (e.g. `penguins-20260101-030000`)."""
    if _RUN_ID.match(reference):
        return store.run(reference)
    experiment_ids = [experiment.experiment_id for experiment in store.experiments()]
    found = store.search(experiment_ids, f"attributes.run_name = {tags.quoted(reference)} "
                                         f"and tags.`{tags.KIND}` = '{tags.PIPELINE}'") if experiment_ids else []
    if not found:
        raise TunepipeError(f"no MLflow run {reference} in {store.uri} (give a run id or a pipeline run name; "
                            "`tunepipe runs` lists them)")
    if len(found) > 1:
        raise TunepipeError(f"{len(found)} pipeline runs are named {reference!r}: give the run id")
    return found[0]


def trials(run: str, *, tracking_uri: str | None = None, store: Store | None = None) -> TrialSearch:
    """The tuner trials of a pipeline run (or of a tune step run), best first.

    When the run's tune step came from kfp's cache, the trials are those of the run that produced
    the reused tuning artifact.
    """
    store = store or open_store(tracking_uri)
    with store.errors():
        found = find_run(store, run)
        recorded = found.data.tags
        reused_by = None
        if recorded.get(tags.KIND) == tags.PIPELINE:
            record = store.steps(found).get("tune")
            if record is None:
                raise TunepipeError(f"pipeline run {found.info.run_id} has no tune step"
                                    f"{' (it failed before tuning)' if found.info.status == 'FAILED' else ''}")
        elif recorded.get(tags.STEP) == "tune":
            record = found
        elif tags.TRIAL_ID in recorded:
            record = store.parent(found)
        elif tags.STEP in recorded:
            raise TunepipeError(f"run {found.info.run_id} is the {recorded[tags.STEP]} step: give a pipeline run "
                                "or a tune step run")
        else:
            raise TunepipeError(f"run {found.info.run_id} is not a tunepipe pipeline or tune step run")
        pipeline_id = record.data.tags.get(tags.PARENT_RUN)
        tune = store.effective(record)
        if tune is None:
            raise TunepipeError(f"the tune step of run {pipeline_id} came from kfp's cache, and no run in "
                                f"{store.uri} produced the tuning artifact it reused")
        if tune.info.run_id != record.info.run_id:
            reused_by = pipeline_id
        if tune.data.tags.get(tags.REUSED_FROM):
            # Retraining reused an earlier search's best hyperparameters: these are that search's trials.
            tune, reused_by = store.run(tune.data.tags[tags.REUSED_FROM]), pipeline_id
        trial_runs = [child for child in store.children(tune) if tags.TRIAL_ID in child.data.tags]
        rows = [_trial_row(child) for child in trial_runs]
        objective = next((child.data.tags[tags.OBJECTIVE] for child in trial_runs
                          if child.data.tags.get(tags.OBJECTIVE)), None) or _json_param(tune, "tuner").get("objective")
        direction = _direction(tune, objective)
        return TrialSearch(tune_run_id=tune.info.run_id, pipeline_run_id=tune.data.tags.get(tags.PARENT_RUN),
                           objective=objective, direction=direction, rows=tuple(_best_first(rows, direction)),
                           reused_by=reused_by)


def _trial_row(run: Any) -> TrialRow:
    params, metrics, recorded = run.data.params, run.data.metrics, run.data.tags
    hyperparameters = {name: _number(value) for name, value in sorted(params.items()) if name not in tags.TRIAL_FACTS}
    status = recorded.get(tags.TRIAL_STATUS) or ("running" if run.info.status == "RUNNING" else run.info.status.lower())
    return TrialRow(
        trial_id=trial_label(recorded.get(tags.TRIAL_ID) or params.get("trial_id", ""), recorded.get(tags.WORKER)),
        run_id=run.info.run_id, status=status,
        score=metrics.get("score"), epochs=_int(metrics.get("epochs")), duration_s=metrics.get("duration_s"),
        best_epoch=_int(metrics.get("best_epoch")), hyperparameters=hyperparameters,
        bracket=_int(_number(params.get("bracket"))), round=_int(_number(params.get("round"))),
        continued_from=params.get("continued_from"), error=recorded.get(tags.ERROR),
        max_epoch=_int(_number(params.get("max_epoch"))))


def _best_first(rows: list[TrialRow], direction: str) -> list[TrialRow]:
    sign = -1.0 if direction == objectives.MAX else 1.0

    def key(row: TrialRow) -> tuple:
        scored = row.score is not None and row.status in ("completed", "finished")
        return (0 if scored else 1, sign * row.score if scored else 0.0, row.trial_id)

    return sorted(rows, key=key)


def report(search: TrialSearch) -> str:
    """The tuning report (`components.tune.report`) of a recorded search, as one HTML page."""
    from components.tune.report import ReportSearch, ReportTrial, render

    rows = [ReportTrial(row.trial_id, row.status, row.score, row.hyperparameters, row.epochs, row.bracket, row.round,
                        row.max_epoch, row.duration_s, row.error) for row in search.rows]
    title = f"Tuning report: tune run {search.tune_run_id} (pipeline run {search.pipeline_run_id})"
    return render(ReportSearch(title, search.objective or "score", search.direction, rows))
