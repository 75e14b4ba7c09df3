"""Three simulated days of scheduled retraining on dated spans of the penguins, end to end:

- day 1: the first span; `tunepipe retrain` finds no search to reuse and no model in production, so
  it tunes, trains from scratch and pushes version 1;
- day 2: a second span of new rows; it reuses day 1's hyperparameters, warm-starts from version 1
  and pushes version 2;
- day 3: a third span where some rows were recorded in the wrong unit (x1000): the model trained on
  it is worse than version 2 on the day's held-out rows and is not pushed.

Then the lineage commands answer from the MLflow store: `lineage` of version 2 names day 2's span and
day 1's tuning run, `trials` of day 2 lists day 1's search, `runs` shows the three days.
"""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from components import resolve_baseline
from tests.conftest import PENGUINS
from tests.test_e2e import parent_id, step_runs, step_states, table_row, tunepipe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

DAYS = ("2026-11-21", "2026-11-22", "2026-11-23")
NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]


def spans_of_penguins() -> dict[str, pd.DataFrame]:
    """150 rows on day 1, 150 new rows on day 2, the last 44 on day 3 with 40 rows in the wrong unit."""
    rows = pd.read_csv(PENGUINS).sample(frac=1, random_state=7).reset_index(drop=True)
    wrong_unit = rows.iloc[:40].copy()
    wrong_unit[NUMERIC] = wrong_unit[NUMERIC] * 1000
    return {DAYS[0]: rows.iloc[:150], DAYS[1]: rows.iloc[150:300],
            DAYS[2]: pd.concat([rows.iloc[300:], wrong_unit])}


def test_three_days_of_retraining_reuse_tuning_push_better_and_refuse_worse(tmp_path):
    spans = spans_of_penguins()
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "name": "penguins", "model_name": "penguins",
        "data": {"source": "spans/{YYYY}-{MM}-{DD}/*.csv", "label": "species", "span_window": 3,
                 "features": {"exclude": ["year"]}},
        "tuner": {"max_epochs": 4},
        # One eval row is ~1.5% of accuracy here: allow a little noise, not a real regression.
        "evaluation": {"change_thresholds": {"accuracy": {"absolute": -0.05}}},
    }))
    serving = tmp_path / "tunepipe-out" / "serving"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'tunepipe-out' / 'mlflow.db'}")
    client = MlflowClient()
    days = []
    for day in DAYS:
        folder = tmp_path / "spans" / day
        folder.mkdir(parents=True)
        spans[day].to_csv(folder / "part-0.csv", index=False)
        result = tunepipe("retrain", "--config", str(config), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        days.append((result, step_runs(client, parent_id(result.stderr))))
    (day1, runs1), (day2, runs2), (day3, runs3) = days

    # Day 1: nothing to reuse, nothing to warm-start from: a search, and version 1.
    assert runs1["resolve-source"].data.tags["tunepipe.spans"] == DAYS[0]
    assert runs1["tune"].data.tags["tunepipe.tuning"] == "searched"
    assert runs1["tune"].data.metrics["trials"] >= 2
    assert runs1["train"].data.params["warm_start"] == ""
    assert "version 1: blessed" in table_row(day1.stderr, "push")

    # Day 2: both spans, day 1's hyperparameters, warm-started from version 1, pushed as version 2.
    assert runs2["resolve-source"].data.tags["tunepipe.spans"] == ",".join(DAYS[:2])
    assert step_states(day2.stderr)["ingest"] == "ran"
    assert "300 rows read" in table_row(day2.stderr, "ingest")
    assert runs2["tune"].data.tags["tunepipe.tuning"] == "reused"
    assert runs2["tune"].data.tags["tunepipe.tuning.reused_from"] == runs1["tune"].info.run_id
    assert "reused the best hyperparameters" in table_row(day2.stderr, "tune")
    assert runs2["train"].data.params["warm_start"] == str(serving / "penguins" / "1")
    assert runs2["train"].data.tags["tunepipe.warm_start"].startswith("warm-started from")
    assert "version 2: blessed" in table_row(day2.stderr, "push")

    # Day 3: the wrong-unit rows make a worse model than version 2: not pushed, production untouched.
    assert runs3["resolve-source"].data.tags["tunepipe.spans"] == ",".join(DAYS)
    assert runs3["tune"].data.tags["tunepipe.tuning.reused_from"] == runs1["tune"].info.run_id
    assert runs3["evaluate"].data.tags["tunepipe.blessed"] == "false"
    assert "not blessed: accuracy" in table_row(day3.stderr, "push")
    assert resolve_baseline.serving_versions(serving, "penguins") == [1, 2]
    assert str(client.get_model_version_by_alias("penguins", "production").version) == "2"

    # The lineage of version 2: day 2's spans as the source, day 1's search as the hyperparameters.
    traced = tunepipe("lineage", "penguins:2", "--config", str(config), "--format", "json", cwd=tmp_path)
    assert traced.returncode == 0, traced.stderr
    graph = json.loads(traced.stdout)
    nodes = {node["id"]: node for node in graph["nodes"]}
    assert graph["pipeline_run_id"] == parent_id(day2.stderr)
    # The data version 2 was trained on, and the data of day 1 that its hyperparameters were searched on.
    sources = {node["facts"]["spans"]: node for node in nodes.values() if node["kind"] == "source"}
    assert set(sources) == {", ".join(DAYS[:2]), DAYS[0]}
    assert sources[", ".join(DAYS[:2])]["facts"]["rows_read"] == "300"
    assert sources[DAYS[0]]["facts"]["rows_read"] == "150"
    read = {(edge["source"], nodes[edge["target"]]["run_id"]) for edge in graph["edges"] if edge["label"] == "read"}
    assert read == {(sources[", ".join(DAYS[:2])]["id"], runs2["ingest"].info.run_id),
                    (sources[DAYS[0]]["id"], runs1["ingest"].info.run_id)}
    tune_steps = {node["run_id"] for node in nodes.values() if node["kind"] == "step" and node["label"] == "tune"}
    assert tune_steps == {runs2["tune"].info.run_id, runs1["tune"].info.run_id}
    (best_trial,) = [node for node in nodes.values() if node["kind"] == "trial"]
    searched = f"step:{runs1['tune'].info.run_id}"
    assert {"source": searched, "target": best_trial["id"]} in [
        {"source": edge["source"], "target": edge["target"]} for edge in graph["edges"]]
    # Version 2 is the target; version 1, in production that day, is what evaluate compared with
    # and what train warm-started from.
    versions = {node["label"]: node for node in nodes.values() if node["kind"] == "model"}
    assert set(versions) == {"penguins v1", "penguins v2"} and versions["penguins v2"]["target"]
    served = {nodes[edge["target"]]["label"] for edge in graph["edges"] if edge["source"] == versions["penguins v1"]["id"]}
    assert served == {"baseline", "warm_start"}

    mermaid = tunepipe("lineage", "penguins:2", "--config", str(config), "--format", "mermaid", cwd=tmp_path)
    assert mermaid.returncode == 0 and mermaid.stdout.startswith("flowchart LR")

    # Day 2's trials are day 1's search; `runs` shows the three days, newest first.
    trials = tunepipe("trials", parent_id(day2.stderr), "--config", str(config), cwd=tmp_path)
    assert trials.returncode == 0, trials.stderr
    assert f"trials of tune run {runs1['tune'].info.run_id}" in trials.stdout
    listed = tunepipe("runs", "--config", str(config), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if DAYS[0] in line]
    assert len(rows) == 3
    assert "no: not blessed" in rows[0]
    assert "v2 (blessed)" in rows[1] and "(reused)" in rows[1]
    assert "v1 (blessed)" in rows[2] and "(reused)" not in rows[2]
