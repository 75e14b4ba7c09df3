"""A tracking store of N pipeline runs, written through the code a real `tunepipe run` writes with.

Every record goes through the writers the pipeline itself uses: `pipeline.tracking.pipeline_run`
(the pipeline run), `pipeline.tracking.step_run` (each step's run, with its params, its input
artifacts as MLflow dataset inputs and tags, its output tags, metrics and tags as the hooks set
them), `pipeline.tracking.record_cached_step` (the records of steps kfp's cache answered, written
at the end of the run as `local_run` does), `pipeline.trial_tracking.MlflowTrials` (one run per
tuner trial, with per-epoch metrics), `pipeline.trial_tracking.epoch_logger` (the training
curve) and `pipeline.registry.register` (model versions and the `production` alias). Nothing
trains: the values are made up, the shapes are the pipeline's.

The runs follow a daily schedule on a span pattern (run i, seeded):

- a new span most days: every step runs, Hyperband runs 10 trials (some continuing earlier ones,
  one invalid), train logs 30 epochs, evaluate compares against the model in production and is
  blessed about two times in three; a blessed model is pushed and registered;
- every 5th run the same data again: resolve-source, resolve-baseline and evaluate run, ingest,
  preprocess, tune and train are records of cache hits (of the previous run's outputs);
- every 7th run a retrain: the tune step reuses the last search (no trials), train warm-starts
  from the model in production;
- every 12th run fails in ingest.

    uv run python -m bench.queries.build --runs 50 --out /tmp/queries-store
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # when run as a script by path
    sys.path.insert(0, str(ROOT))

EXPERIMENT = "penguins"
SOURCE = "/data/penguins/span-*/penguins.csv"
TRIALS = 10  # the default Hyperband search on the penguins runs 10 trials (docs/benchmarks.md)
TRAIN_EPOCHS = 30
HYPERPARAMETER_NAMES = ("architecture", "num_layers", "units_0", "units_1", "dropout", "learning_rate", "optimizer")


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Built:
    """What the benchmark asks the store about afterwards."""

    uri: str
    root: str
    runs: int
    pipeline_run_ids: list[str] = field(default_factory=list)
    pipeline_run_names: list[str] = field(default_factory=list)
    pushed_versions: list[str] = field(default_factory=list)
    records: int = 0  # MLflow runs in the store (pipeline, step, cache record and trial runs)

    def to_json(self) -> dict:
        return dict(vars(self))


@dataclass
class _Previous:
    """What a later run reuses of an earlier one: its outputs (for cache hits) and its search."""

    outputs: dict[str, tuple[str, str]] = field(default_factory=dict)
    tune_run_id: str = ""
    spans: str = ""
    fingerprint: str = ""


def _hyperparameters(rng: random.Random) -> dict:
    layers = rng.randint(1, 2)
    values = {"architecture": rng.choice(["mlp", "residual", "wide_deep"]), "num_layers": layers,
              "units_0": rng.choice([8, 16, 32, 64, 128]), "dropout": round(rng.uniform(0, 0.4), 3),
              "learning_rate": round(10 ** rng.uniform(-4, -1), 6), "optimizer": rng.choice(["adam", "rmsprop", "sgd"])}
    if layers > 1:
        values["units_1"] = rng.choice([8, 16, 32, 64, 128])
    return values


def _search(run_id: str, search_id: str, rng: random.Random) -> tuple[float, str]:
    """Ten Hyperband trials as the tune step reports them to `MlflowTrials`; the best score and trial."""
    from components.tune.observer import COMPLETED, INVALID, TrialEnd, TrialStart
    from pipeline import trial_tracking

    observer = trial_tracking.MlflowTrials(run_id, "val_accuracy")
    observer.search_began(search_id)
    best, best_trial, started = -1.0, "", []
    for number in range(TRIALS):
        trial_id = f"{number:04d}"
        continued = started[number - 6] if number >= 6 else None  # the second round continues the first's best
        hyperparameters = _hyperparameters(rng)
        facts = {"bracket": 1 if number < 6 else 0, "round": 0 if number < 6 else 1,
                 "initial_epoch": 3 if continued else 0, "max_epoch": 9 if continued else 3,
                 "continued_from": continued}
        tracking_id = observer.trial_began(TrialStart(trial_id, hyperparameters, facts))
        started.append(trial_id)
        invalid = number == 4
        epochs = 0 if invalid else (6 if continued else 3)
        score = None
        for epoch in range(epochs):
            score = round(min(1.0, 0.6 + 0.05 * epoch + rng.uniform(0, 0.2)), 4)
            observer.epoch_ended(trial_id, epoch, {"loss": 1.0 / (epoch + 1), "accuracy": score,
                                                   "val_loss": 1.1 / (epoch + 1), "val_accuracy": score})
        end = TrialEnd(trial_id, INVALID if invalid else COMPLETED, score, hyperparameters, facts, epochs,
                       None if invalid else max(1, epochs - 1), round(rng.uniform(2, 8), 2),
                       "ValueError: the model could not be built" if invalid else None, tracking_id)
        observer.trial_ended(end)
        if score is not None and score > best:
            best, best_trial = score, trial_id
    return best, best_trial


def _pipeline_run(index: int, root: Path, rng: random.Random, previous: _Previous, production: dict) -> _Previous:
    """Pipeline run `index`: which kind it is follows the schedule in the module docstring."""
    from pipeline import registry, tags, tracking, trial_tracking

    repeat = index > 0 and index % 5 == 0 and bool(previous.outputs)
    retrain = not repeat and index > 0 and index % 7 == 0 and bool(previous.tune_run_id)
    fails = not repeat and not retrain and index % 12 == 11
    name = f"{EXPERIMENT}-2026{1 + index // 28:02d}{1 + index % 28:02d}-030000"
    span_count = 1 + index // 2
    spans = previous.spans if repeat else ",".join(f"span-{number}" for number in range(max(1, span_count - 6),
                                                                                         span_count + 1))
    fingerprint = previous.fingerprint if repeat else _digest(f"files-{index}")
    runs_dir = root / "pipelines" / name
    serving = root / "serving"
    outputs: dict[str, tuple[str, str]] = {}

    def artifact(artifact_name: str, step: str) -> tuple[str, str]:
        return str(runs_dir / step / artifact_name), _digest(f"{name}/{artifact_name}")

    data = {"source": SOURCE, "label": "species", "span_window": 7, "split": {"train": 0.7, "eval": 0.15,
                                                                              "test": 0.15},
            "features": {"exclude": ["year"]}}
    beam = {"runner": "DirectRunner", "direct_num_workers": 1}
    tuner = {"algorithm": "hyperband", "objective": "val_accuracy", "direction": "max", "max_epochs": 9,
             "factor": 3, "batch_size": 32, "parallel_trials": 1, "retune_after_days": 30}
    params = {"source": SOURCE, "label": "species", "code_version": f"0.4.0+g{index:07x}", "cache": True,
              "force_push": False, "reuse_hyperparameters": retrain, "warm_start": retrain}
    cached: dict[str, dict[str, tuple[str, str]]] = {}
    with tracking.pipeline_run(EXPERIMENT, str(root), None, params, run_name=name):
        with tracking.step_run("resolve-source", {"data": data}) as step:
            step.tags({tags.FINGERPRINT: fingerprint, tags.FILES: str(len(spans.split(","))), tags.SPANS: spans})
        # ingest
        if repeat:
            cached["ingest"] = {"examples": previous.outputs["examples"]}
        else:
            with contextlib.suppress(ValueError):
                with tracking.step_run("ingest", {"data": data, "beam": beam, "spans": spans.split(","),
                                                  "fingerprint": fingerprint}) as step:
                    if fails:
                        raise ValueError(f"no examples: every row of {SOURCE} was rejected (bad header?)")
                    outputs["examples"] = artifact("examples", "ingest")
                    step.output("examples", *outputs["examples"])
                    rows = 344 * span_count
                    step.metrics({"rows_read": rows, "rejected": index % 3, "missing_label": 2,
                                  "rows_train": int(rows * 0.7), "rows_eval": int(rows * 0.15),
                                  "rows_test": rows - int(rows * 0.7) - int(rows * 0.15)})
                    step.tags({tags.PROBLEM_TYPE: "multiclass", tags.PROBLEM_REASON: "3 string labels",
                               tags.SPANS: spans})
            if fails:
                return previous
        examples = cached.get("ingest", outputs)["examples"]
        # preprocess
        if repeat:
            cached["preprocess"] = {"transform": previous.outputs["transform"]}
        else:
            with tracking.step_run("preprocess", {"preprocess": {"vocabulary_top_k": 100}, "beam": beam},
                                   inputs={"examples": examples}) as step:
                outputs["transform"] = artifact("transform", "preprocess")
                step.output("transform", *outputs["transform"])
                step.metrics({"features": 6, "classes": 3})
                step.tags({tags.PROBLEM_TYPE: "multiclass"})
        transform = cached.get("preprocess", outputs)["transform"]
        # tune
        tune_run_id = previous.tune_run_id
        if repeat:
            cached["tune"] = {"tuning": previous.outputs["tuning"]}
        else:
            with tracking.step_run("tune", {"tuner": tuner, "work_root": str(root / "work"),
                                            "reuse_hyperparameters": retrain, "code_version": params["code_version"]},
                                   inputs={"examples": examples, "transform": transform}) as step:
                step.params({"work_dir": str(root / "work" / "tune" / name)})
                outputs["tuning"] = artifact("tuning", "tune")
                recorded = {tags.OBJECTIVE: "val_accuracy", tags.SEARCH_SPACE: _digest("search-space")[:23]}
                if retrain:
                    step.inputs({"tuning": previous.outputs["tuning"]})
                    best = 0.97
                    recorded.update({tags.TUNING: tags.REUSED, tags.REUSED_FROM: previous.tune_run_id})
                    metrics = {"best_score": best}
                else:
                    best, best_trial = _search(step.run_id, f"search-{name}", rng)
                    recorded.update({tags.TUNING: tags.SEARCHED, tags.BEST_TRIAL: best_trial})
                    metrics = {"best_score": best, "trials": TRIALS}
                    tune_run_id = step.run_id
                recorded[tags.BEST_HYPERPARAMETERS] = json.dumps(_hyperparameters(rng), sort_keys=True)
                step.output("tuning", *outputs["tuning"])
                step.metrics(metrics)
                step.tags(recorded)
        tuning = cached.get("tune", outputs)["tuning"]
        # resolve-baseline runs every time (it is not cached: the model in production changes)
        with tracking.step_run("resolve-baseline", {"serving_dir": str(serving), "model_name": EXPERIMENT,
                                                    "warm_start": retrain}) as step:
            if production:
                step.tags({tags.BASELINE_PATH: production["path"], tags.BASELINE_SOURCE: "registry"})
        # train
        if repeat:
            cached["train"] = {"model": previous.outputs["model"]}
        else:
            with tracking.step_run("train", {"training": {"epochs": 100, "patience": 10}, "tuner": tuner,
                                             "warm_start": production.get("path", "") if retrain else ""},
                                   inputs={"examples": examples, "transform": transform, "tuning": tuning}) as step:
                if retrain and production:
                    step.inputs({"warm_start": (production["path"], production["digest"])})
                log_epoch = trial_tracking.epoch_logger(step.run_id)
                for epoch in range(TRAIN_EPOCHS):
                    log_epoch(epoch, {"loss": 1.0 / (epoch + 1), "accuracy": 0.9, "val_loss": 1.2 / (epoch + 1),
                                      "val_accuracy": 0.9})
                outputs["model"] = artifact("model", "train")
                train_run_id = step.run_id
                step.params({**_hyperparameters(rng), "training.epochs": 100, "training.patience": 10})
                step.output("model", *outputs["model"])
                step.metrics({"eval_accuracy": round(rng.uniform(0.85, 1.0), 4), "eval_loss": 0.2,
                              "epochs_trained": TRAIN_EPOCHS, "best_epoch": TRAIN_EPOCHS - 10,
                              "warm_started": int(retrain)})
        model = cached.get("train", outputs)["model"]
        # evaluate
        blessed = rng.random() < 0.66 and not repeat
        with tracking.step_run("evaluate", {"evaluation": {"slices": ["island"], "thresholds": {}}, "beam": beam},
                               inputs={"examples": examples, "model": model}) as step:
            if production:
                step.inputs({"baseline": (production["path"], production["digest"])})
            outputs["evaluation"] = artifact("evaluation", "evaluate")
            step.output("evaluation", *outputs["evaluation"])
            accuracy = round(rng.uniform(0.85, 1.0), 4)
            step.metrics({"eval_accuracy": accuracy, "eval_loss": 0.2, "eval_auc": 0.99,
                          "eval_example_count": 52 * span_count})
            step.tags({tags.BLESSED: tags.flag(blessed), tags.PROBLEM_TYPE: "multiclass"})
        # push runs only when the evaluation blessed the model (the DAG's condition); a repeat is not
        # blessed (the same model as the one in production), so the model pushed is this run's own
        if blessed:
            version = int(production.get("serving_version", 0)) + 1
            path = str(serving / EXPERIMENT / str(version))
            with tracking.step_run("push", {"serving_dir": str(serving), "model_name": EXPERIMENT,
                                            "force_push": False}, inputs={"model": model}) as step:
                from components.push import PushResult

                result = PushResult(True, "blessed", version=version, path=path, digest=model[1])
                registry.register(EXPERIMENT, result, train_run_id)
                step.tags({tags.PUSHED: tags.flag(True), tags.PUSH_REASON: "blessed",
                           tags.PUSH_VERSION: str(version), tags.PUSH_FORCED: tags.flag(False)})
            production.update(path=path, digest=model[1], serving_version=str(version))
        for step_name, reused in cached.items():  # as local_run records cache hits: after the run
            tracking.record_cached_step(step_name, reused, {"digest": next(iter(reused.values()))[1]})
    return _Previous(outputs={**previous.outputs, **outputs}, tune_run_id=tune_run_id, spans=spans,
                     fingerprint=fingerprint) if not repeat else previous


def build(out: Path, runs: int, seed: int = 0) -> Built:
    """Write `runs` pipeline runs into a new SQLite store under `out` (which must not exist yet)."""
    import mlflow

    from pipeline import tags, tracking

    if out.exists():
        raise SystemExit(f"{out} exists: remove it or give another --out")
    out.mkdir(parents=True)
    uri = tracking.tracking_uri(str(out))
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    rng = random.Random(seed)
    previous, production = _Previous(), {}
    with tracking.environment({"MLFLOW_TRACKING_URI": uri}):
        mlflow.set_tracking_uri(uri)
        for index in range(runs):
            with contextlib.redirect_stderr(io.StringIO()):
                previous = _pipeline_run(index, out, rng, previous, production)
            time.sleep(0.002)  # distinct start times in milliseconds
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        pipelines = client.search_runs([experiment.experiment_id], f"tags.`{tags.KIND}` = '{tags.PIPELINE}'",
                                       order_by=["attributes.start_time DESC"], max_results=1000)
        built = Built(uri=uri, root=str(out), runs=runs, pipeline_run_ids=[run.info.run_id for run in pipelines],
                      pipeline_run_names=[run.info.run_name for run in pipelines],
                      pushed_versions=[version.version for version in client.search_model_versions(
                          f"name = '{EXPERIMENT}'")])
        built.records = len(client.search_runs([experiment.experiment_id], "", max_results=50000))
        mlflow.set_tracking_uri(None)
    (out / "built.json").write_text(json.dumps(built.to_json(), indent=2) + "\n")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="A new directory: the output root of the store.")
    arguments = parser.parse_args()
    started = time.monotonic()
    built = build(arguments.out, arguments.runs, arguments.seed)
    print(f"{built.runs} pipeline runs ({built.records} MLflow runs, {len(built.pushed_versions)} model versions) "
          f"in {built.uri} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
