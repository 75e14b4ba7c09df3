"""The one definition of the pipeline: its kfp components and the DAG that wires them.

`tunepipe run` executes `create_pipeline(...)` with kfp.local and `tunepipe compile` compiles the
very same function to KFP v2 IR. The steps, their caching and their volumes come from the registry
(`pipeline.steps`); this module adds only the typed interface of each step and the wiring.

The components are lightweight Python components on the project image with nothing installed at
run time (`install_kfp_package=False`): each body captures its arguments and calls
`pipeline.launcher.run_step`, because a lightweight component's source is shipped alone and cannot
see helpers defined beside it. (No `from __future__ import annotations` here: kfp reads the
component signatures' annotations as types.)

Every value that changes a step's output is one of its inputs, so KFP's cache cannot serve a stale
result: the config section the step reads, the Beam options, a fingerprint of the source files
(new files under the same path are a new input) and the code version.
"""

import inspect
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, List, NamedTuple  # kfp reads List[Artifact], not list[...]

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from pipeline import steps
from pipeline.config import PipelineConfig

DEFAULT_IMAGE = "ghcr.io/tunepipe/tunepipe:0.1.0"


def resolve_source(source: str, label: str, data: dict) -> NamedTuple("SourceOutputs", [("fingerprint", str),
                                                                                       ("spans", list)]):
    """Choose the spans to read now (the newest `data.span_window` of a span pattern), list their
    files and fingerprint them (names, sizes, modification times). Never cached: it is what lets the
    ingest step's cache see new data under the same pattern, on a schedule too (kubeflow/pipelines#3432)."""
    arguments = dict(locals())
    from pipeline import launcher
    return launcher.run_step("resolve-source", **arguments)


def ingest(source: str, spans: list, label: str, data: dict, beam: dict, data_fingerprint: str, code_version: str,
           examples: Output[Dataset], metrics: Output[Metrics]):
    """Read, validate and split the chosen spans of the source table. `data_fingerprint` and
    `code_version` are only cache keys: they change when the source files or the code do."""
    arguments = dict(locals())
    from pipeline import launcher
    launcher.run_step("ingest", **arguments)


def preprocess(examples: Input[Dataset], options: dict, beam: dict, code_version: str,
               transform: Output[Artifact]):
    """Full-pass analyzers over the train split: the transform the model's preprocessing is built from."""
    arguments = dict(locals())
    from pipeline import launcher
    launcher.run_step("preprocess", **arguments)


def tune(examples: Input[Dataset], transform: Input[Artifact], options: dict, hypermodel_source: str,
         work_root: str, reuse_hyperparameters: bool, code_version: str, tuning: Output[Artifact],
         report: Output[HTML]):
    """Keras Tuner search over the transform's features; each trial is a nested MLflow run.
    `work_root` holds Keras Tuner's state so a killed search resumes. With `reuse_hyperparameters`
    (retraining), the best hyperparameters of the last search over the same space, unless it is
    older than `tuner.retune_after_days`. `hypermodel_source` is the text of `tuner.hypermodel`'s
    module ("" for the built-in model): a parameter, so it reaches the pods and keys the cache."""
    arguments = dict(locals())
    from pipeline import launcher
    launcher.run_step("tune", **arguments)


def tune_worker(examples: Input[Dataset], transform: Input[Artifact], options: dict, hypermodel_source: str,
                work_root: str, reuse_hyperparameters: bool, worker: int, workers: int, code_version: str,
                tuning: Output[Artifact]):
    """Worker `worker` (0-based) of the `workers` of a parallel search (`tuner.parallel_trials`): its
    share of the trials (components.tune.workers), in its own Keras Tuner state under `work_root`,
    each trial a nested MLflow run tagged with the worker."""
    arguments = dict(locals())
    from pipeline import launcher
    launcher.run_step("tune-worker", **arguments)


def tune_merge(examples: Input[Dataset], transform: Input[Artifact], worker_tunings: Input[List[Artifact]],
               options: dict, hypermodel_source: str, workers: int, code_version: str,
               tuning: Output[Artifact], report: Output[HTML]):
    """The workers' results as one search: every trial, the best over all of them, one report. It
    is the tune step on the record: the workers' trial runs move under its run."""
    arguments = dict(locals())
    from pipeline import launcher
    launcher.run_step("tune-merge", **arguments)


def train(examples: Input[Dataset], transform: Input[Artifact], tuning: Input[Artifact], options: dict,
          tuner: dict, hypermodel_source: str, warm_start: str, code_version: str, model: Output[Model]):
    """Train the best hyperparameters with early stopping and export the SavedModel for serving.
    `tuner` carries the search space, whose defaults fill what the tuning result leaves out.
    `warm_start` is the served model to start from ("" for none), when its weights fit."""
    arguments = dict(locals())
    from pipeline import launcher
    launcher.run_step("train", **arguments)


def resolve_baseline(serving_dir: str, model_name: str, warm_start: bool, baseline: Output[Model]) -> str:
    """Find the model in production (registry alias, else newest served version); none on a first run.
    Returns its path when `warm_start` asks train to start from it, else "": a parameter, not the
    artifact, so that train's cache key changes only when a warm start's source does."""
    arguments = dict(locals())
    from pipeline import launcher
    return launcher.run_step("resolve-baseline", **arguments)


def evaluate(examples: Input[Dataset], model: Input[Model], baseline: Input[Model], options: dict, beam: dict,
             force_push: bool, code_version: str, evaluation: Output[Artifact], metrics: Output[Metrics],
             confusion_matrix: Output[ClassificationMetrics], report: Output[Markdown]) -> bool:
    """TFMA over the held-out split, candidate against baseline. Returns whether to push: blessed, or
    `force_push`. (One unnamed output: kfp.local 2.17.0 cannot resolve a named output in a dsl.If
    condition; the blessing itself is in the evaluation artifact.)"""
    arguments = dict(locals())
    from pipeline import launcher
    return launcher.run_step("evaluate", **arguments)


def push(model: Input[Model], evaluation: Input[Artifact], serving_dir: str, model_name: str, force_push: bool,
         pushed: Output[Model]):
    """Copy the model to <serving_dir>/<model_name>/<version>/ atomically and move the production alias."""
    arguments = dict(locals())
    from pipeline import launcher
    launcher.run_step("push", **arguments)


def component_function(step: steps.Step):
    """The typed kfp interface of a step of the registry: the function above named after it."""
    return globals()[step.name.replace("-", "_")]


class PipelineOutputs(NamedTuple):
    examples: Dataset
    transform: Artifact
    tuning: Artifact
    model: Model
    evaluation: Artifact


def pipeline_arguments(config: PipelineConfig, code_version: str, force_push: bool = False,
                       reuse_hyperparameters: bool = False, warm_start: bool = False) -> dict[str, Any]:
    """The pipeline's parameters for a run of `config`. Retraining sets `reuse_hyperparameters` (the
    last search's best, see `tuner.retune_after_days`) and `warm_start` (from the production model)."""
    # KFP parameters cannot hold null: unset optional keys are left out and take their defaults again.
    def section(model) -> dict:
        return model.model_dump(mode="json", exclude_none=True)

    return {
        "source": config.data.source,
        "label": config.data.label,
        "data": config.data.model_dump(mode="json", exclude={"source", "label"}, exclude_none=True),
        "preprocess": section(config.preprocess),
        "beam": section(config.beam),
        "tuner": section(config.tuner),
        "hypermodel_source": _module_text(config.tuner.hypermodel),
        "training": section(config.training),
        "evaluation": section(config.evaluation),
        "reuse_hyperparameters": reuse_hyperparameters,
        "warm_start": warm_start,
        "work_root": _location(config.output_root, "work"),
        "serving_dir": _location(config.resolved_serving_dir),
        "model_name": config.resolved_model_name,
        "force_push": force_push,
        "code_version": code_version,
    }


def _module_text(reference: str | None) -> str:
    if not reference:
        return ""
    from components.model.hypermodel import HypermodelSource

    return HypermodelSource.read(reference).as_parameter()


def _location(path: str, *parts: str) -> str:
    """A local path made absolute (the steps may run elsewhere than the CLI); a URI as it is."""
    if "://" in path:
        return "/".join([path.rstrip("/"), *parts])
    return str(Path(path, *parts).resolve())


def _configure(task, step: steps.Step, config: PipelineConfig) -> None:
    """Display name, caching, Kubernetes resources, retries, tracking and volumes of one task."""
    task.set_display_name(step.name)
    if not step.cacheable:
        task.set_caching_options(enable_caching=False)
    resources = config.kubeflow.resources_of(step.name)
    if resources is not None:
        for setting, value in resources.model_dump(exclude_none=True).items():
            getattr(task, f"set_{setting}")(value)
    retries = config.kubeflow.retries_of(step.name)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration=config.kubeflow.retry_backoff)
    if config.tracking_uri:
        task.set_env_variable("MLFLOW_TRACKING_URI", config.tracking_uri)
    _mount_volumes(task, step, config)


def _mount_volumes(task, step: steps.Step, config: PipelineConfig) -> None:
    """Mount the `kubeflow.volumes` PVCs the step uses: the serving directory (push writes it,
    resolve-baseline looks in it, train warm-starts and evaluate compares with the production model
    there) and the work volume (Keras Tuner's state). kfp.kubernetes is imported only when there is
    something to mount; kfp.local ignores the mounts."""
    mounts = [volume for volume in (getattr(config.kubeflow.volumes, name) for name in step.volumes)
              if volume is not None]
    if not mounts:
        return
    from kfp import kubernetes

    for volume in mounts:
        kubernetes.mount_pvc(task, pvc_name=volume.pvc, mount_path=volume.mount_path)


# The pipeline parameters that are paths: on a cluster, a default that is a path of the compiling
# machine means nothing to a pod, and tells whoever reads the package about that machine.
PATH_PARAMETERS = ("source", "work_root", "serving_dir")
# The hypermodel's module path inside the `tuner` parameter: named by its file alone in a package.
HYPERMODEL_PATH = "tuner.hypermodel"


def machine_paths(config: PipelineConfig, *directories: str | Path) -> list[str]:
    """The path parameters whose value is a path of this machine: under its home, working or
    temporary directory or one of `directories` (the config file's), on none of the Kubeflow volumes."""
    import tempfile

    arguments = pipeline_arguments(config, "")
    mounts = [volume.mount_path for volume in (config.kubeflow.volumes.serving, config.kubeflow.volumes.work)
              if volume is not None]
    here = {str(Path.home()), str(Path.cwd()), tempfile.gettempdir(),
            *(str(Path(path).resolve()) for path in directories)}
    values = {name: str(arguments[name]) for name in PATH_PARAMETERS}
    if config.tuner.hypermodel:  # its text travels as `hypermodel_source`; its path only names it
        values[HYPERMODEL_PATH] = config.tuner.hypermodel
    found = []
    for name, value in values.items():
        on_a_volume = any(value == mount or value.startswith(mount.rstrip("/") + "/") for mount in mounts)
        if "://" not in value and not on_a_volume and any(value.startswith(f"{root.rstrip('/')}/") for root in here):
            found.append(name)
    return found


def create_pipeline(config: PipelineConfig, image: str = DEFAULT_IMAGE, code_version: str = "",
                    required: Sequence[str] = ()):
    """The kfp pipeline for `config`; its parameters default to the config's values, except the
    `required` ones: a package compiled for a cluster leaves out the paths of this machine
    (`machine_paths`), so that it names none and a run must be given them (`--param`)."""
    # tuner.parallel_trials > 1: N tune workers in a ParallelFor and their merge instead of one tune task.
    workers = config.tuner.workers
    active = steps.active(workers)
    ops = {step.name: dsl.component(component_function(step), base_image=image, install_kfp_package=False)
           for step in active}
    defaults = pipeline_arguments(config, code_version)
    source = Path(config.data.source).name if "source" in required else config.data.source
    if HYPERMODEL_PATH in required:
        defaults["tuner"]["hypermodel"] = os.path.basename(config.tuner.hypermodel)
    required = [name for name in required if name != HYPERMODEL_PATH]

    def tunepipe_pipeline(
        source: str = defaults["source"],
        label: str = defaults["label"],
        data: dict = defaults["data"],
        preprocess: dict = defaults["preprocess"],
        beam: dict = defaults["beam"],
        tuner: dict = defaults["tuner"],
        hypermodel_source: str = defaults["hypermodel_source"],
        training: dict = defaults["training"],
        evaluation: dict = defaults["evaluation"],
        reuse_hyperparameters: bool = defaults["reuse_hyperparameters"],
        warm_start: bool = defaults["warm_start"],
        work_root: str = defaults["work_root"],
        serving_dir: str = defaults["serving_dir"],
        model_name: str = defaults["model_name"],
        force_push: bool = defaults["force_push"],
        code_version: str = defaults["code_version"],
    ) -> PipelineOutputs:
        tasks = {}
        tasks["resolve-source"] = ops["resolve-source"](source=source, label=label, data=data)
        fingerprint, spans = (tasks["resolve-source"].outputs[name] for name in ("fingerprint", "spans"))
        tasks["ingest"] = ops["ingest"](source=source, spans=spans, label=label, data=data, beam=beam,
                                        data_fingerprint=fingerprint, code_version=code_version)
        examples = tasks["ingest"].outputs["examples"]
        tasks["preprocess"] = ops["preprocess"](examples=examples, options=preprocess, beam=beam,
                                                code_version=code_version)
        transform = tasks["preprocess"].outputs["transform"]
        search = dict(examples=examples, transform=transform, options=tuner, hypermodel_source=hypermodel_source,
                      code_version=code_version)
        if workers == 1:
            tasks["tune"] = ops["tune"](**search, work_root=work_root, reuse_hyperparameters=reuse_hyperparameters)
            tuning = tasks["tune"].outputs["tuning"]
        else:
            with dsl.ParallelFor(items=list(range(workers)), parallelism=workers, name="tune-workers") as worker:
                tasks["tune-worker"] = ops["tune-worker"](**search, work_root=work_root, worker=worker,
                                                          workers=workers,
                                                          reuse_hyperparameters=reuse_hyperparameters)
            tasks["tune-merge"] = ops["tune-merge"](**search, workers=workers, worker_tunings=dsl.Collected(
                tasks["tune-worker"].outputs["tuning"]))
            tuning = tasks["tune-merge"].outputs["tuning"]
        tasks["resolve-baseline"] = ops["resolve-baseline"](serving_dir=serving_dir, model_name=model_name,
                                                            warm_start=warm_start)
        tasks["train"] = ops["train"](examples=examples, transform=transform, tuning=tuning, options=training,
                                      tuner=tuner, hypermodel_source=hypermodel_source,
                                      warm_start=tasks["resolve-baseline"].outputs["Output"],
                                      code_version=code_version)
        model = tasks["train"].outputs["model"]
        tasks["evaluate"] = ops["evaluate"](examples=examples, model=model,
                                            baseline=tasks["resolve-baseline"].outputs["baseline"],
                                            options=evaluation, beam=beam, force_push=force_push,
                                            code_version=code_version)
        evaluation_result = tasks["evaluate"].outputs["evaluation"]
        with dsl.If(tasks["evaluate"].outputs["Output"] == True, name="blessed-or-forced"):  # noqa: E712 (kfp)
            tasks["push"] = ops["push"](model=model, evaluation=evaluation_result, serving_dir=serving_dir,
                                        model_name=model_name, force_push=force_push)
        for step in active:
            _configure(tasks[step.name], step, config)
        return PipelineOutputs(examples=examples, transform=transform, tuning=tuning, model=model,
                               evaluation=evaluation_result)

    if required:  # kfp reads the parameters from the signature: keyword-only ones may go without a default
        signature = inspect.signature(tunepipe_pipeline)
        tunepipe_pipeline.__signature__ = signature.replace(parameters=[
            parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                              default=inspect.Parameter.empty if parameter.name in required else parameter.default)
            for parameter in signature.parameters.values()])
    return dsl.pipeline(name=config.name, description=f"tunepipe: {config.data.label} from {source}")(
        tunepipe_pipeline)
