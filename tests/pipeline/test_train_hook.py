"""The train step as a pipeline task runs it (the generic launcher and the train hook): what its
MLflow run records, once each, and what its output artifact's metadata says."""
from __future__ import annotations

from pathlib import PurePosixPath

import mlflow
import pytest

from components.train.config import TrainingConfig
from components.train.warm_start import KERAS_MODEL
from components.tune import step as tune
from components.tune.config import TunerConfig
from pipeline import launcher, tags
from tests.conftest import TaskArtifact

TRAINING = TrainingConfig(epochs=6, early_stopping_patience=3)


def test_the_train_task_records_params_metrics_epochs_and_the_model_once(penguin_inputs, step_tracking, tmp_path):
    tuning = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning",
                      TunerConfig(enabled=False))
    model = TaskArtifact(str(tmp_path / "model"))
    launcher.run_step("train", examples=TaskArtifact(str(penguin_inputs.examples)),
                      transform=TaskArtifact(str(penguin_inputs.transform)), tuning=TaskArtifact(tuning.path),
                      options=TRAINING.model_dump(mode="json"), tuner=TunerConfig().model_dump(mode="json",
                                                                                               exclude_none=True),
                      warm_start="", hypermodel_source="", code_version="test", model=model)

    client = mlflow.MlflowClient()
    [run] = client.search_runs([step_tracking], f"tags.`{tags.STEP}` = 'train'")
    logged = run.data
    assert logged.params["mlp.units_0"] == str(tuning.best_hyperparameters["mlp.units_0"])
    assert logged.params["training.epochs"] == str(TRAINING.epochs)
    assert "code_version" not in logged.params  # a cache key only
    epochs = int(logged.metrics["epochs_trained"])
    # Each metric once per epoch: the final eval metrics once, not twice.
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == epochs
    assert len(client.get_metric_history(run.info.run_id, "eval_accuracy")) == 1
    assert logged.metrics["eval_accuracy"] == pytest.approx(model.metadata["eval_accuracy"])
    assert logged.tags[tags.output("model", "digest")] == model.metadata["digest"]
    assert logged.tags[tags.input("tuning", "digest")] == tuning.digest
    assert model.metadata["training_run_id"] == run.info.run_id
    assert KERAS_MODEL in {PurePosixPath(item.path).name for item in client.list_artifacts(run.info.run_id, "model")}
