"""The compiled pipeline is the DAG that `tunepipe run` executes."""
import yaml
from click.testing import CliRunner
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline import dag
from pipeline.cli import main
from tests.conftest import PENGUINS_CONFIG


def compiled_spec(tmp_path, *extra):
    out = tmp_path / "pipeline.yaml"
    result = CliRunner().invoke(main, ["compile", "--config", str(PENGUINS_CONFIG), "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(yaml.safe_load(out.read_text()), spec)
    return spec


def test_compiled_tasks_and_edges_are_the_local_dag(tmp_path):
    spec = compiled_spec(tmp_path)
    tasks = spec.root.dag.tasks
    assert set(tasks) == set(dag.STEPS)
    edges = {(upstream, name) for name, task in tasks.items() for upstream in task.dependent_tasks}
    assert edges == {("ingest", "preprocess")}
    examples = tasks["preprocess"].inputs.artifacts["examples"].task_output_artifact
    assert (examples.producer_task, examples.output_artifact_key) == ("ingest", "examples")
    assert spec.pipeline_info.name == "penguins"


def test_components_run_the_given_image_and_install_nothing(tmp_path):
    spec = compiled_spec(tmp_path, "--image", "registry.example/tunepipe:1.2")
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    assert len(executors) == len(dag.STEPS)
    for executor in executors.values():
        container = executor["container"]
        assert container["image"] == "registry.example/tunepipe:1.2"
        assert "pip install" not in " ".join(container["command"])


def test_parameters_default_to_the_config(tmp_path):
    spec = compiled_spec(tmp_path)
    parameters = spec.root.input_definitions.parameters
    assert parameters["label"].default_value.string_value == "species"
    assert parameters["source"].default_value.string_value.endswith("penguins.csv")
    data = json_format.MessageToDict(parameters["data"].default_value)
    assert data["features"]["exclude"] == ["year"]
    assert json_format.MessageToDict(parameters["beam"].default_value)["runner"] == "DirectRunner"
    assert parameters["code_version"].default_value.string_value.startswith("0.1.0+")
