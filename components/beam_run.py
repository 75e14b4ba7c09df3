"""Running a Beam pipeline for a step: options from the config, and a step's own errors surfaced as
one line rather than as Beam's wrapped traceback."""
from __future__ import annotations

from collections.abc import Callable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import BeamConfig
from pipeline.errors import DataError


def pipeline_options(beam_config: BeamConfig) -> PipelineOptions:
    return PipelineOptions(beam_config.pipeline_args())


def run(beam_config: BeamConfig, build: Callable[[beam.Pipeline], None]) -> None:
    """Build the pipeline with `build` and run it to completion on the configured runner."""
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
