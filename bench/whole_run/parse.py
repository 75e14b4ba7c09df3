"""Reading what a `tunepipe run` reported: its terminal output (each step's state and wall time as it
printed them, the summary table, the artifact paths) and the timing line each step writes to the
run's log file (`pipeline.progress.timing`: the step's start-up and work).

A log without timing lines (a tree from before they were added) gives no start-up/work split; the
report shows "-" for it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.progress import TIMING

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FINISHED = re.compile(r"^[✓✗] (?P<step>[\w-]+) (?P<state>ran|failed) in (?P<seconds>[\d.]+) s")
_CACHED = re.compile(r"^↺ (?P<step>[\w-]+) reused from cache")
_TOTAL = re.compile(r"tunepipe run: (?P<seconds>[\d.]+) s")
_OUTPUT = re.compile(r"^\s*(?P<name>examples|transform|tuning|model|evaluation|log): (?P<path>\S.*)$")
_TIMING = re.compile(re.escape(TIMING) + r"(?P<step>[\w-]+): start-up (?P<startup>[\d.]+) s, work (?P<work>[\d.]+) s")


@dataclass
class StepReport:
    state: str = ""  # ran, cached, failed, skipped (from the summary table, else the progress lines)
    seconds: float | None = None  # the wall time `tunepipe run` printed for it (a step that ran)
    result: str = ""  # its summary line
    startup: float | None = None  # from the log's timing line
    work: float | None = None


@dataclass
class RunReport:
    printed_seconds: float | None = None  # `tunepipe run: N s`
    steps: dict[str, StepReport] = field(default_factory=dict)  # in the order the summary lists them
    outputs: dict[str, str] = field(default_factory=dict)  # artifact name (and `log`) -> path


def terminal(stderr: str) -> RunReport:
    """What `tunepipe run` printed on its terminal (stderr)."""
    report = RunReport()
    last_row: StepReport | None = None
    for raw in stderr.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        if match := _FINISHED.match(line):
            step = report.steps.setdefault(match["step"], StepReport())
            step.state, step.seconds = match["state"], float(match["seconds"])
        elif match := _CACHED.match(line):
            report.steps.setdefault(match["step"], StepReport()).state = "cached"
        elif (match := _TOTAL.search(line)) and report.printed_seconds is None:
            report.printed_seconds = float(match["seconds"])
        elif line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            if len(cells) != 4:
                continue
            name, state, _, result = cells
            if name and name != "step":
                last_row = report.steps.setdefault(name, StepReport())
                last_row.state, last_row.result = state, result
            elif not name and last_row is not None:  # a row rich wrapped onto more lines
                last_row.result = f"{last_row.result} {result}".strip()
        elif match := _OUTPUT.match(line):
            report.outputs[match["name"]] = match["path"].strip()
    return report


def add_timings(report: RunReport, log_file: str | Path) -> int:
    """The start-up/work split of each step from the run's log; how many steps had a timing line."""
    found = 0
    for name, startup, work in timings(log_file):
        step = report.steps.setdefault(name, StepReport())
        step.startup, step.work = startup, work
        found += 1
    return found


def timings(log_file: str | Path) -> list[tuple[str, float, float]]:
    """(step, start-up, work) of every timing line in the run's log, in order: one per task that ran
    a step (the tasks of a ParallelFor share a step name); none for a log that is not there. Both
    times are on clocks that a change of the wall clock leaves alone."""
    path = Path(log_file)
    if not path.is_file():
        return []
    return [(match["step"], float(match["startup"]), float(match["work"]))
            for line in path.read_text(errors="replace").splitlines() if (match := _TIMING.search(line))]
