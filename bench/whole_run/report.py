"""The Markdown of bench/whole_run: what ran and on which machine, the whole-run times and their ratio,
the per-step breakdown of the tunepipe run beside the baseline's in-process steps, the unchanged
rerun, and the facts showing both did the same work; each goal of issue #14 printed beside its number.
`write` keeps the hand-written notes below the marker line of an existing RESULTS.md.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.whole_run.baseline import STEPS

MARKER = "<!-- notes: everything below this line is kept when run.py rewrites the file -->"
RATIO_GOAL = 1.5  # tunepipe / baseline
LIGHT_STEP_GOAL_S = 3.0  # each of LIGHT_STEPS
LIGHT_STEPS = ("resolve-source", "resolve-baseline", "push")
RERUN_GOAL_S = 10.0
PACKAGES = ("tensorflow", "keras", "keras-tuner", "apache-beam", "tensorflow-model-analysis", "kfp", "mlflow")


def _median(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _s(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _goal(value: float | None, limit: float, unit: str = " s") -> str:
    if value is None:
        return f"≤ {limit:g}{unit}: -"
    return f"≤ {limit:g}{unit}: {'met' if value <= limit else 'not met'}"


def _range(values: Sequence[float], digits: int = 1) -> str:
    return f"{min(values):.{digits}f}–{max(values):.{digits}f}"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory = next((int(line.split()[1]) / 1024 ** 2 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), float("nan"))
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    return (f"{nproc} CPUs (`nproc`), {memory:.1f} GiB RAM, CPU `{cpu}`; {platform.platform()}; "
            f"Python {platform.python_version()}, {', '.join(installed(name) for name in PACKAGES)}")


def commit(root: Path) -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return (head or "unknown") + (", with uncommitted work in the tree" if dirty.strip() else "")


def _whole_run(pairs: list[dict]) -> list[str]:
    lines = ["## The whole run", "",
             "| pair | tunepipe s | baseline s | tunepipe / baseline | rerun s |", "|---:|---:|---:|---:|---:|"]
    ratios = []
    for number, pair in enumerate(pairs, 1):
        ratio = pair["tunepipe"]["seconds"] / pair["baseline"]["seconds"]
        ratios.append(ratio)
        lines.append(f"| {number} | {pair['tunepipe']['seconds']:.1f} | {pair['baseline']['seconds']:.1f} | "
                     f"{ratio:.2f} | {pair['rerun']['seconds']:.1f} |")
    tunepipe = [pair["tunepipe"]["seconds"] for pair in pairs]
    base = [pair["baseline"]["seconds"] for pair in pairs]
    reruns = [pair["rerun"]["seconds"] for pair in pairs]
    ratio = statistics.median(ratios)
    lines += [f"| median | {statistics.median(tunepipe):.1f} | {statistics.median(base):.1f} | {ratio:.2f} | "
              f"{statistics.median(reruns):.1f} |", "",
              f"- **tunepipe / baseline**: {ratio:.2f}, the median of the per-pair ratios (range "
              f"{_range(ratios, 2)}). Goal {_goal(ratio, RATIO_GOAL, '')}.",
              f"- **Unchanged rerun**: median {statistics.median(reruns):.1f} s (range {_range(reruns)}). "
              f"Goal {_goal(statistics.median(reruns), RERUN_GOAL_S)}.",
              f"- Overhead per run: tunepipe − baseline = "
              f"{statistics.median(t - b for t, b in zip(tunepipe, base)):.1f} s (median over the pairs).", ""]
    return lines


def _steps(pairs: list[dict]) -> list[str]:
    reports = [pair["tunepipe"]["report"] for pair in pairs]
    phases = [pair["baseline"]["result"]["phases"] for pair in pairs]
    names = list(dict.fromkeys([*(name for report in reports for name in report.steps), *STEPS]))
    lines = ["## Per step: the tunepipe run beside the baseline", "",
             "Medians over the pairs. *wall* is what `tunepipe run` printed for the step (kfp.local's task, "
             "from its start to its end); *start-up* and *work* are the step's own `tunepipe: timing:` line in "
             "the run's log (start-up: from the start of the task's process to `pipeline.launcher.run_step`; "
             "work: from there to the step's end, its tracking included); *rest* = wall − start-up − work "
             "(kfp.local around the task's process). *baseline* is the same component's call inside the "
             "one-script baseline.", "",
             "| step | wall s | start-up s | work s | rest s | baseline s | goal |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for name in names:
        steps = [report.steps.get(name) for report in reports]
        wall = _median([step.seconds if step else None for step in steps])
        startup = _median([step.startup if step else None for step in steps])
        work = _median([step.work if step else None for step in steps])
        rest = _median([step.seconds - step.startup - step.work
                        if step and None not in (step.seconds, step.startup, step.work) else None for step in steps])
        in_process = _median([phase.get(name) for phase in phases])
        goal = _goal(wall, LIGHT_STEP_GOAL_S) if name in LIGHT_STEPS else ""
        lines.append(f"| {name} | {_s(wall)} | {_s(startup, 2)} | {_s(work)} | {_s(rest)} | {_s(in_process)} | "
                     f"{goal} |")
    outside = _median([pair["tunepipe"]["seconds"] - sum(step.seconds or 0.0 for step in pair["tunepipe"]["report"]
                                                         .steps.values()) for pair in pairs])
    base_outside = _median([pair["baseline"]["seconds"] - sum(pair["baseline"]["result"]["phases"].values())
                            for pair in pairs])
    lines += [f"| start-up + imports (the baseline's one process) | - | - | - | - | "
              f"{_s(_median([phase['start-up'] + phase['imports'] for phase in phases]))} | |",
              f"| outside the steps (tunepipe: the CLI, kfp.local's set-up, the MLflow pipeline run, the summary; "
              f"baseline: exit) | {_s(outside)} | | | | {_s(base_outside)} | |",
              f"| **whole run** (the driver's wall time) | {_s(_median([p['tunepipe']['seconds'] for p in pairs]))} | "
              f"| | | {_s(_median([p['baseline']['seconds'] for p in pairs]))} | |", ""]
    missing = [number for number, pair in enumerate(pairs, 1) if not pair["tunepipe"]["timed_steps"]]
    if missing:
        lines += [f"The log of the tunepipe run of pair(s) {', '.join(map(str, missing))} held no "
                  f"`tunepipe: timing:` lines, so start-up and work are \"-\" there.", ""]
    return lines


def _rerun(pairs: list[dict]) -> list[str]:
    reruns = [pair["rerun"] for pair in pairs]
    names = list(dict.fromkeys(name for rerun in reruns for name in rerun["report"].steps))
    header = " | ".join(f"rerun {number}" for number in range(1, len(reruns) + 1))
    lines = ["## The unchanged rerun", "",
             "`tunepipe run` again on the same output root right after each tunepipe run. What each step did "
             "(ran: its wall time as printed), and push's result:", "",
             f"| step | {header} |", "|---|" + "---|" * len(reruns)]
    for name in names:
        cells = []
        for rerun in reruns:
            step = rerun["report"].steps.get(name)
            if step is None:
                cells.append("-")
                continue
            cell = f"{step.state} {step.seconds:.1f} s" if step.state == "ran" and step.seconds is not None \
                else step.state
            if name == "push" and step.result:
                cell += f" ({step.result})"
            cells.append(cell)
        lines.append(f"| {name} | {' | '.join(cells)} |")
    walls = " | ".join(f"{rerun['seconds']:.1f} s" for rerun in reruns)
    lines += [f"| **whole rerun** (the driver's wall time) | {walls} |", ""]
    changed = [number for number, rerun in enumerate(reruns, 1) if rerun["code_changed"]]
    if changed:
        lines += [f"**The code in the tree changed between the run and the rerun of pair(s) "
                  f"{', '.join(map(str, changed))}** (other work in the same checkout): the code version keys "
                  f"kfp's cache, so those reruns ran steps again and do not measure an unchanged rerun.", ""]
    return lines


def _facts(pairs: list[dict]) -> list[str]:
    lines = ["## The same work: what each run produced, read back from its artifacts", "",
             "| run | rows read / rejected | train / eval rows | trials (completed) | TFMA examples | accuracy | "
             "macro AUC | blessed | served versions | version 1 loads | served accuracy on the held-out split |",
             "|---|---|---|---|---:|---:|---:|---|---|---|---:|"]
    checks = []
    for number, pair in enumerate(pairs, 1):
        for side in ("tunepipe", "baseline"):
            found = pair[side].get("facts")
            if not found:
                lines.append(f"| pair {number} {side} | not checked | | | | | | | | | |")
                continue
            served = found["served"]
            loads = (f"yes ({', '.join(served['signatures'])})" if served.get("loads")
                     else f"NO: {served.get('error', '')}")
            splits = " / ".join(str(found["splits"].get(split, "-")) for split in ("train", "eval"))
            lines.append(f"| pair {number} {side} | {found['rows_read']} / {found['rejected']} | {splits} | "
                         f"{found['trials']} ({found['completed_trials']}) | {found['tfma_example_count']} | "
                         f"{_s(found['accuracy'], 4)} | {_s(found['macro_auc'], 4)} | "
                         f"{'yes' if found['blessed'] else 'no'} | {found['versions']} | {loads} | "
                         f"{_s(served.get('served_accuracy'), 4)} |")
        ours, theirs = pair["tunepipe"].get("facts"), pair["baseline"].get("facts")
        if ours and theirs:
            checks.append((ours["splits"] == theirs["splits"], ours["trials"] == theirs["trials"],
                           ours["tfma_example_count"] == theirs["tfma_example_count"],
                           bool(theirs["served"].get("loads")) and theirs["versions"] == [1],
                           ours["best_hyperparameters"] == theirs["best_hyperparameters"]))
    imported = [pair["baseline"]["result"]["facts"].get("imported", {}) for pair in pairs]
    yes_no = {True: "yes", False: "NO"}
    lines.append("")
    if checks:
        lines += [f"- Same split sizes as tunepipe's ingest: {yes_no[all(check[0] for check in checks)]}; "
                  f"same number of trials: {yes_no[all(check[1] for check in checks)]}; "
                  f"TFMA over the same number of examples: {yes_no[all(check[2] for check in checks)]}; "
                  f"the baseline served version 1 and it loads: {yes_no[all(check[3] for check in checks)]}; "
                  f"the same best hyperparameters: {yes_no[all(check[4] for check in checks)]}."]
    lines += [f"- The baseline's process imported kfp: {yes_no[any(i.get('kfp') for i in imported)].lower()}, "
              f"MLflow: {yes_no[any(i.get('mlflow') for i in imported)].lower()}.",
              "- Both sides take the config's seeds (the tuner's and training's), so the same search and scores "
              "are expected; threads can still make the last digits of a score differ, and with them Hyperband's "
              "choices.", ""]
    return lines


def render(pairs: list[dict], *, command: str, started: dt.datetime, config_file: Path, root: Path,
           load_before: Sequence[float], load_after: Sequence[float], what_ran: str, quick: bool) -> str:
    doc = what_ran.split("\n\n")
    bullets = "\n".join("- " + " ".join(item.split()).removeprefix("- ") for item in doc[2].split("\n- "))
    config = config_file.relative_to(root) if config_file.is_relative_to(root) else config_file
    lines = ["# Benchmark results: the whole run", "",
             "## `tunepipe run` against a one-script baseline doing the same work", "",
             *(["**A smoke run (`--quick`, one pair): it checks the bench works, it is not a measurement.**", ""]
               if quick else []),
             f"Generated by `{command}` on {started:%Y-%m-%d %H:%M} UTC (commit {commit(root)}), "
             f"config `{config}`.", "",
             "**What was run.** " + " ".join(doc[0].split()) + " " + " ".join(doc[1].split()), "",
             bullets, "", " ".join(doc[3].split()), "",
             f"**Machine.** {machine()}. Load average (1/5/15 min) before: "
             f"{' '.join(f'{x:.2f}' for x in load_before)}; after: {' '.join(f'{x:.2f}' for x in load_after)} "
             f"(a shared machine: compare numbers from the same run).", "",
             *_whole_run(pairs), *_steps(pairs), *_rerun(pairs), *_facts(pairs)]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    notes = ""
    if path.exists() and MARKER in path.read_text():
        notes = path.read_text().split(MARKER, 1)[1]
    path.write_text(text + "\n" + MARKER + (notes or "\n"))
