"""SIGKILL of the whole `tunepipe run` at seeded random moments of every step, at the three
moments of a push and just after the tune step closed its run, then the next run; after each,
what a user relies on still holds:

- the next `tunepipe run` completes;
- no process of the killed run is left;
- every integer directory of the serving directory is a complete SavedModel that loads, and the
  registry's production alias names the newest one (what TF Serving serves);
- every trial of every search is recorded exactly once, and every search has all its trials;
- every artifact kfp.local's cache hands out has its manifest and matches it;
- no MLflow run is left RUNNING.

The schedule comes from TUNEPIPE_FAULT_SEED (default below) and is logged with what each kill hit,
in the file TUNEPIPE_FAULT_REPORT names (else in the test's directory). Each kill's run reads new
data (a new sample of the penguins), so that nothing before the kill comes from the cache.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from tests.faults.support import start_run, wait_for_session_to_end, write_config, write_table

pytestmark = [pytest.mark.faults, pytest.mark.timeout(2700)]  # 21 kills and 21 runs: ~17 min here

SEED = int(os.environ.get("TUNEPIPE_FAULT_SEED", "15"))
INJECT = Path(__file__).resolve().parent / "inject"
TRIALS = 5  # Hyperband over 2 epochs, factor 2 (tests/faults/support.py)
# How long each step takes here with the tiny budget (seconds): a kill lands uniformly within it.
WINDOWS = {"ingest": 3.5, "preprocess": 1.5, "tune": 14.0, "train": 3.5, "evaluate": 5.5}
# (moment, how many): a step's name kills at a random time within it; tune-between kills just after
# a trial finished; a moment with a dot is injected: the process that reaches it kills the run
# (tests/faults/inject/sitecustomize.py).
SCHEDULE = [("ingest", 3), ("preprocess", 1), ("tune", 4), ("tune-between", 3), ("train", 3), ("evaluate", 3),
            ("push.before-copy", 1), ("push.before-rename", 1), ("push.after-rename", 1),
            ("tune.after-its-run", 1)]
_RUNNING = re.compile(r"→ ([\w-]+) running")


@dataclass
class Kill:
    number: int
    moment: str  # what was aimed at
    delay_s: float  # after the moment's step started (or its trial ended)
    hit: str = ""  # the step(s) running when the kill landed, from the terminal
    trials_done: int = 0  # trials the killed run had finished
    resumed_s: float = 0.0  # the next run's wall time
    next_run: str = ""  # which steps the next run ran, which it reused


def schedule(seed: int) -> list[Kill]:
    rng = random.Random(seed)
    moments = [moment for moment, count in SCHEDULE for _ in range(count)]
    rng.shuffle(moments)
    kills = []
    for number, moment in enumerate(moments, 1):
        window = WINDOWS.get(moment.split("-")[0], 0.0) if "." not in moment else 0.0
        delay = rng.uniform(0, 0.5) if moment == "tune-between" else rng.uniform(0, window)
        kills.append(Kill(number, moment, round(delay, 2)))
    return kills


def running_steps(text: str) -> list[str]:
    """The steps started and not finished, in the terminal of a run."""
    running = []
    for line in text.splitlines():
        if match := _RUNNING.search(line):
            running.append(match.group(1))
        elif match := re.search(r"[✓✗] ([\w-]+) (ran|failed) in", line):
            if match.group(1) in running:
                running.remove(match.group(1))
    return running


def wait_then_kill(kill: Kill, run: subprocess.Popen, terminal: Path, ledger: Path) -> None:
    if "." in kill.moment:
        run.wait(timeout=300)  # the process that reaches the moment kills the run
        assert kill.moment in ledger.read_text(), f"kill {kill.number}: the run never reached {kill.moment}"
        kill.hit = kill.moment
        return
    step = "tune" if kill.moment == "tune-between" else kill.moment
    trial = f"tune: trial {random.Random(SEED + kill.number).randint(1, TRIALS - 1)} of"
    target = trial if kill.moment == "tune-between" else f"→ {step} running"
    deadline = time.monotonic() + 300
    while target not in (text := terminal.read_text(errors="replace")):
        assert run.poll() is None, f"kill {kill.number}: the run ended before {target!r}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"kill {kill.number}: {target!r} not seen:\n{text[-3000:]}"
        time.sleep(0.05)
    time.sleep(kill.delay_s)
    text = terminal.read_text(errors="replace")
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(timeout=60)
    kill.hit = "+".join(running_steps(text)) or "between steps"
    kill.trials_done = len(re.findall(r"tune: trial \d+ of", text))


def check_serving(serving: Path, client, loaded: set[str]) -> int:
    """Every version directory complete and loadable, the alias on the newest; how many versions."""
    import tensorflow as tf

    from pipeline import tags

    root = serving / "faults"
    versions = sorted(int(entry.name) for entry in root.iterdir() if entry.name.isdigit()) if root.is_dir() else []
    for version in versions:
        directory = root / str(version)
        assert (directory / "saved_model.pb").is_file() and (directory / "variables").is_dir(), directory
        assert (directory / "tunepipe_model_digest.txt").is_file(), directory
        if str(directory) not in loaded:
            tf.saved_model.load(str(directory))
            loaded.add(str(directory))
    if versions:
        alias = client.get_model_version_by_alias("faults", tags.PRODUCTION_ALIAS)
        newest = root / str(versions[-1])
        assert alias.tags.get(tags.VERSION_PATH, alias.source) == str(newest), (alias.source, versions)
        assert alias.tags[tags.VERSION_DIGEST] == (newest / "tunepipe_model_digest.txt").read_text().strip()
        sources = Counter(version.source for version in client.search_model_versions("name = 'faults'"))
        assert max(sources.values()) == 1, sources  # no served directory registered twice
    return len(versions)


def check_trials(client, experiment_ids: list[str]) -> None:
    """No trial recorded twice anywhere; the search the last run's model came from has all its
    trials, each finished, under the tune run that made its tuning output (a search resumed after a
    kill adopts the trials of its earlier attempts)."""
    from components.tune.observer import FINAL_STATUSES
    from pipeline import tags

    runs = client.search_runs(experiment_ids, max_results=5000)
    trials = [run for run in runs if tags.TRIAL_ID in run.data.tags]
    recorded = Counter((run.data.tags[tags.SEARCH_ID], run.data.tags[tags.TRIAL_ID]) for run in trials)
    assert max(recorded.values(), default=1) == 1, [key for key, count in recorded.items() if count > 1]

    pipelines = [run for run in runs if run.data.tags.get(tags.KIND) == tags.PIPELINE]
    last = max(pipelines, key=lambda run: run.info.start_time)
    tune = next(run for run in runs if run.data.tags.get(tags.PARENT_RUN) == last.info.run_id
                and run.data.tags.get(tags.STEP) == "tune")
    made_by = next(run for run in runs if run.data.tags.get(tags.STEP) == "tune"
                   and run.data.tags.get(tags.CACHED) == "false" and run.info.status == "FINISHED"
                   and run.data.tags.get(tags.output("tuning", "uri")) == tune.data.tags[tags.output("tuning", "uri")])
    searched = [run for run in trials if run.data.tags.get(tags.PARENT_RUN) == made_by.info.run_id]
    statuses = {run.data.tags[tags.TRIAL_ID]: run.data.tags.get(tags.TRIAL_STATUS) for run in searched}
    assert len(statuses) == TRIALS and set(statuses.values()) <= set(FINAL_STATUSES), statuses


def check_cache(cache: Path) -> None:
    from pipeline import launcher

    for entry in cache.glob("*.json"):
        for name, artifact in json.loads(entry.read_text()).items():
            if isinstance(artifact, dict) and artifact.get("metadata", {}).get("digest"):
                # Raises if the manifest is missing or the files are not what it says.
                assert launcher.artifact_digest(artifact["uri"]) == artifact["metadata"]["digest"], (entry, name)


def test_killing_the_run_anywhere_loses_nothing_and_the_next_run_completes(tmp_path):
    from mlflow import MlflowClient

    report = Path(os.environ.get("TUNEPIPE_FAULT_REPORT", tmp_path / "kills.json"))
    out, serving, ledger = tmp_path / "out", tmp_path / "serving", tmp_path / "ledger.txt"
    ledger.touch()
    source = tmp_path / "data" / "penguins.csv"
    config = write_config(tmp_path, source, serving)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")])),
           "TUNEPIPE_KILL_LEDGER": str(ledger)}
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    kills, loaded, versions = schedule(SEED), set(), 0
    try:
        for kill in kills:
            write_table(source, seed=SEED * 1000 + kill.number)
            terminal = tmp_path / f"kill-{kill.number:02d}.txt"
            at = {"TUNEPIPE_KILL_AT": kill.moment} if "." in kill.moment else {}
            run = start_run(config, out, terminal, env={**env, **at})
            wait_then_kill(kill, run, terminal, ledger)
            assert wait_for_session_to_end(run.pid) == [], f"kill {kill.number}: processes left behind"

            began = time.monotonic()
            after = subprocess.run([sys.executable, "-m", "pipeline", "run", "--config", str(config),
                                    "--output-root", str(out)], capture_output=True, text=True, timeout=600,
                                   env={**os.environ, "COLUMNS": "200"})
            kill.resumed_s = round(time.monotonic() - began, 1)
            assert after.returncode == 0, f"kill {kill.number} ({kill.moment}): the next run failed:\n{after.stderr}"
            reused = [step for step in WINDOWS if f"↺ {step} reused" in after.stderr]
            kill.next_run = f"reused {', '.join(reused)}" if reused else "ran every step"

            versions = check_serving(serving, client, loaded)
            experiments = [experiment.experiment_id for experiment in client.search_experiments()]
            check_trials(client, experiments)
            check_cache(out / "cache")
            left_running = client.search_runs(experiments, "attributes.status = 'RUNNING'")
            assert left_running == [], [run.info.run_name for run in left_running]
    finally:
        report.write_text(json.dumps({"seed": SEED, "versions": versions, "kills": [asdict(kill) for kill in kills]},
                                     indent=2) + "\n")
    assert len(kills) >= 20 and versions == len(kills)  # every run's new model was pushed once
