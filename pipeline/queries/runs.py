"""`tunepipe runs`: one row per pipeline run, newest first.

A row says when the run started and how it ended, the data spans it read, the best trial score, the
eval accuracy, whether the model was blessed, the version it pushed (or why not) and which steps came
from kfp's cache. Facts of a step the cache answered come from the run that produced its outputs.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pipeline import steps, tags
from pipeline.queries.records import _fingerprint, _json_param, _spans
from pipeline.queries.store import Store, _time, open_store


@dataclass(frozen=True)
class RunRow:
    """One pipeline run, as `tunepipe runs` shows it."""

    run_id: str
    name: str
    experiment: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    started: dt.datetime | None
    ended: dt.datetime | None
    source: str | None
    spans: tuple[str, ...] | None  # None: the run did not record spans
    fingerprint: str | None
    code_version: str | None
    objective: str | None
    best_score: float | None
    trials: int | None
    eval_metrics: dict[str, float]
    blessed: bool | None
    pushed_version: str | None
    push_reason: str | None  # why it was pushed, or why not
    cached_steps: tuple[str, ...]
    failed_step: str | None = None
    error: str | None = None
    tuning: str | None = None  # searched, reused or off

    @property
    def accuracy(self) -> float | None:
        return self.eval_metrics.get("accuracy")

    @property
    def headline(self) -> tuple[str, float] | None:
        """The evaluation's leading metric: accuracy for a classifier, rmse for a regression."""
        return next(((name, self.eval_metrics[name]) for name in ("accuracy", "rmse") if name in self.eval_metrics),
                    None)

    @property
    def seconds(self) -> float | None:
        if self.started is None or self.ended is None:
            return None
        return (self.ended - self.started).total_seconds()


def pipeline_runs(experiment: str | None = None, *, limit: int | None = 20, tracking_uri: str | None = None,
                  store: Store | None = None) -> list[RunRow]:
    """The pipeline runs of `experiment` (every experiment when None), newest first."""
    store = store or open_store(tracking_uri)
    with store.errors():
        if experiment is not None:
            experiment_ids = [store.experiment_id(experiment)]
        else:
            experiment_ids = [found.experiment_id for found in store.experiments()]
        if not experiment_ids:
            return []
        pipelines = store.search(experiment_ids, f"tags.`{tags.KIND}` = '{tags.PIPELINE}'",
                                 order_by=["attributes.start_time DESC"], limit=limit)
        store.prefetch_steps(pipelines)  # one search for every row's steps, not one per row
        return [_run_row(store, pipeline) for pipeline in pipelines]


def _run_row(store: Store, pipeline: Any) -> RunRow:
    """One pipeline run's row; facts of steps the cache answered come from the runs that produced them."""
    step_runs = store.steps(pipeline)
    prefer = (pipeline.info.run_id,)
    source_run = step_runs.get("resolve-source")
    tune = store.effective(step_runs["tune"], prefer) if "tune" in step_runs else None
    tune_record = step_runs.get("tune")
    evaluate = store.effective(step_runs["evaluate"], prefer) if "evaluate" in step_runs else None
    push = step_runs.get("push")

    best_score = trials = None
    objective = None
    for candidate in (tune_record, tune):
        if candidate is not None and "best_score" in candidate.data.metrics:
            best_score = candidate.data.metrics["best_score"]
            break
    for candidate in (tune_record, tune):
        if candidate is not None and "trials" in candidate.data.metrics:
            trials = int(candidate.data.metrics["trials"])
            break
    if tune is not None:
        objective = tune.data.tags.get(tags.OBJECTIVE) or _json_param(tune, "tuner").get("objective")

    evaluate_metrics = evaluate.data.metrics if evaluate is not None else {}
    eval_metrics = {key.removeprefix("eval_"): value for key, value in evaluate_metrics.items()
                    if key.startswith("eval_")}
    blessed_tag = evaluate.data.tags.get(tags.BLESSED) if evaluate is not None else None
    unchanged = evaluate.data.tags.get(tags.UNCHANGED) if evaluate is not None else None
    # A candidate that is the model in production was not evaluated again: neither blessed nor not.
    blessed = None if blessed_tag is None or unchanged else blessed_tag == tags.flag(True)

    failed = next((run for run in step_runs.values() if run.info.status == "FAILED"), None)
    failed_step = failed.data.tags[tags.STEP] if failed is not None else None
    error = failed.data.tags.get(tags.ERROR) if failed is not None else None

    pushed_version = push_reason = None
    if push is not None and push.data.tags.get(tags.PUSHED) == tags.flag(True):
        pushed_version = push.data.tags.get(tags.PUSH_VERSION) or None
        push_reason = push.data.tags.get(tags.PUSH_REASON)
    elif push is not None and tags.PUSH_REASON in push.data.tags:
        push_reason = push.data.tags[tags.PUSH_REASON]
    elif failed_step is not None:
        push_reason = f"failed in {failed_step}" + (f": {error.splitlines()[0]}" if error else "")
    elif pipeline.info.status == "RUNNING":
        push_reason = "still running"
    elif unchanged:
        push_reason = f"already in production ({unchanged})"
    elif blessed is False:
        push_reason = "not blessed"
    elif pipeline.info.status in ("FAILED", "KILLED"):
        push_reason = f"the run {pipeline.info.status.lower()}"

    cached = tuple(name for name in steps.NAMES
                   if name in step_runs and step_runs[name].data.tags.get(tags.CACHED) == tags.flag(True))
    params = pipeline.data.params
    return RunRow(
        run_id=pipeline.info.run_id, name=pipeline.info.run_name or "", experiment=store.experiment_name(
            pipeline.info.experiment_id), status=pipeline.info.status, started=_time(pipeline.info.start_time),
        ended=_time(pipeline.info.end_time),
        source=(source_run.data.params.get("source") if source_run else None) or params.get("source"),
        spans=_spans(source_run.data.tags) if source_run else None, fingerprint=_fingerprint(source_run),
        code_version=params.get("code_version"), objective=objective, best_score=best_score, trials=trials,
        eval_metrics=eval_metrics, blessed=blessed, pushed_version=pushed_version, push_reason=push_reason,
        cached_steps=cached, failed_step=failed_step, error=error,
        tuning=tune.data.tags.get(tags.TUNING) if tune is not None else None)
