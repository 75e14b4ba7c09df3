"""Config loading and validation: what a user sees when the YAML is wrong."""
from pathlib import Path

import pytest

from pipeline import config
from pipeline.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_bundled_config_loads_with_paths_relative_to_the_file():
    from tests.conftest import PENGUINS, PENGUINS_CONFIG

    loaded = config.load(PENGUINS_CONFIG)
    assert Path(loaded.data.source) == PENGUINS
    assert loaded.data.label == "species"
    assert loaded.data.features.exclude == ("year",)
    assert loaded.resolved_model_name == "penguins"


def test_config_is_frozen():
    loaded = config.from_dict({"data": {"source": "x.csv", "label": "y"}})
    with pytest.raises(Exception):
        loaded.data.label = "z"


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path):
    path = write(tmp_path, "data:\n  source: a.csv\n  label: y\n  splitt: {}\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    message = str(error.value)
    assert str(path) in message
    assert "data.splitt: unknown key" in message
    assert "split" in message and "label" in message  # the allowed keys are listed


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    path = write(tmp_path, "data:\n  source: a.csv\n  label: y\n  split:\n    train: lots\n")
    with pytest.raises(ConfigError, match=r"data\.split\.train: .*number.*'lots'"):
        config.load(path)


def test_value_outside_the_allowed_set_lists_them(tmp_path):
    path = write(tmp_path, "data:\n  source: a.csv\n  label: y\n  format: excel\n")
    with pytest.raises(ConfigError, match=r"data\.format: .*'auto', 'csv' or 'parquet'"):
        config.load(path)


def test_split_ratios_must_sum_to_one():
    with pytest.raises(ConfigError, match=r"data\.split: .*must be 1, got 1\.1"):
        config.from_dict({"data": {"source": "a.csv", "label": "y", "split": {"train": 0.9, "eval": 0.2}}})


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"data\.label: required key is missing"):
        config.from_dict({"data": {"source": "a.csv"}})


def test_label_cannot_be_a_feature():
    with pytest.raises(ConfigError, match="cannot also be listed as a feature"):
        config.from_dict({"data": {"source": "a.csv", "label": "y", "features": {"include": ["y", "x"]}}})


def test_invalid_yaml_says_where(tmp_path):
    path = write(tmp_path, "data:\n  source: [a.csv\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        config.load(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")


def test_overrides_win_over_the_file_and_urls_stay_as_they_are(tmp_path):
    path = write(tmp_path, "name: demo\ndata:\n  source: gs://bucket/table/*.parquet\n  label: y\n")
    loaded = config.load(path, {"data": {"label": "z"}, "beam": {"runner": "DataflowRunner"}})
    assert loaded.data.source == "gs://bucket/table/*.parquet"
    assert loaded.data.label == "z"
    assert loaded.beam.runner == "DataflowRunner"


def test_beam_options_become_pipeline_arguments():
    loaded = config.from_dict({"data": {"source": "a.csv", "label": "y"},
                               "beam": {"runner": "FlinkRunner",
                                        "options": {"flink_master": "host:8081", "parallelism": 4,
                                                    "save_main_session": True, "experiments": ["a", "b"]}}})
    assert loaded.beam.pipeline_args() == ["--runner=FlinkRunner", "--flink_master=host:8081", "--parallelism=4",
                                           "--save_main_session", "--experiments=a", "--experiments=b"]
