"""The one definition of the pipeline: its kfp components and the DAG that wires them.

`tunepipe run` executes `create_pipeline(...)` with kfp.local and `tunepipe compile` compiles the
very same function to KFP v2 IR; nothing else lists the steps.

The components are lightweight Python components on the project image with nothing installed at
run time (`install_kfp_package=False`): each body imports the installed package and calls
`pipeline.launcher`, because a lightweight component's source is shipped alone and cannot see
helpers defined beside it. (No `from __future__ import annotations` here: kfp reads the
component signatures' annotations as types.)

Every value that changes a step's output is one of its inputs, so KFP's cache cannot serve a stale
result: the config section the step reads, the Beam options, a fingerprint of the source files
(new files under the same path are a new input) and the code version.
"""

from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Output

from pipeline.config import PipelineConfig

DEFAULT_IMAGE = "ghcr.io/tunepipe/tunepipe:0.1.0"


def ingest(source: str, label: str, data: dict, beam: dict, data_fingerprint: str, code_version: str,
           examples: Output[Dataset], metrics: Output[Metrics]):
    """Read, validate and split the source table. `data_fingerprint` and `code_version` are only
    cache keys: they change when the source files or the code do."""
    from pipeline import launcher
    launcher.ingest(source, label, data, beam, examples, metrics)


def preprocess(examples: Input[Dataset], options: dict, beam: dict, code_version: str,
               transform: Output[Artifact]):
    """Full-pass analyzers over the train split: the transform the model's preprocessing is built from."""
    from pipeline import launcher
    launcher.preprocess(examples, options, beam, transform)


STEPS = ("ingest", "preprocess")


class PipelineOutputs(NamedTuple):
    examples: Dataset
    transform: Artifact


def _component(function, image: str):
    return dsl.component(function, base_image=image, install_kfp_package=False)


def pipeline_arguments(config: PipelineConfig, data_fingerprint: str, code_version: str) -> dict[str, Any]:
    """The pipeline's parameters for a run of `config`."""
    # KFP parameters cannot hold null: unset optional keys are left out and take their defaults again.
    data = config.data.model_dump(mode="json", exclude={"source", "label"}, exclude_none=True)
    return {
        "source": config.data.source,
        "label": config.data.label,
        "data": data,
        "data_fingerprint": data_fingerprint,
        "preprocess": config.preprocess.model_dump(mode="json", exclude_none=True),
        "beam": config.beam.model_dump(mode="json", exclude_none=True),
        "code_version": code_version,
    }


def create_pipeline(config: PipelineConfig, image: str = DEFAULT_IMAGE, data_fingerprint: str = "",
                    code_version: str = ""):
    """The kfp pipeline for `config`; its parameters default to the config's values."""
    ingest_op = _component(ingest, image)
    preprocess_op = _component(preprocess, image)
    defaults = pipeline_arguments(config, data_fingerprint, code_version)

    @dsl.pipeline(name=config.name, description=f"tunepipe: {config.data.label} from {config.data.source}")
    def tunepipe_pipeline(
        source: str = defaults["source"],
        label: str = defaults["label"],
        data: dict = defaults["data"],
        data_fingerprint: str = defaults["data_fingerprint"],
        preprocess: dict = defaults["preprocess"],
        beam: dict = defaults["beam"],
        code_version: str = defaults["code_version"],
    ) -> PipelineOutputs:
        ingest_task = ingest_op(source=source, label=label, data=data, beam=beam,
                                data_fingerprint=data_fingerprint, code_version=code_version)
        ingest_task.set_display_name("ingest")
        preprocess_task = preprocess_op(examples=ingest_task.outputs["examples"], options=preprocess, beam=beam,
                                        code_version=code_version)
        preprocess_task.set_display_name("preprocess")
        return PipelineOutputs(examples=ingest_task.outputs["examples"],
                               transform=preprocess_task.outputs["transform"])

    return tunepipe_pipeline
