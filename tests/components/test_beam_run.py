"""The Beam runner and options from the config reach the pipelines the data steps build."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, StandardOptions

from components import beam_run
from components.beam_run import BeamConfig
from components.errors import DataError


def options_seen_by_a_pipeline(config: BeamConfig):
    seen = []
    beam_run.run(config, lambda root: seen.append(root.options) or (root | "Nothing" >> beam.Create([])))
    return seen[0]


def test_direct_runner_options_reach_the_pipeline():
    options = options_seen_by_a_pipeline(BeamConfig(options={"direct_num_workers": 2,
                                                             "direct_running_mode": "multi_threading"}))
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert options.view_as(DirectOptions).direct_running_mode == "multi_threading"


def test_dataflow_options_are_parsed_as_beam_reads_them():
    config = BeamConfig(runner="DataflowRunner", options={"project": "acme-ml", "region": "europe-west4",
                                                          "temp_location": "gs://acme/tmp"})
    options = beam_run.pipeline_options(config)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == ("acme-ml", "europe-west4", "gs://acme/tmp")


def test_a_data_error_raised_inside_a_dofn_comes_out_as_one_line():
    import apache_beam as beam

    def fail(_):
        raise DataError("table.csv: something is wrong")

    with pytest.raises(DataError) as error:
        beam_run.run(BeamConfig(), lambda root: root | beam.Create([1]) | beam.Map(fail))
    assert str(error.value) == "table.csv: something is wrong"
