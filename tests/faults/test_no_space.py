"""No space left on device during ingest, tune and push, on a real small disk: a tmpfs where the
run writes (`support.in_tmpfs`), the tracking store elsewhere. Each time `tunepipe run` ends with one
line naming the step and the full disk, exit code 1 and no traceback on the terminal, and nothing
partial is left: the failed step's output artifacts are removed (the rule of
`pipeline.launcher.outputs_removed_on_failure`), the serving directory holds no half-pushed version
and the registry knows of none, and what was written before (the artifacts, the tuner's state) is
intact, so that the next run resumes from it.
"""
from __future__ import annotations

import csv
import random
import time
from pathlib import Path

import pytest

from tests.conftest import PENGUINS
from tests.faults.support import fill, files, in_tmpfs, start_run, wait_for_text, write_config, write_table

pytestmark = pytest.mark.faults

TRIALS = 5  # Hyperband over 2 epochs, factor 2 (tests/faults/support.py)


def write_incompressible_table(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` penguins, each measurement jittered: a table whose examples Parquet cannot shrink."""
    with open(PENGUINS, newline="") as handle:
        reader = csv.DictReader(handle)
        header, table = reader.fieldnames, list(reader)
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header)
        writer.writeheader()
        for _ in range(rows):
            row = dict(rng.choice(table))
            for column in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"):
                if row[column] not in ("", "NA"):
                    row[column] = f"{float(row[column]) * rng.uniform(0.95, 1.05):.6f}"
            writer.writerow(row)
    return path


def _run(config: Path, out: Path, terminal: Path, tracking_uri: str) -> int:
    run = start_run(config, out, terminal, env={"MLFLOW_TRACKING_URI": tracking_uri})
    return run.wait(timeout=600)


def _broken_artifacts(out: Path) -> list[str]:
    """The artifacts under `out` (directories with a manifest) whose files are not what it says."""
    from pipeline import launcher

    broken = []
    for manifest in out.rglob("_manifest.json"):
        try:
            launcher.artifact_digest(str(manifest.parent))
        except Exception as error:  # noqa: BLE001 - any way it fails is what the test reports
            broken.append(f"{manifest.parent}: {error}")
    return broken


def _outputs_of(out: Path, step: str) -> list[str]:
    """What is left of `step`'s task directories in the pipeline root (kfp.local's own
    executor_output.json aside)."""
    return [name for name in files(out) if name.split("/")[:3:2] == ["pipelines", step]
            and not name.endswith("executor_output.json")]


# --- what runs in the process that has the tmpfs -------------------------------------------------------

def ingest_on_a_full_disk(config: str, out: str, terminal: str, tracking_uri: str) -> dict:
    code = _run(Path(config), Path(out), Path(terminal), tracking_uri)
    return {"code": code, "ingest": _outputs_of(Path(out), "ingest"), "files": files(Path(out)),
            "broken": _broken_artifacts(Path(out))}


def tune_on_a_disk_that_fills(config: str, out: str, terminals: list[str], tracking_uri: str) -> dict:
    first, again = map(Path, terminals)
    run = start_run(Path(config), Path(out), first, env={"MLFLOW_TRACKING_URI": tracking_uri})
    # The disk fills once the search has a finished trial on it: the state it resumes from.
    wait_for_text(first, "tune: trial 1 of", run)
    filler = Path(out) / "filler"
    fill(filler)
    found = {"code": run.wait(timeout=600), "tune": _outputs_of(Path(out), "tune"),
             "partial": [name for name in files(Path(out)) if ".partial-" in name],
             "broken": _broken_artifacts(Path(out))}
    filler.unlink()
    found["again"] = _run(Path(config), Path(out), again, tracking_uri)
    found["broken"] += _broken_artifacts(Path(out))
    return found


def push_to_a_full_disk(config: str, out: str, terminal: str, tracking_uri: str, served: str) -> dict:
    code = _run(Path(config), Path(out), Path(terminal), tracking_uri)
    return {"code": code, "served": sorted(entry.name for entry in Path(served).iterdir())}


# --- the tests -------------------------------------------------------------------------------------------

def one_error_line(terminal: Path, step: str) -> str:
    """The run's terminal ends with its only error line, which names `step` and the full disk;
    no traceback anywhere."""
    text = terminal.read_text(errors="replace")
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and text.rstrip().endswith(errors[0]), text
    assert errors[0].startswith(f"tunepipe: error: step {step} failed: no space left on device"), text
    return errors[0]


def test_a_full_disk_during_ingest_is_one_line_and_leaves_no_partial_examples(tmp_path):
    began = time.monotonic()
    source = write_incompressible_table(tmp_path / "penguins.csv", rows=40_000)  # ~1.6 MB of examples
    config = write_config(tmp_path, source, tmp_path / "serving")
    terminal = tmp_path / "terminal.txt"
    found = in_tmpfs(tmp_path / "out", "1m", ingest_on_a_full_disk, config=str(config), out=str(tmp_path / "out"),
                     terminal=str(terminal), tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")

    assert found["code"] == 1, terminal.read_text()
    one_error_line(terminal, "ingest")
    assert found["ingest"] == [], found["ingest"]  # no examples, no metrics: not even a part
    assert not [name for name in found["files"] if ".partial-" in name], found["files"]
    assert found["broken"] == []
    print(f"ingest on a full disk: {time.monotonic() - began:.1f} s")


def test_a_disk_filling_during_tune_is_one_line_and_the_next_run_resumes_the_search(tmp_path):
    from mlflow import MlflowClient

    from pipeline import tags

    began = time.monotonic()
    config = write_config(tmp_path, write_table(tmp_path / "data" / "penguins.csv", seed=7), tmp_path / "serving")
    first, again = tmp_path / "terminal.txt", tmp_path / "terminal-again.txt"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # 24 MB: room for a whole run (the tuning report is most of it), none once the filler is written.
    found = in_tmpfs(tmp_path / "out", "24m", tune_on_a_disk_that_fills, config=str(config),
                     out=str(tmp_path / "out"), terminals=[str(first), str(again)], tracking_uri=tracking_uri)

    assert found["code"] == 1, first.read_text()
    one_error_line(first, "tune")
    assert found["tune"] == [] and found["partial"] == [], found
    assert found["again"] == 0, again.read_text()
    resumed = again.read_text()
    assert "↺ ingest reused from cache" in resumed and "↺ preprocess reused from cache" in resumed, resumed
    assert "tune: resuming the search" in resumed, resumed
    assert found["broken"] == []
    client = MlflowClient(tracking_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    trials = [run for run in client.search_runs(experiments, max_results=1000) if tags.TRIAL_ID in run.data.tags]
    recorded = sorted((run.data.tags[tags.SEARCH_ID], run.data.tags[tags.TRIAL_ID]) for run in trials)
    assert len({search for search, _ in recorded}) == 1 and len(recorded) == len(set(recorded)) == TRIALS, recorded
    print(f"tune on a disk that fills, then the run again: {time.monotonic() - began:.1f} s")


def test_a_full_serving_disk_pushes_nothing_and_registers_nothing(tmp_path):
    from mlflow import MlflowClient

    began = time.monotonic()
    serving = tmp_path / "serving"
    # No search: a model to push is all this needs.
    config = write_config(tmp_path, write_table(tmp_path / "data" / "penguins.csv", seed=8), serving,
                          tuner={"enabled": False})
    terminal = tmp_path / "terminal.txt"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # 64 kB: the push's lock file fits, the SavedModel (~130 kB) does not.
    found = in_tmpfs(serving, "64k", push_to_a_full_disk, config=str(config), out=str(tmp_path / "out"),
                     terminal=str(terminal), tracking_uri=tracking_uri, served=str(serving / "faults"))

    assert found["code"] == 1, terminal.read_text()
    line = one_error_line(terminal, "push")
    assert str(serving) in line, line
    assert found["served"] == [".push.lock"], found["served"]  # no version, no .N.partial-*
    assert _outputs_of(tmp_path / "out", "push") == []
    client = MlflowClient(tracking_uri)
    assert client.search_model_versions("name = 'faults'") == []
    assert all(not model.aliases for model in client.search_registered_models())
    print(f"push to a full disk: {time.monotonic() - began:.1f} s")
