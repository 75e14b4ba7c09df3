"""Every tabular problem through `tunepipe run`, end to end on kfp.local, in one output root:

1. the diabetes table (scikit-learn's, with odd column names and an empty column), a small budget
   and no problem type: auto-detected as a regression, tuned on val_loss, trained, evaluated with
   TFMA's regression metrics and pushed as version 1 of `diabetes`;
2. again with tuning off: evaluated against version 1 (the RMSE change threshold applies);
3. the penguins, with no config, in the same output root: named after their file, with their own
   experiment and model;
4. the penguins again with `model_name: diabetes`: a classifier is never compared with, nor pushed
   over, the regression in production; the run says so.
"""
from __future__ import annotations

import json

import mlflow
import pytest
import tensorflow as tf
import yaml
from mlflow import MlflowClient

from components import resolve_baseline
from components.serving import EXAMPLES_INPUT, PREDICTIONS, SERVING_SIGNATURE
from tests.conftest import EMPTY_COLUMN, PENGUINS, write_diabetes
from tests.test_e2e import output_path, parent_id, step_runs, table_row, tunepipe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


def config_file(path, **sections):
    path.write_text(yaml.safe_dump(sections))
    return path


def test_regression_and_classification_tables_share_an_output_root_without_colliding(tmp_path):
    data = write_diabetes(tmp_path / "diabetes.csv")
    serving = tmp_path / "tunepipe-out" / "serving"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'tunepipe-out' / 'mlflow.db'}")
    client = MlflowClient()

    # 1. The data decides the problem (and would name the pipeline: the config names it the same).
    small = config_file(tmp_path / "small.yaml", name="diabetes", data={"source": str(data), "label": "target"},
                        tuner={"max_epochs": 3}, training={"epochs": 60})
    first = tunepipe("run", "--config", str(small), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "regression (auto: more than 10 distinct values)" in table_row(first.stderr, "ingest")
    assert f"left out (empty): {EMPTY_COLUMN}" in table_row(first.stderr, "preprocess")
    assert "eval rmse " in table_row(first.stderr, "train")
    assert "version 1: blessed" in table_row(first.stderr, "push")
    runs = step_runs(client, parent_id(first.stderr))
    assert runs["ingest"].data.tags["tunepipe.problem_type"] == "regression"
    assert "best val_loss " in table_row(first.stderr, "tune")  # a regression's default objective
    assert {"eval_rmse", "eval_mae", "eval_mse", "eval_r2"} <= set(runs["evaluate"].data.metrics)
    assert resolve_baseline.serving_versions(serving, "diabetes") == [1]
    served = tf.saved_model.load(str(serving / "diabetes" / "1")).signatures[SERVING_SIGNATURE]
    empty = tf.train.Example().SerializeToString()  # every feature missing: the model still answers
    [prediction] = served(**{EXAMPLES_INPUT: tf.constant([empty])})[PREDICTIONS].numpy()
    assert 25 <= prediction <= 346  # the label's range on this table, in its own units

    # 2. The same table, untuned: compared with version 1 on RMSE.
    untuned = config_file(tmp_path / "untuned.yaml", name="diabetes", data={"source": str(data), "label": "target"},
                          tuner={"enabled": False}, training={"epochs": 60})
    second = tunepipe("run", "--config", str(untuned), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    blessing = json.loads((output_path(second.stderr, "evaluation") / "blessing.json").read_text())
    assert blessing["baseline"] == str(serving / "diabetes" / "1")
    assert ("change", "rmse") in {(t["kind"], t["metric"]) for t in blessing["thresholds"]}

    # 3. Another table in the same output root, no config: its own name, experiment and model.
    shutil_copy = tmp_path / "penguins.csv"
    shutil_copy.write_bytes(PENGUINS.read_bytes())
    penguins = tunepipe("run", "--data", str(shutil_copy), "--label", "species", cwd=tmp_path)
    assert penguins.returncode == 0, penguins.stderr
    assert "tunepipe: pipeline penguins:" in penguins.stderr
    assert "classification (auto: the label is text)" in table_row(penguins.stderr, "ingest")
    assert "version 1: blessed" in table_row(penguins.stderr, "push")
    assert resolve_baseline.serving_versions(serving, "penguins") == [1]
    assert client.get_experiment_by_name("penguins") and client.get_experiment_by_name("diabetes")

    # 4. A classifier aimed at the regression's model name is not compared with it, nor pushed.
    clash = config_file(tmp_path / "clash.yaml", name="penguins", model_name="diabetes",
                        data={"source": str(shutil_copy), "label": "species"}, tuner={"enabled": False},
                        training={"epochs": 5})
    clashed = tunepipe("run", "--config", str(clash), cwd=tmp_path)
    assert clashed.returncode == 0, clashed.stderr
    push_row = table_row(clashed.stderr, "push")
    assert "skipped" in push_row and "solves a regression" in clashed.stderr
    assert len(resolve_baseline.serving_versions(serving, "diabetes")) <= 2  # runs 1 and 2 only
    production = client.get_model_version_by_alias("diabetes", "production")
    assert production.source.startswith(str(serving / "diabetes"))
