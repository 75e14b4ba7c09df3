"""The per-step hooks of the launcher: for each step, the few lines between the task's arguments and
its plain component that really differ from step to step (which paths and sections the component
takes, what the step records, what the kfp task returns). Everything steps share is
`pipeline.launcher.run_step`.

Each hook takes a `StepContext` and returns an `Outcome`; the registry (`pipeline.steps`) names
the hook of every step. Components are called through `context.component`, the function the
registry names, and heavy modules are imported inside the hooks that need them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import namedtuple
from typing import Any

from components import artifacts
from components.errors import ConfigError
from pipeline import tags
from pipeline.launcher import Outcome, StepContext, log_kfp_metrics


def resolve_source(context: StepContext) -> Outcome:
    """The spans to read now (the newest `data.span_window` of a span pattern) and a fingerprint of
    their files; returned as two parameters, the fingerprint keying ingest's cache."""
    data = context.config["data"]
    resolved = context.component(data.source, data.span_window)
    spans = f", spans {', '.join(resolved.spans)}" if resolved.spans else ""
    print(f"resolve-source: {len(resolved.files)} file(s) match {data.source}{spans}")
    recorded = {tags.FINGERPRINT: resolved.fingerprint, tags.FILES: str(len(resolved.files))}
    if resolved.spans:
        recorded[tags.SPANS] = ",".join(resolved.spans)
    returns = namedtuple("SourceOutputs", ["fingerprint", "spans"])(resolved.fingerprint, list(resolved.spans))
    return Outcome(tags=recorded, returns=returns)


def ingest(context: StepContext) -> Outcome:
    spans = context.parameters.get("spans") or None
    data = context.config["data"]
    result = context.component(data, context.config["beam"], context.path(artifacts.EXAMPLES), spans=spans)
    counts = {**{key: value for key, value in result.counts.items() if key != "splits"},
              **{f"rows_{split}": rows for split, rows in result.counts["splits"].items()}}
    log_kfp_metrics(context.artifacts["metrics"], counts)
    problem = result.problem
    recorded = {tags.PROBLEM_TYPE: problem.type, tags.PROBLEM_REASON: problem.reason}
    if result.spans:
        recorded[tags.SPANS] = ",".join(result.spans)
    print(f"ingest: {problem.type} ({problem.reason})")
    return Outcome(digests={artifacts.EXAMPLES: result.digest}, metrics=counts, tags=recorded,
                   facts={"label": data.label, "problem_type": problem.type, "problem_reason": problem.reason})


def preprocess(context: StepContext) -> Outcome:
    result = context.component(context.path(artifacts.EXAMPLES), context.path(artifacts.TRANSFORM),
                               context.config["preprocess"], context.config["beam"])
    transform = result.transform
    if transform.left_out:
        print(f"preprocess: warning: left out, empty on every train row: {', '.join(transform.left_out)}")
    return Outcome(digests={artifacts.TRANSFORM: result.digest},
                   metrics={"features": len(transform.features), "classes": len(transform.label_vocabulary),
                            "train_rows": transform.train_rows},
                   facts={"problem": transform.kind, "left_out": ", ".join(transform.left_out)},
                   tags={tags.PROBLEM_TYPE: transform.kind,
                         **({tags.LEFT_OUT: ",".join(transform.left_out)} if transform.left_out else {})})


def _hypermodel(context: StepContext):
    """The user's hypermodel module as the task received it (its text, a parameter), or None; the
    module file and its digest go into the step's tracking run."""
    from components.model.hypermodel import HypermodelSource

    reference = context.config["tuner"].hypermodel
    text = HypermodelSource.from_parameter(context.parameters.get("hypermodel_source") or "")
    if not reference or not text:
        return None
    path, function = HypermodelSource.split(reference)
    source = HypermodelSource(path, function, text)
    context.record.tags({tags.HYPERMODEL: f"{path}:{function}", tags.HYPERMODEL_DIGEST: source.digest})
    context.record.log_text(text, f"hypermodel/{os.path.basename(path)}")
    return source


def _show(context: StepContext, path: str, output: str = "report") -> None:
    """A file of the step's artifact as a KFP output the UI shows (Markdown, HTML)."""
    shown = context.artifacts[output].path
    os.makedirs(os.path.dirname(shown), exist_ok=True)
    shutil.copyfile(path, shown)


def _work_dir(root: str, step: str, *keys: Any) -> str:
    """A working directory that outlives one attempt of a step (Keras Tuner's state), keyed by
    everything that makes two attempts the same search."""
    digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(root, step, digest)


def _reuse_decision(context: StepContext, config, source):
    """With `reuse_hyperparameters` (retraining): the earlier search to reuse, or why the step
    searches anyway. (None, None) when reuse is not asked for."""
    from components.tune import reuse
    from pipeline import trial_tracking

    if not context.parameters["reuse_hyperparameters"]:
        return None, None
    record = context.record
    if record.experiment_id is None:
        return None, "no tracking store to find an earlier search in"
    previous = trial_tracking.last_search(record.experiment_id, config, source.digest if source else None)
    return previous, reuse.reuse_decision(previous, config)


def _search(context: StepContext, worker: int = 0, workers: int = 1) -> Outcome:
    """The tune step, or worker `worker` of a search run by `workers` at once: Keras Tuner over the
    transform's features, every trial a nested MLflow run; or, with `reuse_hyperparameters`, the
    best hyperparameters of the last search over the same space unless it is older than
    `tuner.retune_after_days`."""
    from components.tune import reuse
    from pipeline import step_progress, trial_tracking

    record = context.record
    examples, transform, out = (context.path(name) for name in (artifacts.EXAMPLES, artifacts.TRANSFORM,
                                                                 artifacts.TUNING))
    config, source = _tuner_config(context), _hypermodel(context)
    inputs = {name: (context.artifacts[name].uri, artifacts.read_manifest(context.path(name), name)["digest"])
              for name in (artifacts.EXAMPLES, artifacts.TRANSFORM)}
    shard = [worker, workers] if workers > 1 else []
    work_dir = _work_dir(context.parameters["work_root"], "tune", inputs, context.parameters["options"], *shard)
    record.params({"work_dir": work_dir})
    previous, why = _reuse_decision(context, config, source)
    reused = context.parameters["reuse_hyperparameters"] and why is None
    if context.parameters["reuse_hyperparameters"]:
        label = f"tune: worker {worker} of {workers}" if shard else "tune"
        print(f"{label}: searching: {why}" if why else
              f"{label}: reusing the best hyperparameters of search run {previous.run_id}")
    if reused:
        result = reuse.reuse(previous, examples, transform, out, config,
                             {"worker": worker, "workers": workers} if shard else None)
        record.inputs({artifacts.TUNING: (previous.tuning_uri, previous.tuning_digest)})
    else:
        tracked = (trial_tracking.MlflowTrials(record.run_id, config.objective, worker if shard else None)
                   if record.enabled else None)
        observer = step_progress.Observers(tracked, step_progress.TrialProgress(step_progress.step_label(worker,
                                                                                                        workers)))
        result = context.component(examples, transform, out, config, observer, work_dir=work_dir,
                                   hypermodel_source=source, worker=worker, workers=workers)
    return _tune_outcome(context, config, source, result, previous.run_id if reused else None, why,
                         {tags.WORKER: str(worker)} if shard else {})


def _tuner_config(context: StepContext):
    from components.transform import Transform

    return context.config["tuner"].for_problem(Transform.read(context.path(artifacts.TRANSFORM)).kind)


def _tune_outcome(context: StepContext, config, source, result, reused_from: str | None, why: str | None = None,
                  recorded: dict[str, str] | None = None, metrics: dict[str, float] | None = None) -> Outcome:
    """What a tune step (or worker, or merge) records of its result: how it got its hyperparameters
    (searched, reused, tuning off), over which search space, and the best of them."""
    from components.tune import reuse
    from components.tune.report import REPORT

    how = tags.REUSED if reused_from else tags.SEARCHED if config.enabled else tags.OFF
    recorded = {**(recorded or {}), tags.TUNING: how, tags.OBJECTIVE: config.objective,
                tags.SEARCH_SPACE: reuse.search_space_digest(config, source.digest if source else None),
                tags.BEST_HYPERPARAMETERS: json.dumps(result.best_hyperparameters, sort_keys=True)}
    if reused_from:
        recorded[tags.REUSED_FROM] = reused_from
    elif why:
        recorded[tags.TUNING_WHY] = why
    if result.best_trial_id:
        recorded[tags.BEST_TRIAL] = result.best_trial_id
    if "report" in context.artifacts:
        _show(context, os.path.join(result.path, REPORT))
    recorded_metrics = {} if result.best_score is None else {"best_score": result.best_score}
    if not reused_from:  # a reused search ran no trials
        recorded_metrics.update(trials=len(result.trials), **(metrics or {}))
    facts = {"best_trial_id": result.best_trial_id or "", "objective": result.objective, "tuning": how,
             **({"reused_from": reused_from} if reused_from else {})}
    return Outcome(digests={artifacts.TUNING: result.digest}, metrics=recorded_metrics, facts=facts, tags=recorded)


def tune(context: StepContext) -> Outcome:
    """The whole search in one task (`tuner.parallel_trials` 1)."""
    return _search(context)


def tune_worker(context: StepContext) -> Outcome:
    """One worker of a parallel search: its share of the trials (`components.tune.workers.shard`).
    What stops it is said of it by name, the worker KFP retries or the run fails with."""
    from components.errors import TunepipeError

    worker, workers = context.parameters["worker"], context.parameters["workers"]
    try:
        return _search(context, worker, workers)
    except TunepipeError as error:
        raise type(error)(f"worker {worker} of {workers}: {error}") from None


def tune_merge(context: StepContext) -> Outcome:
    """The workers' trials as one search: the best over all of them, one tuning artifact, one
    report. On the record it is the tune step, and every worker's trial run moves under its run."""
    from pipeline import steps, trial_tracking

    record = context.record
    config, workers = _tuner_config(context), context.parameters["workers"]
    if config.workers != workers:
        raise ConfigError(f"the tuner config runs {config.workers} tune worker(s) (tuner.parallel_trials "
                          f"{config.parallel_trials}, enabled {str(config.enabled).lower()}) but the pipeline was "
                          f"compiled with {workers}: compile it again with the config it runs")
    parts = [part.path for part in context.artifacts[steps.WORKER_TUNINGS]]
    out = context.path(artifacts.TUNING)
    result = context.component(parts, out, config, workers)
    manifest = artifacts.read_manifest(out, artifacts.TUNING)
    reused = manifest.get("reused_from") or {}
    if reused:
        record.inputs({artifacts.TUNING: (reused["tuning"], reused["tuning_digest"])})
    elif record.enabled:
        moved = trial_tracking.adopt(record.experiment_id, manifest["worker_searches"], record.run_id)
        print(f"tune-merge: {moved} trial runs of {workers} workers moved under tune run {record.run_id}")
    return _tune_outcome(context, config, _hypermodel(context), result, reused.get("tune_run_id"),
                         metrics={"workers": workers})


def train(context: StepContext) -> Outcome:
    """The best hyperparameters, early stopping, the exported SavedModel; starting from the weights
    of the served model at `warm_start` when it is given and they fit. Each epoch is a progress line
    (and a step of the run's metrics when tracking is on)."""
    from components import push
    from components.train import early_stopping
    from components.transform import Transform
    from pipeline import step_progress, trial_tracking

    record = context.record
    warm_start = context.parameters["warm_start"] or None
    if warm_start:
        record.inputs({"warm_start": (warm_start, push.served_digest(warm_start) or "")})
    training, model = context.config["training"], context.path(artifacts.MODEL)
    monitor = training.resolved_monitor
    min_delta = early_stopping.min_delta(monitor, training.early_stopping_min_delta,
                                         Transform.read(context.path(artifacts.TRANSFORM)).label_std)
    epochs = step_progress.epochs_to(
        step_progress.EpochProgress(training.epochs, monitor, min_delta, training.early_stopping_patience),
        trial_tracking.epoch_logger(record.run_id) if record.enabled else None)
    result = context.component(context.path(artifacts.EXAMPLES), context.path(artifacts.TRANSFORM), model, training,
                               hyperparameters=context.path(artifacts.TUNING), warm_start=warm_start,
                               search_space=context.config["tuner"].search_space, epoch_observer=epochs,
                               hypermodel_source=_hypermodel(context))
    record.params({**result.hyperparameters,
                   **{f"training.{name}": value for name, value in training.model_dump().items()}})
    metrics = {f"eval_{name}": value for name, value in result.metrics.items()}
    metrics.update(epochs_trained=result.epochs_trained, best_epoch=result.best_epoch,
                   warm_started=int(result.warm_started))
    if record.enabled:
        record.log_artifacts(model, artifacts.MODEL)
    return Outcome(digests={artifacts.MODEL: result.digest}, metrics=metrics,
                   facts={"training_run_id": record.run_id or ""},
                   tags={tags.WARM_START: result.warm_start_note[:tags.TAG_LIMIT]} if result.warm_start_note else {})


def resolve_baseline(context: StepContext) -> Outcome:
    """Which model is in production now (none on the first run); its path is returned too when
    train is to warm-start from it: a parameter, not the artifact, so that train's cache key changes
    only when a warm start's source does."""
    from pipeline import registry

    serving_dir, model_name = context.parameters["serving_dir"], context.parameters["model_name"]
    registered = registry.production(model_name) if context.record.enabled else None
    if context.record.enabled:
        registered = registry.reconcile(serving_dir, model_name, registered)
    found = context.component(serving_dir, model_name, context.path("baseline"), registered=registered)
    warm_start = context.parameters["warm_start"]
    if warm_start and not found:
        print("resolve-baseline: no model in production to warm-start from; train starts from scratch")
    facts = {"found": found is not None,
             **{key: value for key, value in (found.to_json() if found else {}).items() if value is not None}}
    recorded = {tags.BASELINE_PATH: found.path, tags.BASELINE_SOURCE: found.source} if found else {}
    return Outcome(facts=facts, tags=recorded, returns=found.path if warm_start and found else "")


def evaluate(context: StepContext) -> Outcome:
    """TFMA, the blessing, and what the KFP UI shows of them. Returns whether to push: blessed, or
    `force_push`."""
    from components import push, resolve_baseline
    from components.evaluate import unchanged

    baseline = resolve_baseline.read(context.path("baseline"))
    if baseline:
        context.record.inputs({"baseline": (baseline, push.served_digest(baseline) or "")})
    served = unchanged.served_as(context.path(artifacts.MODEL), baseline)
    if served:
        return _unchanged(context, served)
    from components.evaluate import blessing, report
    from components.evaluate.step import CONFUSION_MATRIX
    from pipeline import step_progress

    evaluation = context.path(artifacts.EVALUATION)
    result = context.component(context.path(artifacts.EXAMPLES), context.path(artifacts.MODEL), evaluation,
                               context.config["evaluation"], context.config["beam"], baseline=baseline,
                               progress=step_progress.RowsProgress())
    overall = {name: value for name, value in result.metrics.items() if isinstance(value, (int, float))}
    log_kfp_metrics(context.artifacts["metrics"], overall)
    matrix_file, confusion = os.path.join(evaluation, CONFUSION_MATRIX), context.artifacts["confusion_matrix"]
    if os.path.exists(matrix_file):
        with open(matrix_file, encoding="utf-8") as handle:
            matrix = json.load(handle)
        confusion.log_confusion_matrix(matrix["categories"], matrix["matrix"])
    else:  # a regression
        _no_matrix(confusion)
    _show(context, os.path.join(evaluation, report.REPORT))
    lines = report.summary_lines(result)
    for line in lines:
        print(f"evaluate: {line}")
    verdict = {"blessed": result.blessed, "failures": result.failures}
    facts = {"blessed": result.blessed, "summary": lines[0], "baseline": baseline or "",
             "reason": "" if result.blessed else blessing.reason(verdict)}
    return Outcome(digests={artifacts.EVALUATION: result.digest},
                   metrics={f"eval_{name}": value for name, value in overall.items()}, facts=facts,
                   tags={tags.BLESSED: tags.flag(result.blessed), tags.PROBLEM_TYPE: result.problem},
                   returns=result.blessed or context.parameters["force_push"])


def _no_matrix(confusion: Any) -> None:
    """No confusion matrix, but kfp.local's cache counts an output without its file as missing."""
    os.makedirs(os.path.dirname(confusion.path), exist_ok=True)
    with open(confusion.path, "w", encoding="utf-8") as handle:
        handle.write("{}\n")


def _unchanged(context: StepContext, served: str) -> Outcome:
    """The candidate is the model in production: no TFMA, no push (unless forced, and then push
    finds it already served); the evaluation says so, and the run records which version it is."""
    from components.evaluate import unchanged
    from components.evaluate.report import REPORT

    evaluation = context.path(artifacts.EVALUATION)
    digest = unchanged.write(evaluation, context.path(artifacts.MODEL), served)
    log_kfp_metrics(context.artifacts["metrics"], {})
    _show(context, os.path.join(evaluation, REPORT))
    _no_matrix(context.artifacts["confusion_matrix"])
    print(f"evaluate: {unchanged.reason(served)}")
    return Outcome(digests={artifacts.EVALUATION: digest},
                   facts={"blessed": False, "unchanged": True, "summary": unchanged.reason(served), "baseline": served,
                          "reason": unchanged.reason(served)},
                   tags={tags.BLESSED: tags.flag(False), tags.UNCHANGED: served},
                   returns=context.parameters["force_push"])


def push(context: StepContext) -> Outcome:
    """A blessed (or forced) model into the serving directory, then into the registry."""
    from components.evaluate.blessing import FILE as BLESSING
    from components.push import write_result
    from pipeline import registry

    with open(os.path.join(context.path(artifacts.EVALUATION), BLESSING), encoding="utf-8") as handle:
        verdict = json.load(handle)
    model = context.artifacts[artifacts.MODEL]
    model_name, force = context.parameters["model_name"], context.parameters["force_push"]
    run_id = model.metadata.get("training_run_id") or None
    register = (lambda pushed: registry.register(model_name, pushed, run_id)) if context.record.enabled else None
    result = context.component(model.path, verdict, context.parameters["serving_dir"], model_name, force=force,
                               register=register)
    pushed = context.path("pushed")
    os.makedirs(pushed, exist_ok=True)
    write_result(result, os.path.join(pushed, "push.json"))
    recorded = {tags.PUSHED: tags.flag(result.pushed), tags.PUSH_REASON: result.reason,
                tags.PUSH_VERSION: str(result.version or ""), tags.PUSH_FORCED: tags.flag(result.forced)}
    return Outcome(facts={key: value for key, value in vars(result).items() if value is not None}, tags=recorded)
