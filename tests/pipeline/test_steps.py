"""The step registry is the one list of steps: every entry's component and hook load, the DAG's kfp
components take exactly the registry's sections, inputs and outputs, and each summary line reads
what its step records."""
from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from components import artifacts
from pipeline import dag, steps, tags
from pipeline.steps import Facts

CACHE_KEYS = {"code_version", "data_fingerprint"}


@pytest.mark.parametrize("step", steps.STEPS, ids=lambda step: step.name)
def test_every_step_names_a_component_and_a_hook_that_exist(step):
    assert callable(step.load_component()) and callable(step.load_hook())
    assert set(step.sections.values()) <= set(steps.SECTIONS)


@pytest.mark.parametrize("key", steps.SECTIONS)
def test_every_section_a_step_can_read_is_a_section_of_the_config_file(key):
    from components.section import Section
    from pipeline import config

    assert issubclass(config.PipelineConfig.model_fields[key].annotation, Section)


@pytest.mark.parametrize("step", steps.STEPS, ids=lambda step: step.name)
def test_the_kfp_component_takes_the_registrys_sections_inputs_and_outputs(step):
    component = dag.component_function(step)
    parameters = inspect.signature(component).parameters
    assert set(step.sections) <= set(parameters)
    assert set(step.inputs) <= set(parameters) and set(step.outputs) <= set(parameters)
    for name in step.inputs:
        assert "Input" in str(parameters[name].annotation)
    for name in step.outputs:
        assert "Output" in str(parameters[name].annotation)
    # Every artifact a step consumes is produced by a step before it.
    for name in step.inputs:
        assert steps.position(steps.producer(name).name) < steps.position(step.name)


def test_the_registry_lists_the_artifacts_and_uncached_steps_the_dag_uses():
    assert steps.ARTIFACTS == (artifacts.EXAMPLES, artifacts.TRANSFORM, artifacts.TUNING, artifacts.MODEL,
                               artifacts.EVALUATION)
    assert set(dag.PipelineOutputs._fields) == set(steps.ARTIFACTS)
    assert steps.UNCACHED == ("resolve-source", "resolve-baseline", "push")


def _downstream(step: steps.Step) -> list[steps.Step]:
    """The steps that run after `step` on its outputs, directly or through others."""
    found, frontier = [], [step]
    while frontier:
        producing = frontier.pop()
        for later in steps.STEPS:
            uses = any(producing.name in {steps.producer(name, workers).name for workers in (1, 2)
                                          if later.runs_in(workers)} for name in later.inputs)
            if uses and later not in found:
                found.append(later)
                frontier.append(later)
    return found


def test_what_a_step_prepares_is_what_a_step_after_it_on_its_outputs_imports():
    """The warm server imports a step's `prepares` when it runs: a library no step after it needs
    would be an import for nothing, and the search (in either form) is what the steps before it
    prepare for."""
    preparing = [step for step in steps.STEPS if step.prepares]
    assert [step.name for step in preparing] == ["ingest", "preprocess"]
    for step in preparing:
        later = _downstream(step)
        assert {"tune", "tune-worker"} <= {other.name for other in later
                                           if set(step.prepares) <= set(other.libraries)}


def test_a_collected_input_is_traced_to_the_output_it_collects():
    """The merge records its list of worker results item by item; lineage and the run summary
    look each item up as the tune worker's `tuning` it is."""
    assert steps.producer(steps.WORKER_TUNINGS, parallel_trials=2).name == "tune-worker"
    assert steps.produced_as(f"{steps.WORKER_TUNINGS}.1") == artifacts.TUNING
    assert steps.collected(f"{steps.WORKER_TUNINGS}.12") == ("tune-worker", artifacts.TUNING)
    assert steps.collected(f"{steps.WORKER_TUNINGS}.best") is None and steps.collected(artifacts.TUNING) is None
    assert steps.produced_as(artifacts.TUNING) == artifacts.TUNING
    assert steps.produced_as(artifacts.EXAMPLES) == artifacts.EXAMPLES


def test_summaries_read_what_the_steps_record():
    summary = {step.name: step.summary for step in steps.STEPS}
    assert summary["ingest"](Facts({"rows_read": 344, "rejected": 0, "rows_train": 281, "rows_eval": 63})) == (
        "344 rows read, 0 rejected; train 281, eval 63")
    assert summary["preprocess"](Facts({"features": 6, "classes": 3})) == "6 features, 3 classes"
    tuned = Facts({"trials": 10, "best_score": 0.98}, {tags.TUNING: tags.SEARCHED},
                  {"tuner": '{"objective": "val_accuracy"}'})
    assert summary["tune"](tuned) == "10 trials, best val_accuracy 0.9800"
    reused = Facts({"best_score": 0.98}, {tags.TUNING: tags.REUSED, tags.REUSED_FROM: "abc"},
                   {"tuner": '{"objective": "val_accuracy"}'})
    assert summary["tune"](reused) == "reused the best hyperparameters of search run abc (val_accuracy 0.9800)"
    assert summary["tune"](Facts({"trials": 0}, {tags.TUNING: tags.OFF})) == "tuning off: default hyperparameters"
    merged = Facts({"trials": 8, "workers": 2, "best_score": 0.97}, {tags.TUNING: tags.SEARCHED},
                   {"tuner": '{"objective": "val_accuracy"}'})
    assert summary["tune-merge"](merged) == "8 trials on 2 workers, best val_accuracy 0.9700"
    workers = Facts.of_runs([SimpleNamespace(data=SimpleNamespace(metrics={"trials": trials}, tags={}, params={}))
                             for trials in (3, 5)])
    assert summary["tune-worker"](workers) == "2 workers: 8 trials"
    assert summary["train"](Facts({"eval_accuracy": 1.0, "epochs_trained": 12, "warm_started": 1})) == (
        "eval accuracy 1.0000 after 12 epochs, warm-started")
    assert summary["push"](Facts({}, {tags.PUSHED: "true", tags.PUSH_VERSION: "2", tags.PUSH_REASON: "blessed"})) == (
        "version 2: blessed")
    assert summary["push"](Facts({}, {tags.PUSHED: "false", tags.PUSH_REASON: "this model is already served"})) == (
        "this model is already served")
    assert summary["resolve-baseline"](Facts()) == "no model in production yet"
    evaluated = Facts({"eval_example_count": 63, "eval_accuracy": 0.97, "eval_macro_auc": 0.99},
                      {tags.BLESSED: "false"})
    assert summary["evaluate"](evaluated) == "evaluated 63 examples: accuracy 0.9700, macro AUC 0.9900; not blessed"
    # A step that recorded nothing (e.g. failed early) has an empty summary, not an error.
    for step in steps.STEPS:
        assert isinstance(step.summary(Facts()), str)
