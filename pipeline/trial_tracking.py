"""The tuner's trials in MLflow: the observer the tune step reports to (`components.tune.observer`),
each trial one nested run under the tune step's run, and the look-up of the last finished search
that retraining reuses.

A trial run carries the trial id, Hyperband's bracket and round and the hyperparameters as params,
the train/eval metrics per epoch (step = epoch), the score, epochs, best epoch and duration as
metrics, and its status as a tag (`pipeline.tags`). Every finished trial is recorded exactly once:
a trial's run is looked up by its search and trial id before one is created, a run cut short by a
kill is deleted before the trial runs again, and `reconcile` gives a trial that finished without
its run (a kill between Keras Tuner ending it and the run being closed) the run it lacks. A
resumed search takes the finished trial runs of its earlier attempts under its own run, unless
the attempt finished and its output went on (a step took it as input).
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, Iterator

from components import artifacts
from components.tune.config import TunerConfig
from components.tune.observer import (COMPLETED, FINAL_STATUSES, INTERRUPTED, TrialEnd, TrialObserver, TrialStart,
                                      trial_label)
from components.tune.reuse import PreviousSearch, search_space_digest
from pipeline import tags

log = logging.getLogger("tunepipe.tune")


class MlflowTrials(TrialObserver):
    """Records a search's trials as nested MLflow runs under `parent_run_id` (the tune step's run,
    or a worker's run of a parallel search: `worker`, its trials tagged with it)."""

    def __init__(self, parent_run_id: str, objective: str, worker: int | None = None):
        import mlflow

        self.parent_run_id = parent_run_id
        self.objective = objective
        self.worker = worker
        self.search_id = ""
        self._client = mlflow.MlflowClient()
        self._experiment_id = self._client.get_run(parent_run_id).info.experiment_id
        self._open: dict[str, str] = {}  # trial id -> the run of a trial that is training

    def search_began(self, search_id: str) -> None:
        """A search starting or resuming: the trials an earlier attempt of it finished move under
        this attempt's run unless that attempt keeps them (`_keeps_trials`), so that the run whose
        output goes on holds all the search's trials as `tunepipe trials` and lineage read them."""
        self.search_id = search_id
        keeps: dict[str, bool] = {self.parent_run_id: True}
        for run in self._runs().values():
            parent = run.data.tags.get(tags.PARENT_RUN)
            if parent not in keeps:
                keeps[parent] = not parent or self._keeps_trials(parent)
            if not keeps[parent] and run.data.tags.get(tags.TRIAL_STATUS) in FINAL_STATUSES:
                self._client.set_tag(run.info.run_id, tags.PARENT_RUN, self.parent_run_id)

    def _keeps_trials(self, run_id: str) -> bool:
        """Whether the earlier attempt `run_id` keeps its trial runs: its step run finished and its
        output went on (`_output_went_on`). An attempt cut short gives them up, and so does one that
        finished just before its pipeline run was killed, before kfp.local cached its output (the
        next run runs the step again), or one that KFP retried."""
        from mlflow.exceptions import MlflowException

        try:
            attempt = self._client.get_run(run_id)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return True  # gone: nothing to take the trials from
            raise
        return (attempt.info.lifecycle_stage != "deleted" and attempt.info.status == "FINISHED"
                and _output_went_on(self._client, self._experiment_id, attempt))

    def trial_began(self, trial: TrialStart) -> str | None:
        existing = self._runs(trial.trial_id).get(trial.trial_id)
        if existing is not None:
            if existing.data.tags.get(tags.TRIAL_STATUS) in FINAL_STATUSES:
                log.warning("tune: trial %s is already recorded in MLflow run %s; not recording it again",
                            trial.trial_id, existing.info.run_id)
                return None
            # An attempt cut short by a kill: its partial epochs would mix with the rerun's.
            self._client.delete_run(existing.info.run_id)
        run_id = self._create_run(trial.trial_id, trial.hyperparameters, trial.facts)
        self._open[trial.trial_id] = run_id
        return run_id

    def epoch_ended(self, trial_id: str, epoch: int, logs: dict[str, float]) -> None:
        run_id = self._open.get(trial_id)
        if run_id is None or not logs:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(run_id, metrics=[Metric(name, value, now, epoch) for name, value in logs.items()])

    def trial_ended(self, trial: TrialEnd) -> None:
        run_id = self._open.pop(trial.trial_id, None)
        if run_id is not None:
            self._finish_run(run_id, trial)

    def reconcile(self, finished: list[TrialEnd]) -> dict[str, str]:
        runs = self._runs()
        recorded = {}
        for trial in finished:
            run = runs.get(trial.trial_id)
            if run is not None and run.data.tags.get(tags.TRIAL_STATUS) in FINAL_STATUSES:
                continue
            run_id = run.info.run_id if run is not None else self._create_run(trial.trial_id, trial.hyperparameters,
                                                                               trial.facts)
            if run is not None:  # this search's run now, and no longer "killed"
                self._client.set_tag(run_id, tags.PARENT_RUN, self.parent_run_id)
                if tags.ERROR in run.data.tags:
                    self._client.delete_tag(run_id, tags.ERROR)
            self._finish_run(run_id, trial)
            recorded[trial.trial_id] = run_id
        return recorded

    def interrupted(self) -> None:
        for run_id in self._open.values():
            self._client.set_tag(run_id, tags.TRIAL_STATUS, INTERRUPTED)
            self._client.set_terminated(run_id, "KILLED")
        self._open.clear()

    def _runs(self, trial_id: str | None = None) -> dict[str, Any]:
        """This search's trial runs by trial id (deleted runs excluded)."""
        query = f"tags.`{tags.SEARCH_ID}` = '{self.search_id}'"
        if trial_id is not None:
            query += f" and tags.`{tags.TRIAL_ID}` = '{trial_id}'"
        return {run.data.tags[tags.TRIAL_ID]: run for run in _search_runs(self._client, self._experiment_id, query)}

    def _create_run(self, trial_id: str, hyperparameters: dict[str, Any], facts: dict[str, Any]) -> str:
        from mlflow.entities import Param

        worker = {} if self.worker is None else {tags.WORKER: str(self.worker)}
        name = f"trial-{trial_label(trial_id, self.worker)}"
        run = self._client.create_run(self._experiment_id, run_name=name, tags={
            tags.PARENT_RUN: self.parent_run_id, tags.SEARCH_ID: self.search_id, tags.TRIAL_ID: trial_id,
            tags.OBJECTIVE: self.objective, **worker})
        params = {"trial_id": trial_id, **{name: value for name, value in facts.items() if value is not None},
                  **hyperparameters}
        self._client.log_batch(run.info.run_id, params=[Param(name, str(value)) for name, value in params.items()])
        return run.info.run_id

    def _finish_run(self, run_id: str, trial: TrialEnd) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = {"duration_s": trial.duration_s, "epochs": trial.epochs, "score": trial.score,
                   "best_epoch": trial.best_epoch if trial.status == COMPLETED else None}
        self._client.log_batch(run_id, metrics=[
            Metric(name, float(value), now, 0) for name, value in metrics.items()
            if value is not None and math.isfinite(float(value))])
        self._client.set_tag(run_id, tags.TRIAL_STATUS, trial.status)
        if trial.error:
            self._client.set_tag(run_id, tags.ERROR, trial.error[:tags.TAG_LIMIT])
        self._client.set_terminated(run_id, "FINISHED" if trial.status == COMPLETED else "FAILED")


def _search_runs(client, experiment_id: str, query: str) -> Iterator[Any]:
    """Every run of `experiment_id` matching `query`, page by page."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def adopt(experiment_id: str, search_ids: list[str], parent_run_id: str) -> int:
    """Move the trial runs of the searches `search_ids` (the workers' of a parallel search) from
    their worker's run to `parent_run_id` (the merge's run, the search's tune run on the record);
    how many it moved. An earlier attempt of this merge (a run of it under the same pipeline run,
    killed after moving them and retried by KFP) gives them up; a merge of another pipeline run
    keeps them if it is still running or finished with its output taken on (a merge run again over
    cached workers does not take the trials of a search a model came from), else gives them up."""
    from mlflow import MlflowClient

    client, moved, movable = MlflowClient(), 0, {}
    pipeline = client.get_run(parent_run_id).data.tags.get(tags.PARENT_RUN)
    for search in search_ids:
        for run in _search_runs(client, experiment_id, f"tags.`{tags.SEARCH_ID}` = '{search}'"):
            parent = run.data.tags.get(tags.PARENT_RUN)
            if parent == parent_run_id:
                continue
            if parent not in movable:
                movable[parent] = _gives_up_trials(client, parent, pipeline)
            if movable[parent]:
                client.set_tag(run.info.run_id, tags.PARENT_RUN, parent_run_id)
                moved += 1
    return moved


def _gives_up_trials(client, run_id: str | None, pipeline: str | None) -> bool:
    """Whether the trial runs under `run_id` go to a merge under the pipeline run `pipeline`."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return True
    try:
        owner = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return True  # gone: nothing to take the trials from
        raise
    step = owner.data.tags.get(tags.STEP)
    if owner.info.lifecycle_stage == "deleted" or step == "tune-worker":
        return True
    if step != "tune":
        return False
    if owner.info.status in ("KILLED", "FAILED"):
        return True
    if owner.info.status == "FINISHED":
        return not _output_went_on(client, owner.info.experiment_id, owner)
    # Running: an earlier attempt of this merge, under the same pipeline run (or, for a merge run on
    # its own, outside any), or a merge of another pipeline run still going.
    return pipeline is None or owner.data.tags.get(tags.PARENT_RUN) == pipeline


def _output_went_on(client, experiment_id: str, run) -> bool:
    """Whether a step took the tuning output of the finished tune run `run` as its input (train
    does, in its pipeline run or in a later one that kfp's cache handed the output to). One that
    nothing took was made by an attempt whose pipeline run was killed before kfp.local cached the
    output, or that KFP retried: the attempt run again holds the search's trials."""
    uri = run.data.tags.get(tags.output(artifacts.TUNING, "uri"))
    taken = f"tags.`{tags.input(artifacts.TUNING, 'uri')}` = {tags.quoted(uri)}" if uri else None
    return bool(taken and client.search_runs([experiment_id], taken, max_results=1))


def last_search(experiment_id: str, config: TunerConfig, hypermodel_digest: str | None = None
                ) -> PreviousSearch | None:
    """The newest finished search over the same search space in `experiment_id` (the pipeline's)."""
    from mlflow import MlflowClient

    query = (f"tags.`{tags.STEP}` = 'tune' and tags.`{tags.TUNING}` = '{tags.SEARCHED}' "
             f"and tags.`{tags.SEARCH_SPACE}` = '{search_space_digest(config, hypermodel_digest)}' "
             "and attributes.status = 'FINISHED'")
    for run in MlflowClient().search_runs([experiment_id], query, order_by=["attributes.start_time DESC"],
                                          max_results=5):
        found, metrics = run.data.tags, run.data.metrics
        try:
            best = json.loads(found[tags.BEST_HYPERPARAMETERS])
        except (KeyError, ValueError):
            continue  # cut short by MLflow's tag limit, or written by hand: not reusable
        return PreviousSearch(run.info.run_id, found.get(tags.PARENT_RUN), run.info.start_time / 1000, best,
                              found.get(tags.BEST_TRIAL) or None, metrics.get("best_score"),
                              found.get(tags.output(artifacts.TUNING, "uri"), ""),
                              found.get(tags.output(artifacts.TUNING, "digest"), ""))
    return None


def epoch_logger(run_id: str):
    """An epoch observer for the train step: each epoch's metrics into `run_id` (step = epoch)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()

    def log_epoch(epoch: int, logs: dict[str, float]) -> None:
        if logs:
            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(name, value, now, epoch) for name, value in logs.items()])

    return log_epoch
