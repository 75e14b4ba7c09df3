"""The step registry: every step of the pipeline, once.

For each step: its name (the kfp task name and the `tunepipe.step` tag), the plain component
function it calls and the pipeline-side hook that calls it, the config sections it reads, the
artifacts it consumes and produces, whether kfp may cache it, the Kubeflow volumes it mounts, and
how its one-line summary is written from what it recorded. The DAG (`pipeline.dag`), the step
launcher (`pipeline.launcher`), the summary of `tunepipe run` and the lineage queries read this
table; nothing else lists the steps.

Functions are named as `module:function` and imported only where they run, and sections by their
key in the config file (their models are `pipeline.config`'s), so reading the registry costs
nothing: the CLI, the config loader and the queries use it without TensorFlow, Beam or kfp.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from components import artifacts
from pipeline import tags

# Sections of PipelineConfig a step can read, by their key in the config file.
SECTIONS = ("data", "beam", "preprocess", "tuner", "training", "evaluation")
# Kubeflow volumes (`kubeflow.volumes.<name>`) a step can mount.
SERVING_VOLUME, WORK_VOLUME = "serving", "work"
# Artifacts that are not a step's manifest-carrying output: resolve-baseline's description of the
# model in production, and push's record of what it pushed; the workers' tuning results, which
# the merge of a parallel search takes as one list.
BASELINE, PUSHED, WORKER_TUNINGS = "baseline", "pushed", "worker_tunings"
# An input that collects one output of each iteration of a ParallelFor (`dsl.Collected`): the step
# and the output it collects. A step run records such an input item by item: `worker_tunings.0`, ...
COLLECTED = {WORKER_TUNINGS: ("tune-worker", artifacts.TUNING)}


@dataclass(frozen=True)
class Facts:
    """What a step run recorded, as its summary line reads it: metrics, tags and params."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of_run(cls, run: Any) -> Facts:
        return cls(run.data.metrics, run.data.tags, run.data.params)

    @classmethod
    def of_runs(cls, runs: list[Any]) -> Facts:
        """The runs of one step run several times at once (the workers of a parallel search): their
        metrics summed, `runs` how many."""
        metrics: dict[str, float] = {"runs": len(runs)}
        for run in runs:
            for name, value in run.data.metrics.items():
                metrics[name] = metrics.get(name, 0) + value
        return cls(metrics, runs[0].data.tags, runs[0].data.params)

    def count(self, name: str) -> int:
        return int(self.metrics.get(name, 0))

    def number(self, name: str, digits: int = 4) -> str:
        value = self.metrics.get(name)
        return "-" if value is None else f"{value:.{digits}f}"

    def json_param(self, name: str) -> dict[str, Any]:
        try:
            value = json.loads(self.params.get(name, ""))
        except (TypeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Step:
    name: str
    component: str  # `module:function`, the plain component the step calls
    hook: str  # `module:function` in pipeline/, from the task's arguments to the component and back
    summary: Callable[[Facts], str]
    sections: Mapping[str, str] = field(default_factory=dict)  # the task's parameter -> the config section
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    cacheable: bool = True  # False: its result depends on the world outside its inputs
    volumes: tuple[str, ...] = ()
    # In which pipelines the step is: always (None), or only when the search runs in parallel
    # (True: `tuner.parallel_trials` > 1) or only when it does not (False).
    parallel: bool | None = None
    # The step name its tracking run carries, when not its own: the merge of a parallel search is
    # the tune step on the record, for `tunepipe runs / trials / lineage` and retraining alike.
    records_as: str | None = None
    # The step whose Kubeflow resources and retries it takes unless it has its own: every worker
    # of a parallel search is a pod like the tune step's, with its GPU.
    part_of: str | None = None
    # The heavy libraries its work imports: the warm server of `tunepipe run` (pipeline.step_server)
    # imports them once, so that the next steps needing them start without paying the import.
    libraries: tuple[str, ...] = ()
    # The heavy libraries the steps after it import: a step that runs (kfp's cache did not answer it)
    # makes those after it run too, so the warm server imports these next, for them.
    prepares: tuple[str, ...] = ()

    @property
    def recorded_name(self) -> str:
        return self.records_as or self.name

    def runs_in(self, parallel_trials: int) -> bool:
        return self.parallel is None or self.parallel == (parallel_trials > 1)

    def load_component(self) -> Callable[..., Any]:
        return _load(self.component)

    def load_hook(self) -> Callable[..., Any]:
        return _load(self.hook)


def _load(reference: str) -> Callable[..., Any]:
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


# --- the one-line summaries ------------------------------------------------------------------------

def _source_summary(facts: Facts) -> str:
    spans = facts.tags.get(tags.SPANS)
    files = facts.tags.get(tags.FILES)
    return ", ".join(part for part in (f"spans {spans}" if spans else "", f"{files} file(s)" if files else "") if part)


def _ingest_summary(facts: Facts) -> str:
    if "rows_read" not in facts.metrics:
        return ""
    splits = ", ".join(f"{name.removeprefix('rows_')} {int(value)}" for name, value in facts.metrics.items()
                       if name.startswith("rows_") and name != "rows_read")
    line = f"{facts.count('rows_read')} rows read, {facts.count('rejected')} rejected; {splits}"
    problem = facts.tags.get(tags.PROBLEM_TYPE)
    return f"{line}; {problem} ({facts.tags.get(tags.PROBLEM_REASON, '')})" if problem else line


def _preprocess_summary(facts: Facts) -> str:
    if "features" not in facts.metrics:
        return ""
    line = f"{facts.count('features')} features, " + (
        "regression" if facts.tags.get(tags.PROBLEM_TYPE) == "regression" else f"{facts.count('classes')} classes")
    left_out = facts.tags.get(tags.LEFT_OUT)
    return f"{line}; left out (empty): {left_out.replace(',', ', ')}" if left_out else line


def _tune_summary(facts: Facts) -> str:
    objective = facts.tags.get(tags.OBJECTIVE) or facts.json_param("tuner").get("objective", "")
    if facts.tags.get(tags.TUNING) == tags.REUSED:
        return (f"reused the best hyperparameters of search run {facts.tags.get(tags.REUSED_FROM, '?')} "
                f"({objective} {facts.number('best_score')})")
    if "trials" not in facts.metrics:
        return ""
    if not facts.count("trials"):
        return "tuning off: default hyperparameters"
    workers = f" on {facts.count('workers')} workers" if facts.count("workers") > 1 else ""
    return f"{facts.count('trials')} trials{workers}, best {objective} {facts.number('best_score')}"


def _headline(facts: Facts) -> str | None:
    """The metric a summary leads with: accuracy for a classifier, rmse for a regression."""
    return next((name for name in ("accuracy", "rmse") if f"eval_{name}" in facts.metrics), None)


def _worker_summary(facts: Facts) -> str:
    if "trials" not in facts.metrics:
        return ""
    return f"{facts.count('runs')} workers: {facts.count('trials')} trials"


def _train_summary(facts: Facts) -> str:
    headline = _headline(facts)
    if headline is None:
        return ""
    warm = ", warm-started" if facts.metrics.get("warm_started") else ""
    return f"eval {headline} {facts.number(f'eval_{headline}')} after {facts.count('epochs_trained')} epochs{warm}"


def _baseline_summary(facts: Facts) -> str:
    path = facts.tags.get(tags.BASELINE_PATH)
    return f"in production: {path}" if path else "no model in production yet"


def _evaluate_summary(facts: Facts) -> str:
    if facts.tags.get(tags.UNCHANGED):
        return f"the candidate is the model in production ({facts.tags[tags.UNCHANGED]}): not evaluated again"
    headline = _headline(facts)
    if headline is None:
        return ""
    blessed = {"true": "blessed", "false": "not blessed"}.get(facts.tags.get(tags.BLESSED, ""), "")
    second, spoken = ("mae", "MAE") if headline == "rmse" else ("macro_auc", "macro AUC")
    line = (f"evaluated {facts.count('eval_example_count')} examples: {headline} {facts.number(f'eval_{headline}')}, "
            f"{spoken} {facts.number(f'eval_{second}')}")
    return f"{line}; {blessed}" if blessed else line


def _push_summary(facts: Facts) -> str:
    if facts.tags.get(tags.PUSHED) == "true":
        return f"version {facts.tags.get(tags.PUSH_VERSION)}: {facts.tags.get(tags.PUSH_REASON, '')}"
    return facts.tags.get(tags.PUSH_REASON, "")


# --- the steps, in the order they run --------------------------------------------------------------

_BEAM = ("apache_beam", "pyarrow", "pandas")
_KERAS = ("tensorflow", "keras", "keras_tuner")

STEPS: tuple[Step, ...] = (
    Step("resolve-source", "components.source:resolve", "pipeline.hooks:resolve_source", _source_summary,
         sections={"data": "data"},
         cacheable=False),
    Step("ingest", "components.ingest.step:run", "pipeline.hooks:ingest", _ingest_summary,
         sections={"data": "data", "beam": "beam"},
         outputs=(artifacts.EXAMPLES,),
         libraries=_BEAM,
         prepares=_KERAS),
    Step("preprocess", "components.preprocess.step:run", "pipeline.hooks:preprocess", _preprocess_summary,
         sections={"options": "preprocess", "beam": "beam"},
         inputs=(artifacts.EXAMPLES,),
         outputs=(artifacts.TRANSFORM,),
         libraries=_BEAM,
         prepares=_KERAS),
    Step("tune", "components.tune.step:run", "pipeline.hooks:tune", _tune_summary,
         sections={"options": "tuner"},
         inputs=(artifacts.EXAMPLES, artifacts.TRANSFORM),
         outputs=(artifacts.TUNING,),
         volumes=(WORK_VOLUME,),
         parallel=False,
         libraries=_KERAS),
    # tuner.parallel_trials > 1: N workers in a ParallelFor, each its share of the search, and their merge.
    Step("tune-worker", "components.tune.step:run", "pipeline.hooks:tune_worker", _worker_summary,
         sections={"options": "tuner"},
         inputs=(artifacts.EXAMPLES, artifacts.TRANSFORM),
         outputs=(artifacts.TUNING,),
         volumes=(WORK_VOLUME,),
         parallel=True,
         part_of="tune",
         libraries=_KERAS),
    Step("tune-merge", "components.tune.workers:merge", "pipeline.hooks:tune_merge", _tune_summary,
         sections={"options": "tuner"},
         inputs=(artifacts.EXAMPLES, artifacts.TRANSFORM, WORKER_TUNINGS),
         outputs=(artifacts.TUNING,),
         parallel=True,
         records_as="tune",
         libraries=_KERAS),
    Step("train", "components.train.step:run", "pipeline.hooks:train", _train_summary,
         sections={"options": "training", "tuner": "tuner"},
         inputs=(artifacts.EXAMPLES, artifacts.TRANSFORM, artifacts.TUNING),
         outputs=(artifacts.MODEL,),
         volumes=(SERVING_VOLUME,),
         libraries=_KERAS),
    Step("resolve-baseline", "components.resolve_baseline:run", "pipeline.hooks:resolve_baseline", _baseline_summary,
         outputs=(BASELINE,),
         cacheable=False,
         volumes=(SERVING_VOLUME,)),
    Step("evaluate", "components.evaluate.step:run", "pipeline.hooks:evaluate", _evaluate_summary,
         sections={"options": "evaluation", "beam": "beam"},
         inputs=(artifacts.EXAMPLES, artifacts.MODEL, BASELINE),
         outputs=(artifacts.EVALUATION,),
         volumes=(SERVING_VOLUME,),
         libraries=(*_BEAM, "tensorflow", "tensorflow_model_analysis")),
    Step("push", "components.push:run", "pipeline.hooks:push", _push_summary,
         inputs=(artifacts.MODEL, artifacts.EVALUATION),
         outputs=(PUSHED,),
         cacheable=False,
         volumes=(SERVING_VOLUME,)),
)

NAMES: tuple[str, ...] = tuple(step.name for step in STEPS)
BY_NAME: dict[str, Step] = {step.name: step for step in STEPS}
# The manifest-carrying artifacts, in the order the steps produce them: what lineage traces.
ARTIFACTS: tuple[str, ...] = tuple(dict.fromkeys(output for step in STEPS for output in step.outputs
                                                 if output not in (BASELINE, PUSHED)))
UNCACHED: tuple[str, ...] = tuple(step.name for step in STEPS if not step.cacheable)


def producer(artifact: str, parallel_trials: int = 1) -> Step:
    """The step whose output `artifact` is, in a pipeline whose search runs `parallel_trials` at once
    (the last of the steps writing it: a parallel search's tuning is its merge's)."""
    if artifact in COLLECTED:
        return BY_NAME[COLLECTED[artifact][0]]
    return [step for step in active(parallel_trials) if artifact in step.outputs][-1]


def collected(recorded_input: str) -> tuple[str, str] | None:
    """For an item of a collected list as a step run recorded it (`worker_tunings.0`), the step and
    output it is (a tune worker's `tuning`); None for any other input."""
    name, _, index = recorded_input.rpartition(".")
    return COLLECTED.get(name) if index.isdigit() else None


def produced_as(recorded_input: str) -> str:
    """The name its producer gave an input a step run recorded (see `collected`)."""
    item = collected(recorded_input)
    return item[1] if item else recorded_input


def active(parallel_trials: int) -> tuple[Step, ...]:
    """The steps of a pipeline whose search runs `parallel_trials` trials at once."""
    return tuple(step for step in STEPS if step.runs_in(parallel_trials))


def position(name: str) -> int:
    """A step's place in the run order (unknown names last)."""
    return NAMES.index(name) if name in NAMES else len(NAMES)
