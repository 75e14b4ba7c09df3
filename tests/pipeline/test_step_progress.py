"""The progress lines a person watches while tune and train run (`pipeline.step_progress`): one per
finished trial, for a serial search and for each worker of a parallel one, with or without tracking,
and one per training epoch. Read off the task's stdout as `tunepipe run` reads them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from components import artifacts
from components.train.config import TrainingConfig
from components.tune import step as tune, trials
from components.tune.config import TunerConfig
from components.tune.observer import COMPLETED, FAILED, SearchPlan, TrialEnd, TrialObserver
from pipeline import launcher, progress, step_progress
from tests.conftest import TaskArtifact
from tests.tiny_search import HYPERBAND_TRIALS, tiny_config, trial_runs

TRIAL_LINE = re.compile(r"^(?P<step>tune(?:-worker \d+ of \d+)?): trial (?P<n>\d+) of (?P<total>\d+)"
                        r"(?: \(bracket (?P<bracket>\d+), round (?P<round>\d+)\))?: "
                        r"val_accuracy (?P<score>[\d.]+), best (?P<best>[\d.]+) · (?P<elapsed>.+?) elapsed"
                        r"(?:, ~(?P<left>.+) left)?$")
EPOCH_LINE = re.compile(r"^train: epoch (?P<n>\d+) of (?P<total>\d+): val_loss (?P<value>[\d.]+), "
                        r"best (?P<best>[\d.]+) \(epoch (?P<best_epoch>\d+)\)"
                        r"(?:, (?P<waiting>\d+) of (?P<patience>\d+) epochs not 0.001 better)? · .+ elapsed$")


def shown(out: str) -> list[str]:
    """The progress lines of a task's stdout, as the terminal of `tunepipe run` shows them."""
    return [line.split(progress.MARKER, 1)[1] for line in out.splitlines() if progress.MARKER in line]


def trial_lines(lines: list[str]) -> list[re.Match]:
    found = [TRIAL_LINE.match(line) for line in lines if ": trial " in line]
    assert all(found), lines
    return found


def run_tune(inputs, tmp_path: Path, tuner: TunerConfig, step: str = "tune", **parameters) -> TaskArtifact:
    tuning = TaskArtifact(str(tmp_path / "tuning"))
    extra = {} if step != "tune" else {"report": TaskArtifact(str(tmp_path / "report.html"))}
    launcher.run_step(step, examples=TaskArtifact(str(inputs.examples)), transform=TaskArtifact(str(inputs.transform)),
                      options=tuner.model_dump(mode="json", exclude_none=True), work_root=str(tmp_path / "work"),
                      reuse_hyperparameters=False, code_version="test", tuning=tuning, hypermodel_source="",
                      **extra, **parameters)
    return tuning


def test_a_hyperband_search_shows_each_trial_n_of_n_with_its_bracket_best_and_time_left(
        penguin_inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # progress shows without tracking too
    tuning = run_tune(penguin_inputs, tmp_path, tiny_config())

    lines = shown(capsys.readouterr().out)
    assert lines[0] == f"tune: searching: {HYPERBAND_TRIALS} trials, val_accuracy (higher is better)"
    found = trial_lines(lines)
    assert [int(line["n"]) for line in found] == list(range(1, HYPERBAND_TRIALS + 1))
    assert {int(line["total"]) for line in found} == {HYPERBAND_TRIALS}
    assert all(line["bracket"] is not None and line["round"] is not None for line in found)
    # The lines' scores, brackets and rounds are the trials', in the order they ran.
    table = trials.read_table(Path(tuning.path, trials.TRIALS_TABLE))
    assert [(line["bracket"], line["round"], float(line["score"])) for line in found] == [
        (row["bracket"], row["round"], pytest.approx(float(row["score"]), abs=5e-5)) for row in table]
    best = [float(line["best"]) for line in found]
    assert best == [max(float(line["score"]) for line in found[:n + 1]) for n in range(len(found))]
    assert best == sorted(best)
    # Time left after every trial but the last.
    assert all(line["left"] for line in found[:-1]) and found[-1]["left"] is None


def test_each_worker_of_a_parallel_search_counts_its_own_trials_and_tracking_still_records(
        penguin_inputs, step_tracking, tmp_path, capsys):
    tuner = tiny_config(algorithm="random", max_trials=5, parallel_trials=2)
    tuning = run_tune(penguin_inputs, tmp_path, tuner, "tune-worker", worker=1, workers=2)

    found = trial_lines(shown(capsys.readouterr().out))
    assert [(line["step"], line["n"], line["total"]) for line in found] == [
        ("tune-worker 1 of 2", "1", "2"), ("tune-worker 1 of 2", "2", "2")]  # worker 1 has 2 of the 5 trials
    assert all(line["bracket"] is None for line in found)  # random search: no brackets
    # With the progress lines, MLflow still has every trial, and the trials table its run ids.
    runs = trial_runs(step_tracking)
    assert len(runs) == 2
    table = trials.read_table(Path(tuning.path, trials.TRIALS_TABLE))
    assert {row["tracking_id"] for row in table} == {run.info.run_id for run in runs}


def test_a_resumed_search_counts_the_trials_it_finished_before(penguin_inputs, tmp_path):
    from tests.tiny_search import KillAtTraining

    work_dir, ledger, lines = tmp_path / "work", tmp_path / "trainings.txt", []
    watch = step_progress.TrialProgress(report=lambda step, message: lines.append(f"{step}: {message}"))
    with pytest.raises(KeyboardInterrupt):
        tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tiny_config(), watch,
                 work_dir=work_dir, callbacks=[KillAtTraining(ledger, kill_at=3)])
    assert [line["n"] for line in trial_lines(lines)] == ["1", "2"]

    lines.clear()
    watch = step_progress.TrialProgress(report=lambda step, message: lines.append(f"{step}: {message}"))
    tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning", tiny_config(), watch,
             work_dir=work_dir, callbacks=[KillAtTraining(ledger)])
    assert re.match(rf"tune: resuming the search: 2 of {HYPERBAND_TRIALS} trials finished, best val_accuracy [\d.]+$",
                    lines[0])
    assert [int(line["n"]) for line in trial_lines(lines)] == list(range(3, HYPERBAND_TRIALS + 1))


def test_training_shows_each_epoch_with_the_monitored_metric_and_its_best(penguin_inputs, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    training = TrainingConfig(epochs=12, early_stopping_patience=3)
    tuning = tune.run(penguin_inputs.examples, penguin_inputs.transform, tmp_path / "tuning",
                      TunerConfig(enabled=False))
    model = TaskArtifact(str(tmp_path / "model"))
    launcher.run_step("train", examples=TaskArtifact(str(penguin_inputs.examples)),
                      transform=TaskArtifact(str(penguin_inputs.transform)), tuning=TaskArtifact(tuning.path),
                      options=training.model_dump(mode="json"),
                      tuner=TunerConfig().model_dump(mode="json", exclude_none=True), warm_start="",
                      hypermodel_source="", code_version="test", model=model)

    lines = [line for line in shown(capsys.readouterr().out) if line.startswith("train: epoch")]
    found = [EPOCH_LINE.match(line) for line in lines]
    assert all(found), lines
    manifest = artifacts.read_manifest(model.path, artifacts.MODEL)
    assert [int(line["n"]) for line in found] == list(range(1, manifest["epochs_trained"] + 1))
    assert {int(line["total"]) for line in found} == {training.epochs}
    best = [float(line["best"]) for line in found]
    assert best == sorted(best, reverse=True)  # a loss: the best only goes down
    # The best epoch the last line names is the one whose weights early stopping kept.
    assert int(found[-1]["best_epoch"]) == manifest["best_epoch"]
    if manifest["epochs_trained"] < training.epochs:  # stopped early: after `patience` epochs without improving
        assert (found[-1]["waiting"], found[-1]["patience"]) == ("3", "3")


def ended(trial_id: str, score: float | None, status: str = COMPLETED, bracket: int | None = None,
          error: str | None = None) -> TrialEnd:
    return TrialEnd(trial_id, status, score, {}, {"bracket": bracket, "round": 0 if bracket is not None else None},
                    3, 2, 1.0, error, None)


def collecting() -> tuple[list[str], step_progress.TrialProgress]:
    lines: list[str] = []
    return lines, step_progress.TrialProgress("tune", lambda step, message: lines.append(f"{step}: {message}"))


def test_a_failed_trial_says_why_and_a_loss_objective_keeps_the_lowest_as_best():
    lines, watch = collecting()
    watch.search_planned(SearchPlan(3, [], "val_loss", "min"))
    watch.trial_ended(ended("0000", 0.5))
    watch.trial_ended(ended("0001", None, FAILED, error="the training loss became nan in epoch 1: training diverged"))
    watch.trial_ended(ended("0002", 0.7))
    assert lines[0] == "tune: searching: 3 trials, val_loss (lower is better)"
    assert lines[1].startswith("tune: trial 1 of 3: val_loss 0.5000, best 0.5000 · ")
    assert lines[2].startswith("tune: trial 2 of 3: failed (the training loss became nan in epoch 1: training "
                               "diverged), best 0.5000 · ")
    assert lines[3].startswith("tune: trial 3 of 3: val_loss 0.7000, best 0.5000 · ") and "left" not in lines[3]


def test_more_trials_than_expected_are_not_shown_as_more_than_all_of_them():
    lines, watch = collecting()
    watch.search_planned(SearchPlan(1, [ended("0000", 0.9)], "val_accuracy", "max"))
    assert lines[0] == "tune: resuming the search: 1 of 1 trials finished, best val_accuracy 0.9000"
    watch.trial_ended(ended("0001", 0.95, bracket=0))
    assert lines[1].startswith("tune: trial 2 of 2 (bracket 0, round 0): val_accuracy 0.9500, best 0.9500 · ")


def test_the_epoch_line_counts_epochs_without_an_improvement_by_min_delta():
    lines: list[str] = []
    watch = step_progress.EpochProgress(10, "val_loss", 0.01, 3, lambda step, message: lines.append(message))
    for epoch, value in enumerate([0.5, 0.3, 0.295, 0.28]):
        watch(epoch, {"val_loss": value, "loss": 0.1})
    assert [line.split(" · ")[0] for line in lines] == [
        "epoch 1 of 10: val_loss 0.5000, best 0.5000 (epoch 1)",
        "epoch 2 of 10: val_loss 0.3000, best 0.3000 (epoch 2)",
        "epoch 3 of 10: val_loss 0.2950, best 0.3000 (epoch 2), 1 of 3 epochs not 0.01 better",
        "epoch 4 of 10: val_loss 0.2800, best 0.2800 (epoch 4)"]


class Recording(TrialObserver):
    """An observer that records what it hears and answers with `prefix`-ids (None: it records nothing)."""

    def __init__(self, prefix: str | None):
        self.prefix, self.heard = prefix, []

    def trial_began(self, trial):
        self.heard.append(("began", trial))
        return None if self.prefix is None else f"{self.prefix}-{trial}"

    def trial_ended(self, trial):
        self.heard.append(("ended", trial.trial_id))

    def reconcile(self, finished):
        return {} if self.prefix is None else {trial.trial_id: f"{self.prefix}-{trial.trial_id}" for trial in finished}


def test_the_composite_observer_tells_every_observer_and_keeps_the_first_id_given():
    progress_lines, tracked, other = Recording(None), Recording("run"), Recording("other")
    every = step_progress.Observers(None, progress_lines, tracked, other)
    assert every.trial_began("0000") == "run-0000"
    every.trial_ended(ended("0000", 0.5))
    assert progress_lines.heard == tracked.heard == other.heard == [("began", "0000"), ("ended", "0000")]
    assert every.reconcile([ended("0001", 0.5)]) == {"0001": "run-0001"}

    epochs: list = []
    each = step_progress.epochs_to(None, lambda epoch, logs: epochs.append(("first", epoch)),
                                   lambda epoch, logs: epochs.append(("second", epoch)))
    each(2, {"loss": 0.1})
    assert epochs == [("first", 2), ("second", 2)]


def test_evaluate_reports_the_rows_evaluated(capsys):
    from pipeline.step_progress import RowsProgress

    rows = RowsProgress()
    for count in (100_000, 250_000):
        rows(count)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tunepipe: progress: ")]
    assert [line.split(": ", 2)[2].split(" rows")[0] for line in lines] == ["evaluate: 100,000", "evaluate: 250,000"]
    assert all("rows/s" in line and "elapsed" in line for line in lines)
