"""The compiled pipeline is the DAG that `tunepipe run` executes."""
import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import steps
from pipeline.cli import main
from tests.conftest import PENGUINS_CONFIG


def compiled_spec(tmp_path, *extra, config=PENGUINS_CONFIG):
    out = tmp_path / "compiled-pipeline.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", str(config), "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(yaml.safe_load(out.read_text()), spec)
    return spec


def all_tasks(spec) -> dict:
    """Every task of the pipeline, the ones inside condition sub-DAGs included, by task name."""
    return {name: task for name, (task, _) in tasks_with_upstream(spec).items()}


def tasks_with_upstream(spec) -> dict:
    """Each task with the tasks it waits for: its own dependencies and those of the sub-DAG
    (e.g. a dsl.If) it sits in."""
    found = {}
    dags = [(spec.root.dag, set())]
    while dags:
        graph, inherited = dags.pop()
        for name, task in graph.tasks.items():
            upstream = inherited | set(task.dependent_tasks)
            component = spec.components[task.component_ref.name]
            if component.WhichOneof("implementation") == "dag":
                dags.append((component.dag, upstream))
            else:
                found[name] = (task, upstream)
    return found


def test_compiled_tasks_and_edges_are_the_local_dag(tmp_path):
    spec = compiled_spec(tmp_path)
    tasks = tasks_with_upstream(spec)
    assert set(tasks) == {step.name for step in steps.active(1)}
    edges = {(upstream, name) for name, (_, upstreams) in tasks.items() for upstream in upstreams}
    assert edges == {("resolve-source", "ingest"), ("ingest", "preprocess"), ("ingest", "tune"),
                     ("preprocess", "tune"), ("ingest", "train"), ("preprocess", "train"), ("tune", "train"),
                     ("ingest", "evaluate"), ("train", "evaluate"), ("resolve-baseline", "evaluate"),
                     ("resolve-baseline", "train"),
                     ("train", "push"), ("evaluate", "push")}
    examples = tasks["preprocess"][0].inputs.artifacts["examples"].task_output_artifact
    assert (examples.producer_task, examples.output_artifact_key) == ("ingest", "examples")
    assert spec.pipeline_info.name == "penguins"


def test_push_runs_only_when_evaluate_says_so(tmp_path):
    spec = compiled_spec(tmp_path)
    condition = next(task for task in spec.root.dag.tasks.values() if "push" in
                     spec.components[task.component_ref.name].dag.tasks)
    assert "pipelinechannel--evaluate-Output" in condition.trigger_policy.condition
    assert "== true" in condition.trigger_policy.condition


def test_steps_that_read_the_outside_world_are_never_cached(tmp_path):
    tasks = all_tasks(compiled_spec(tmp_path))
    assert {name for name, task in tasks.items() if not task.caching_options.enable_cache} == set(steps.UNCACHED)


def test_components_run_the_given_image_and_install_nothing(tmp_path):
    spec = compiled_spec(tmp_path, "--image", "registry.example/tunepipe:1.2")
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert len(executors) == len(steps.active(1))
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "registry.example/tunepipe:1.2"
        assert "pip install" not in " ".join(container["command"])


def test_parameters_default_to_the_config(tmp_path):
    spec = compiled_spec(tmp_path)
    parameters = spec.root.input_definitions.parameters
    assert parameters["label"].default_value.string_value == "species"
    # The bundled config's paths are this machine's: the package leaves them for the run to give.
    for name in ("source", "work_root", "serving_dir"):
        assert not parameters[name].HasField("default_value") and not parameters[name].is_optional
    data = json_format.MessageToDict(parameters["data"].default_value)
    assert data["features"]["exclude"] == ["year"]
    assert json_format.MessageToDict(parameters["beam"].default_value)["runner"] == "DirectRunner"
    assert parameters["code_version"].default_value.string_value.startswith("0.1.0+")
    assert parameters["model_name"].default_value.string_value == "penguins"
    assert parameters["force_push"].default_value.bool_value is False
    assert json_format.MessageToDict(parameters["tuner"].default_value)["algorithm"] == "hyperband"


def test_resources_retries_and_tracking_come_from_the_config(tmp_path):
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(PENGUINS_CONFIG.read_text() + """
tracking_uri: http://mlflow.kubeflow.svc.cluster.local:5000
kubeflow:
  resources:
    default: {cpu_request: "500m", memory_request: 1Gi}
    tune: {cpu_request: "4", cpu_limit: "8", memory_request: 8Gi, memory_limit: 16Gi}
  retries: {resolve-source: 3, push: 2}
""".replace("source: penguins.csv", f"source: {PENGUINS_CONFIG.parent / 'penguins.csv'}"))
    out = tmp_path / "pipeline-out.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", str(config_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(yaml.safe_load(out.read_text()), spec)
    tasks = all_tasks(spec)
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]

    def container(step):
        return executors[spec.components[tasks[step].component_ref.name].executor_label]["container"]

    assert container("tune")["resources"]["resourceCpuRequest"] == "4"
    assert container("tune")["resources"]["resourceMemoryLimit"] == "16Gi"
    assert container("ingest")["resources"]["resourceCpuRequest"] == "500m"
    assert tasks["resolve-source"].retry_policy.max_retry_count == 3
    assert tasks["push"].retry_policy.max_retry_count == 2
    assert tasks["train"].retry_policy.max_retry_count == 0
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.kubeflow.svc.cluster.local:5000"} in \
        container("evaluate")["env"]


def test_unknown_step_in_the_kubeflow_section_is_refused(tmp_path):
    from pipeline import config
    from components.errors import ConfigError

    with pytest.raises(ConfigError, match=r"kubeflow\.retries: unknown step tuning \(steps: default, resolve-source"):
        config.from_dict({"data": {"source": "a.csv", "label": "y"}, "kubeflow": {"retries": {"tuning": 2}}})


VOLUMES = """
output_root: /tunepipe
serving_dir: /models
kubeflow:
  volumes:
    serving: {pvc: tunepipe-serving, mount_path: /models}
    work: {pvc: tunepipe-work, mount_path: /tunepipe}
"""


def compiled_documents(tmp_path, extra_config: str) -> list[dict]:
    """The YAML documents `tunepipe compile` writes for the penguins config plus `extra_config`:
    the pipeline spec, then the platform spec when there is one."""
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(PENGUINS_CONFIG.read_text().replace(
        "source: penguins.csv", f"source: {PENGUINS_CONFIG.parent / 'penguins.csv'}") + extra_config)
    out = tmp_path / "pipeline-out.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", str(config_file), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return list(yaml.safe_load_all(out.read_text()))


def pvc_mounts_by_step(documents: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """(PVC name, mount path) of every step that mounts one, from the Kubernetes platform spec."""
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(documents[0], spec)
    step_of_executor = {spec.components[task.component_ref.name].executor_label: name
                        for name, task in all_tasks(spec).items()}
    executors = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {step_of_executor[label]: [(mount["pvcNameParameter"]["runtimeValue"]["constant"], mount["mountPath"])
                                      for mount in executor.get("pvcMount", [])]
            for label, executor in executors.items() if executor.get("pvcMount")}


def test_configured_volumes_are_mounted_into_the_steps_that_keep_files(tmp_path):
    documents = compiled_documents(tmp_path, VOLUMES)
    serving = [("tunepipe-serving", "/models")]
    # push writes the serving directory, resolve-baseline looks in it, and train (warm start) and
    # evaluate (the baseline) read the served model it found; tune keeps Keras Tuner's state in work_root.
    assert pvc_mounts_by_step(documents) == {"resolve-baseline": serving, "train": serving, "evaluate": serving,
                                             "push": serving, "tune": [("tunepipe-work", "/tunepipe")]}
    # The parameters' defaults are on those volumes, so a run needs no --param to find them.
    parameters = documents[0]["root"]["inputDefinitions"]["parameters"]
    assert parameters["serving_dir"]["defaultValue"] == "/models"
    assert parameters["work_root"]["defaultValue"] == "/tunepipe/work"


def test_one_volume_mounts_only_its_steps(tmp_path):
    documents = compiled_documents(tmp_path, """
kubeflow:
  volumes:
    work: {pvc: scratch, mount_path: /scratch}
output_root: /scratch/tunepipe
""")
    assert pvc_mounts_by_step(documents) == {"tune": [("scratch", "/scratch")]}


def test_without_volumes_there_is_no_kubernetes_platform_spec(tmp_path):
    documents = compiled_documents(tmp_path, "")
    assert len(documents) == 1, "a second document is a platform spec"
    assert "platforms" not in documents[0]


def test_a_serving_dir_off_the_serving_volume_is_one_line_and_no_package(tmp_path):
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(PENGUINS_CONFIG.read_text() + VOLUMES.replace("serving_dir: /models",
                                                                         "serving_dir: /srv/models"))
    out = tmp_path / "pipeline-out.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", str(config_file), "-o", str(out)])
    assert result.exit_code == 1
    assert "serving_dir /srv/models is not under kubeflow.volumes.serving.mount_path /models" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_the_tuning_report_is_an_html_output_and_the_hypermodel_a_parameter_of_tune_and_train(tmp_path):
    spec = compiled_spec(tmp_path)
    tune = spec.components[all_tasks(spec)["tune"].component_ref.name]
    assert tune.output_definitions.artifacts["report"].artifact_type.schema_title == "system.HTML"
    for step in ("tune", "train"):
        component = spec.components[all_tasks(spec)[step].component_ref.name]
        assert "hypermodel_source" in component.input_definitions.parameters


def parallel_config(tmp_path, tuner: str, kubeflow: str = "") -> str:
    config_file = tmp_path / "parallel.yaml"
    config_file.write_text(PENGUINS_CONFIG.read_text().replace(
        "source: penguins.csv", f"source: {PENGUINS_CONFIG.parent / 'penguins.csv'}") + tuner + kubeflow)
    return str(config_file)


def test_parallel_trials_compile_to_n_workers_at_once_and_their_merge(tmp_path):
    config_file = parallel_config(tmp_path, "\ntuner: {algorithm: random, max_trials: 12, parallel_trials: 3}\n",
                                  "kubeflow:\n  resources:\n    tune: {cpu_request: '4', accelerator_limit: 1}\n"
                                  "  retries: {tune: 2}\n")
    spec = compiled_spec(tmp_path, config=config_file)
    loop_name, loop = next((name, task) for name, task in spec.root.dag.tasks.items()
                           if task.HasField("parameter_iterator"))
    assert loop.iterator_policy.parallelism_limit == 3
    assert json_format.MessageToDict(loop.parameter_iterator)["items"]["raw"] == "[0, 1, 2]"
    tasks = tasks_with_upstream(spec)
    assert set(tasks) == {step.name for step in steps.active(3)}
    assert "tune" not in tasks
    loop_tasks = spec.components[loop.component_ref.name].dag.tasks
    assert set(loop_tasks) == {"tune-worker"}
    assert loop_name in tasks["tune-merge"][1] and "tune-merge" in tasks["train"][1]
    merged = tasks["tune-merge"][0].inputs.artifacts["worker_tunings"].task_output_artifact
    # The merge takes the workers' tunings collected as one list (dsl.Collected), the loop's output.
    assert (merged.producer_task, merged.output_artifact_key) == (loop_name, "pipelinechannel--tune-worker-tuning")
    # Every worker is a pod like the tune step's: its resources (the GPU too) and its retries.
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    worker = executors[spec.components[tasks["tune-worker"][0].component_ref.name].executor_label]["container"]
    assert worker["resources"]["resourceCpuRequest"] == "4"
    accelerator = worker["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert tasks["tune-worker"][0].retry_policy.max_retry_count == 2
    assert tasks["tune-worker"][0].caching_options.enable_cache and tasks["tune-merge"][0].caching_options.enable_cache


def test_more_parallel_trials_than_trials_is_refused_in_one_line(tmp_path):
    config_file = parallel_config(tmp_path, "\ntuner: {algorithm: random, max_trials: 2, parallel_trials: 3}\n")
    result = CliRunner().invoke(main, ["compile", "--config", config_file, "-o", str(tmp_path / "out.yaml")])
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1
    assert "tuner: parallel_trials 3 is more than max_trials 2" in result.output
    assert not (tmp_path / "out.yaml").exists()


def test_with_tuning_off_there_is_nothing_to_share_and_one_tune_task(tmp_path):
    config_file = parallel_config(tmp_path, "\ntuner: {enabled: false, algorithm: random, max_trials: 4, "
                                            "parallel_trials: 2}\n")
    spec = compiled_spec(tmp_path, config=config_file)
    assert set(tasks_with_upstream(spec)) == {step.name for step in steps.active(1)}
