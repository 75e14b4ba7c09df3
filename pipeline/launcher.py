"""What runs inside a pipeline task: from KFP artifacts and parameters to `components.<step>.run`.

The kfp components in `pipeline.dag` are a few lines each and call the functions here, which
rebuild the typed config, open the step's lineage run, call the plain component, and describe the
outputs in the artifacts' metadata (what the KFP UI and the CLI summary show).

A user error in a step ends the task with one line on stderr, written also to the file named by
`TUNEPIPE_ERROR_FILE` so that `tunepipe run` can repeat it, and exit code 1, never a traceback.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from pipeline.errors import TunepipeError

ERROR_FILE_ENV = "TUNEPIPE_ERROR_FILE"


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py", "matplotlib", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def user_errors(step: str) -> Iterator[None]:
    """Turn a TunepipeError into one line and exit code 1."""
    try:
        yield
    except TunepipeError as error:
        print(f"tunepipe: error: {step}: {error}", file=sys.stderr, flush=True)
        error_file = os.environ.get(ERROR_FILE_ENV)
        if error_file:
            with open(error_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "message": str(error)}) + "\n")
        raise SystemExit(1) from None


def _artifact_digest(path: str) -> str:
    from components import artifacts

    with open(os.path.join(path, artifacts.MANIFEST)) as handle:
        return json.load(handle)["digest"]


def _log_metrics(metrics: Any, values: dict[str, float]) -> None:
    """KFP shows a Metrics artifact's metadata; the file holds the same numbers, and its existence is
    what lets kfp.local's cache accept the artifact as present."""
    for name, value in values.items():
        metrics.log_metric(name, value)
    os.makedirs(os.path.dirname(metrics.path), exist_ok=True)
    with open(metrics.path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2)


def resolve_source(source: str, span_window: int) -> Any:
    """The resolve-source task: the spans to read now (the newest `span_window` of a span pattern)
    and a fingerprint of their files."""
    _quiet_libraries()
    with user_errors("resolve-source"):
        from collections import namedtuple

        from components import ingest as ingest_step
        from pipeline import lineage

        with lineage.step_run("resolve-source", {"source": source, "span_window": span_window}) as record:
            resolved = ingest_step.resolve_source(source, span_window)
            fingerprint = ingest_step.fingerprint(resolved.files)
            spans = f", spans {', '.join(resolved.spans)}" if resolved.spans else ""
            print(f"resolve-source: {len(resolved.files)} file(s) match {source}{spans}")
            tags = {"tunepipe.fingerprint": fingerprint, "tunepipe.files": str(len(resolved.files))}
            if resolved.spans:
                tags[lineage.SPANS_TAG] = ",".join(resolved.spans)
            record.tags(tags)
        return namedtuple("SourceOutputs", ["fingerprint", "spans"])(fingerprint, list(resolved.spans))


def ingest(source: str, spans: list[str], label: str, data: dict[str, Any], beam: dict[str, Any], examples: Any,
           metrics: Any) -> None:
    """The ingest task: `components.ingest.run` over the spans resolve-source chose, into `examples`."""
    _quiet_libraries()
    with user_errors("ingest"):
        from components import ingest as ingest_step
        from pipeline import config, lineage

        data_config = config.section(config.DataConfig, {**data, "source": source, "label": label}, "data parameter")
        beam_config = config.section(config.BeamConfig, beam, "beam parameter")
        with lineage.step_run("ingest", {"source": source, "label": label, "data": data, "beam": beam},
                              inputs={}) as record:
            result = ingest_step.run(data_config, beam_config, examples.path, spans=spans if spans else None)
            if result.spans:
                record.tags({lineage.SPANS_TAG: ",".join(result.spans)})
            flat_counts = {**{k: v for k, v in result.counts.items() if k != "splits"},
                           **{f"rows_{split}": n for split, n in result.counts["splits"].items()}}
            examples.metadata.update({"digest": result.digest, "label": label, **flat_counts})
            _log_metrics(metrics, flat_counts)
            record.output("examples", examples.uri, result.digest)
            record.metrics(flat_counts)


def preprocess(examples: Any, options: dict[str, Any], beam: dict[str, Any], transform: Any) -> None:
    """The preprocess task: `components.preprocess.run` over the train split into `transform`."""
    _quiet_libraries()
    with user_errors("preprocess"):
        from components import preprocess as preprocess_step
        from pipeline import config, lineage

        preprocess_config = config.section(config.PreprocessConfig, options, "preprocess parameter")
        beam_config = config.section(config.BeamConfig, beam, "beam parameter")
        inputs = {"examples": (examples.uri, _artifact_digest(examples.path))}
        with lineage.step_run("preprocess", {"preprocess": options, "beam": beam}, inputs=inputs) as record:
            result = preprocess_step.run(examples.path, transform.path, preprocess_config, beam_config)
            facts = {"features": len(result.transform.features), "classes": len(result.transform.label_vocabulary),
                     "train_rows": result.transform.train_rows}
            transform.metadata.update({"digest": result.digest, **facts})
            record.output("transform", transform.uri, result.digest)
            record.metrics(facts)


def _work_dir(root: str, step: str, *keys: Any) -> str:
    """A working directory that outlives one attempt of a step (Keras Tuner's state), keyed by
    everything that makes two attempts the same search."""
    import hashlib

    digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return os.path.join(root, step, digest)


def tune(examples: Any, transform: Any, options: dict[str, Any], work_root: str, reuse_hyperparameters: bool,
         tuning: Any) -> None:
    """The tune task: Keras Tuner over the transform's features, every trial a nested MLflow run; or,
    with `reuse_hyperparameters`, the best hyperparameters of the last search over the same space
    unless it is older than `tuner.retune_after_days`."""
    _quiet_libraries()
    with user_errors("tune"):
        from components import tune as tune_step
        from pipeline import config, lineage

        tuner_config = config.section(config.TunerConfig, options, "tuner parameter")
        inputs = {"examples": (examples.uri, _artifact_digest(examples.path)),
                  "transform": (transform.uri, _artifact_digest(transform.path))}
        work_dir = _work_dir(work_root, "tune", inputs, options)
        params = {"tuner": options, "work_dir": work_dir, "reuse_hyperparameters": reuse_hyperparameters}
        with lineage.step_run("tune", params, inputs=inputs) as record:
            previous = why = None
            if reuse_hyperparameters:
                if record.experiment_id is not None:
                    previous = tune_step.last_search(record.experiment_id, tuner_config)
                    why = tune_step.reuse_decision(previous, tuner_config)
                else:
                    why = "no tracking store to find an earlier search in"
                print(f"tune: searching: {why}" if why else
                      f"tune: reusing the best hyperparameters of search run {previous.run_id}")
            reused = reuse_hyperparameters and why is None
            if reused:
                result = tune_step.reuse(previous, examples.path, transform.path, tuning.path, tuner_config)
                record.inputs({"tuning": (previous.tuning_uri, previous.tuning_digest)})
                how = lineage.REUSED
            else:
                result = tune_step.run(examples.path, transform.path, tuning.path, tuner_config, work_dir=work_dir)
                how = lineage.SEARCHED if tuner_config.enabled else lineage.OFF
            tags = {lineage.TUNING_TAG: how,
                    lineage.SEARCH_SPACE_TAG: tune_step.search_space_digest(tuner_config),
                    lineage.BEST_HYPERPARAMETERS_TAG: json.dumps(result.best_hyperparameters, sort_keys=True)}
            if reused:
                tags[lineage.REUSED_FROM_TAG] = previous.run_id
            elif why:
                tags[lineage.TUNING_WHY_TAG] = why
            if result.best_trial_id:
                tags[lineage.BEST_TRIAL_TAG] = result.best_trial_id
            facts = {"best_score": result.best_score} if reused else {
                "best_score": result.best_score, "trials": len(result.trials)}
            tuning.metadata.update({"digest": result.digest, "best_trial_id": result.best_trial_id or "",
                                    "objective": result.objective, "tuning": how,
                                    **({"reused_from": previous.run_id} if reused else {}),
                                    **{key: value for key, value in facts.items() if value is not None}})
            record.output("tuning", tuning.uri, result.digest)
            record.tags(tags)
            record.metrics({key: value for key, value in facts.items() if value is not None})


def train(examples: Any, transform: Any, tuning: Any, options: dict[str, Any], tuner: dict[str, Any],
          warm_start_from: str, model: Any) -> None:
    """The train task: the best hyperparameters, early stopping, the exported SavedModel; starting
    from the weights of the served model at `warm_start_from` when it is given and they fit."""
    _quiet_libraries()
    with user_errors("train"):
        from components import train as train_step
        from pipeline import config, lineage

        training_config = config.section(config.TrainingConfig, options, "training parameter")
        space = config.section(config.TunerConfig, tuner, "tuner parameter").search_space
        inputs = {"examples": (examples.uri, _artifact_digest(examples.path)),
                  "transform": (transform.uri, _artifact_digest(transform.path)),
                  "tuning": (tuning.uri, _artifact_digest(tuning.path))}
        if warm_start_from:
            from components import push as push_step

            inputs["warm_start"] = (warm_start_from, push_step.served_digest(warm_start_from) or "")
        with lineage.step_run("train", {"training": options, "warm_start": warm_start_from},
                              inputs=inputs) as record:
            result = train_step.run(examples.path, transform.path, model.path, training_config,
                                    hyperparameters=tuning.path, warm_start=warm_start_from or None,
                                    search_space=space)
            facts = {f"eval_{key}": value for key, value in result.metrics.items()}
            facts.update(epochs_trained=result.epochs_trained, best_epoch=result.best_epoch)
            model.metadata.update({"digest": result.digest, "warm_started": result.warm_started,
                                   "training_run_id": record.run_id or "", **facts})
            record.output("model", model.uri, result.digest)
            record.metrics(facts)


def _baseline_path(baseline: Any) -> str | None:
    """The served model directory resolve-baseline found, or None on a first run."""
    with open(os.path.join(baseline.path, "baseline.json"), encoding="utf-8") as handle:
        return json.load(handle)["path"]


def resolve_baseline(serving_dir: str, model_name: str, warm_start: bool, baseline: Any) -> str:
    """The resolve-baseline task: which model is in production now (none on the first run); its
    path is returned too when train is to warm-start from it."""
    _quiet_libraries()
    with user_errors("resolve-baseline"):
        from components import push as push_step
        from pipeline import lineage

        with lineage.step_run("resolve-baseline", {"serving_dir": serving_dir, "model_name": model_name}) as record:
            found = push_step.resolve_baseline(serving_dir, model_name)
            os.makedirs(baseline.path, exist_ok=True)
            description = found.to_json() if found else {"path": None, "version": None, "source": None}
            with open(os.path.join(baseline.path, "baseline.json"), "w", encoding="utf-8") as handle:
                json.dump(description, handle, indent=2)
            baseline.metadata.update({"found": found is not None,
                                      **{key: value for key, value in description.items() if value is not None}})
            if found:
                record.tags({"tunepipe.baseline.path": found.path, "tunepipe.baseline.source": found.source})
            if warm_start and not found:
                print("resolve-baseline: no model in production to warm-start from; train starts from scratch")
        return found.path if warm_start and found else ""


def push(model: Any, evaluation: Any, serving_dir: str, model_name: str, force_push: bool, pushed: Any) -> None:
    """The push task: a blessed (or forced) model into the serving directory and the registry."""
    _quiet_libraries()
    with user_errors("push"):
        from components import push as push_step
        from pipeline import lineage

        with open(os.path.join(evaluation.path, "blessing.json"), encoding="utf-8") as handle:
            blessing = json.load(handle)
        inputs = {"model": (model.uri, _artifact_digest(model.path))}
        params = {"serving_dir": serving_dir, "model_name": model_name, "force_push": force_push}
        with lineage.step_run("push", params, inputs=inputs) as record:
            result = push_step.run(model.path, blessing, serving_dir, model_name, force=force_push,
                                   training_run_id=model.metadata.get("training_run_id") or None)
            os.makedirs(pushed.path, exist_ok=True)
            push_step.write_result(result, os.path.join(pushed.path, "push.json"))
            pushed.metadata.update({key: value for key, value in vars(result).items() if value is not None})
            record.tags({"tunepipe.push.pushed": str(result.pushed).lower(), "tunepipe.push.reason": result.reason,
                         "tunepipe.push.version": str(result.version or ""),
                         "tunepipe.push.forced": str(result.forced).lower()})


def evaluate(examples: Any, model: Any, baseline: Any, options: dict[str, Any], beam: dict[str, Any],
             force_push: bool, evaluation: Any, metrics: Any, confusion_matrix: Any, report: Any) -> Any:
    """The evaluate task: TFMA, the blessing, and what the KFP UI shows of them."""
    _quiet_libraries()
    with user_errors("evaluate"):
        import shutil

        from components import evaluate as evaluate_step
        from components import push as push_step
        from pipeline import config, lineage

        evaluation_config = config.section(config.EvaluationConfig, options, "evaluation parameter")
        beam_config = config.section(config.BeamConfig, beam, "beam parameter")
        baseline_path = _baseline_path(baseline)
        inputs = {"examples": (examples.uri, _artifact_digest(examples.path)),
                  "model": (model.uri, _artifact_digest(model.path))}
        if baseline_path:
            inputs["baseline"] = (baseline_path, push_step.served_digest(baseline_path) or "")
        with lineage.step_run("evaluate", {"evaluation": options, "beam": beam}, inputs=inputs) as record:
            result = evaluate_step.run(examples.path, model.path, evaluation.path, evaluation_config, beam_config,
                                       baseline=baseline_path)
            overall = {name: value for name, value in result.metrics.items() if isinstance(value, (int, float))}
            _log_metrics(metrics, overall)
            with open(os.path.join(evaluation.path, "confusion_matrix.json"), encoding="utf-8") as handle:
                matrix = json.load(handle)
            confusion_matrix.log_confusion_matrix(matrix["categories"], matrix["matrix"])
            os.makedirs(os.path.dirname(report.path), exist_ok=True)
            shutil.copyfile(os.path.join(evaluation.path, "report.md"), report.path)
            lines = evaluate_step.summary_lines(result)
            for line in lines:
                print(f"evaluate: {line}")
            blessing = {"blessed": result.blessed, "failures": result.failures}
            evaluation.metadata.update({"digest": result.digest, "blessed": result.blessed, "summary": lines[0],
                                        "reason": push_step.blessing_reason(blessing) if not result.blessed else "",
                                        "baseline": baseline_path or ""})
            record.output("evaluation", evaluation.uri, result.digest)
            record.metrics({f"eval_{name}": value for name, value in overall.items()})
            record.tags({"tunepipe.blessed": str(result.blessed).lower()})
        return result.blessed or force_push
