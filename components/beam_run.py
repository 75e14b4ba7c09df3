"""Running a Beam pipeline for a step: the `beam` config section, options from it, and a step's own
errors surfaced as one line rather than as Beam's wrapped traceback.

Beam is imported inside `run`: the config section is read by steps and commands that never start
a Beam pipeline.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from components.errors import DataError
from components.section import ScalarOption, Section


class BeamConfig(Section):
    """Where the Beam steps run. `options` are Beam pipeline options by their flag name,
    e.g. {project: my-project, region: europe-west1, temp_location: gs://bucket/tmp}."""

    runner: str = "DirectRunner"
    options: dict[str, ScalarOption | list[str]] = {}

    def pipeline_args(self) -> list[str]:
        # Beam 2.77's DirectRunner first tries Prism, a Go binary it downloads at run time (impossible
        # offline and in an image that must fetch nothing), then falls back to the FnApiRunner.
        # Going to the FnApiRunner directly runs the same engine without the download attempt.
        runner = "FnApiRunner" if self.runner == "DirectRunner" else self.runner
        args = [f"--runner={runner}"]
        for name, value in self.options.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                if isinstance(item, bool):
                    if item:
                        args.append(f"--{name}")
                else:
                    args.append(f"--{name}={item}")
        return args


def pipeline_options(beam_config: BeamConfig) -> Any:
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(beam_config.pipeline_args())


def run(beam_config: BeamConfig, build: Callable[[Any], None]) -> None:
    """Build the pipeline with `build` and run it to completion on the configured runner."""
    import apache_beam as beam

    try:
        with beam.Pipeline(options=pipeline_options(beam_config)) as root:
            build(root)
    except Exception as error:
        ours = _our_error(error)
        if ours is None:
            raise
        raise ours from None


def _our_error(error: BaseException) -> DataError | None:
    """Beam re-raises a DoFn's exception with the step name appended; find our own message in it."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, DataError):
            return DataError(str(seen).split(" [while running")[0])
        seen = seen.__cause__ or seen.__context__
    return None
