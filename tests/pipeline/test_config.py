"""Config loading and validation: what a user sees when the YAML is wrong."""
from pathlib import Path

import pytest

from pipeline import config, kubeflow_config
from components.errors import ConfigError


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


def with_volumes(volumes: dict, **top_level) -> dict:
    return {"data": {"source": "a.csv", "label": "y"}, "kubeflow": {"volumes": volumes}, **top_level}


SERVING = {"pvc": "tunepipe-serving", "mount_path": "/models"}
WORK = {"pvc": "tunepipe-work", "mount_path": "/tunepipe"}


def test_volumes_default_to_none():
    volumes = config.from_dict({"data": {"source": "a.csv", "label": "y"}}).kubeflow.volumes
    assert (volumes.serving, volumes.work) == (None, None)


def test_volumes_with_the_paths_on_them_load():
    loaded = config.from_dict(with_volumes({"serving": {**SERVING, "mount_path": "/models/"}, "work": WORK},
                                           serving_dir="/models/penguins-serving", output_root="/tunepipe"))
    assert loaded.kubeflow.volumes.serving == kubeflow_config.VolumeMount(pvc="tunepipe-serving", mount_path="/models")
    assert loaded.kubeflow.volumes.work.mount_path == "/tunepipe"


def test_paths_on_object_storage_need_no_volume():
    config.from_dict(with_volumes({"serving": SERVING, "work": WORK},
                                  serving_dir="gs://bucket/serving", output_root="gs://bucket/tunepipe"))


@pytest.mark.parametrize("volume, message", [
    ({"pvc": "", "mount_path": "/models"}, r"kubeflow\.volumes\.serving\.pvc: must be the name of a PersistentVolumeClaim"),
    ({"pvc": "Models_PVC", "mount_path": "/models"}, r"kubeflow\.volumes\.serving\.pvc: .*lowercase.*'Models_PVC'"),
    ({"pvc": "models", "mount_path": "models"}, r"kubeflow\.volumes\.serving\.mount_path: must be an absolute path"),
    ({"pvc": "models", "mount_path": "/"}, r"kubeflow\.volumes\.serving\.mount_path: cannot be / or inside /app"),
    ({"pvc": "models", "mount_path": "/app/models"}, r"mount_path: cannot be / or inside /app.*'/app/models'"),
    ({"pvc": "models", "mount_path": "/minio"}, r"mount_path: cannot be / or inside"),
    ({"pvc": "models"}, r"kubeflow\.volumes\.serving\.mount_path: required key is missing"),
    ({"pvc": "models", "mountPath": "/models"},
     r"kubeflow\.volumes\.serving: unknown key 'mountPath' \(did you mean 'mount_path'\? allowed: mount_path, pvc\)"),
])
def test_a_bad_volume_names_the_key(volume, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict(with_volumes({"serving": volume}, serving_dir="/models"))


def test_an_unknown_volume_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"kubeflow\.volumes\.models: unknown key .*allowed: serving, work"):
        config.from_dict(with_volumes({"models": SERVING}))


def test_a_serving_dir_off_the_serving_volume_names_both_keys(tmp_path):
    path = write(tmp_path, "data: {source: a.csv, label: y}\nserving_dir: /srv/models\n"
                           "kubeflow:\n  volumes:\n    serving: {pvc: tunepipe-serving, mount_path: /models}\n")
    with pytest.raises(ConfigError) as error:
        config.load(path)
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert "serving_dir /srv/models is not under kubeflow.volumes.serving.mount_path /models" in message
    # A sibling folder that merely starts with the same letters is not on the volume.
    with pytest.raises(ConfigError, match="serving_dir /models-old is not under"):
        config.from_dict(with_volumes({"serving": SERVING}, serving_dir="/models-old"))


def test_an_unset_serving_dir_defaults_off_the_serving_volume(tmp_path):
    import os
    import re

    # <output_root>/serving, made absolute as the pipeline's parameter is, is not under /models.
    with pytest.raises(ConfigError, match=r"serving_dir is not set, so the serving directory is <output_root>/serving, "
                                          rf"{re.escape(os.path.realpath(tmp_path))}/out/serving, which is not under "
                                          r"kubeflow\.volumes\.serving"):
        config.from_dict(with_volumes({"serving": SERVING}, output_root=str(tmp_path / "out")))


def test_an_output_root_off_the_work_volume_names_both_keys():
    with pytest.raises(ConfigError, match=r"output_root /data/tunepipe puts tune's work_root \(<output_root>/work\) "
                                          r"outside kubeflow\.volumes\.work\.mount_path /tunepipe"):
        config.from_dict(with_volumes({"work": WORK}, output_root="/data/tunepipe"))
    # Without a work volume, the output root may be anywhere.
    config.from_dict(with_volumes({"serving": SERVING}, serving_dir="/models", output_root="/data/tunepipe"))


@pytest.mark.parametrize("source, name", [
    ("cars.csv", "cars"),
    ("/data/Miles Per Gallon.CSV", "miles-per-gallon"),
    ("data/spans/{SPAN}/*.csv", "spans"),
    ("gs://bucket/events/{YYYY}-{MM}-{DD}/*.parquet", "events"),
    ("*.csv", "tunepipe"),
])
def test_without_a_name_the_pipeline_is_named_after_its_data(source, name):
    loaded = config.from_dict({"data": {"source": source, "label": "y"}})
    assert loaded.name == loaded.resolved_model_name == name
    assert config.from_dict({"name": "mine", "data": {"source": source, "label": "y"}}).name == "mine"


@pytest.mark.parametrize("section, message", [
    ({"tuner": {"objective": "val_f1"}}, "tuner.objective: unknown metric (models log: val_loss, val_accuracy"),
    ({"training": {"monitor": "val_f1"}}, "training.monitor: unknown metric"),
    ({"data": {"source": "x.csv", "label": "y", "problem_type": "regression", "positive_class": "a"}},
     "data: positive_class is for classification; problem_type is regression"),
    ({"data": {"source": "x.csv", "label": "y", "problem_type": "ordinal"}}, "data.problem_type: "),
    ({"evaluation": {"value_thresholds": {"rsme": {"upper": 3}}}}, "did you mean 'rmse'?"),
])
def test_problem_settings_are_checked_when_loaded(section, message):
    with pytest.raises(ConfigError) as raised:
        config.from_dict({"data": {"source": "x.csv", "label": "y"}, **section})
    assert message in str(raised.value)
