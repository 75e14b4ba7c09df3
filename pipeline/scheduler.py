"""`tunepipe schedule --local`: retrain on a cron on this machine, in the foreground.

On each tick of the cron the scheduler starts the retraining command (by default
`tunepipe retrain --config FILE`) as a subprocess, and never two at once. "At once" is guarded by a
lock, not by the scheduler's memory: an exclusive `flock` on `<output_root>/scheduler.lock`,
taken by the scheduler and handed to the run (the run inherits the locked file descriptor). The
kernel releases a flock when the last descriptor of it closes, so

- a run that crashes (even SIGKILL) never blocks the next tick: its descriptor dies with it;
- a scheduler that crashes while a run goes on leaves the lock with the run, so a restarted
  scheduler (or a second one on the same output root) skips its ticks until that run ends;
- a tick that finds the lock held logs "skipped: previous run still running" and waits for the next.

Missed ticks are not caught up one by one (KFP's `--no-catchup`): a tick that comes while a run
goes on is skipped, and after the machine slept through ticks, one run starts on waking, for the
latest of them.
Each run's start, end, exit code and duration go to the terminal and to
`<output_root>/logs/scheduler.log`; the run's own output goes to a log file of its own beside it.

Time is injected (`clock`, `sleep`), so tests run a day of ticks in milliseconds.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.errors import TunepipeError

LOCK_FILE = "scheduler.lock"
LOG_FILE = Path("logs", "scheduler.log")
# The longest single sleep: a clock that jumps (suspend, NTP) is noticed within this.
MAX_SLEEP_SECONDS = 60.0
# How often a running run is checked for its end, so that its outcome is logged promptly.
POLL_SECONDS = 1.0
DEFAULT_COMMAND = "tunepipe retrain --config {config}"


class CronSchedule:
    """A cron expression as `tunepipe schedule` takes it: 5 fields, or 6 with seconds first (KFP's dialect)."""

    def __init__(self, expression: str):
        from pipeline.kfp_cron import to_kfp_cron  # one cron dialect and one set of messages for both

        self.expression = expression
        self.seconds_first = to_kfp_cron(expression)  # raises TunepipeError naming the field at fault

    def next_after(self, timestamp: float) -> float:
        """The first tick strictly after `timestamp`, in local time."""
        from croniter import croniter

        start = dt.datetime.fromtimestamp(timestamp).astimezone()
        return float(croniter(self.seconds_first, start, second_at_beginning=True).get_next(float))


def command_for(config_file: str | os.PathLike[str], template: str = DEFAULT_COMMAND) -> list[str]:
    """The retraining command: `template` with {config} filled in; a leading `tunepipe` runs this
    installation's CLI (`python -m pipeline`), whether or not the script is on PATH."""
    try:
        words = shlex.split(template.replace("{config}", shlex.quote(str(config_file))))
    except ValueError as error:
        raise TunepipeError(f"--command {template!r} cannot be split into words: {error}") from None
    if not words:
        raise TunepipeError("--command is empty")
    if words[0] == "tunepipe":
        words = [sys.executable, "-m", "pipeline", *words[1:]]
    return words


def describe_command(command: Sequence[str]) -> str:
    """The command as one line of the log, `tunepipe ...` for this installation's CLI."""
    words = list(command)
    if words[:3] == [sys.executable, "-m", "pipeline"]:
        words = ["tunepipe", *words[3:]]
    return shlex.join(words).replace("\n", "\\n")


@dataclass(frozen=True)
class Outcome:
    """One finished run."""

    number: int
    started: float
    ended: float
    exit_code: int
    log_file: Path

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@dataclass
class _Running:
    """The run in progress: its process, the locked descriptor it shares, and where its output goes."""

    process: subprocess.Popen
    lock_descriptor: int
    number: int
    started: float
    log_file: Path


class RunLock:
    """The exclusive flock on `<output_root>/scheduler.lock`; the file's text says who holds it."""

    def __init__(self, path: Path):
        self.path = path

    def try_acquire(self) -> int | None:
        """A descriptor holding the lock, or None if someone else holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    @staticmethod
    def describe_holder(descriptor: int, text: str) -> None:
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, text.encode(), 0)

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""


def _exit_description(code: int) -> str:
    if code == 0:
        return "exit code 0 (succeeded)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code} (killed by {name})"
    return f"exit code {code} (failed)"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s"


def _last_error(log_file: Path) -> str | None:
    """The one-line error a failed `tunepipe` command ends with, if it wrote one."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    return next((line.strip() for line in reversed(lines) if line.startswith("tunepipe: error:")), None)


class Scheduler:
    """Runs `command` on each tick of `schedule`, one run at a time, until `max_runs` have run (or forever)."""

    def __init__(self, schedule: CronSchedule, command: Sequence[str], output_root: str | os.PathLike[str], *,
                 max_runs: int | None = None, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], None] | None = None, echo: Callable[[str], None] | None = None,
                 poll_seconds: float = POLL_SECONDS, max_sleep: float = MAX_SLEEP_SECONDS,
                 cwd: str | os.PathLike[str] | None = None):
        self.schedule = schedule
        self.command = list(command)
        self.output_root = Path(output_root).resolve()
        self.lock = RunLock(self.output_root / LOCK_FILE)
        self.log_file = self.output_root / LOG_FILE
        self.max_runs = max_runs
        self.clock = clock or time.time
        self.sleep = sleep or time.sleep
        self.echo = echo or (lambda line: print(line, flush=True))
        self.poll_seconds = poll_seconds
        self.max_sleep = max_sleep
        self.cwd = cwd
        self.outcomes: list[Outcome] = []
        self.skipped = 0
        self.started_runs = 0
        self._running: _Running | None = None

    # the log ----------------------------------------------------------------------------------

    def _stamp(self, timestamp: float | None = None) -> str:
        moment = dt.datetime.fromtimestamp(self.clock() if timestamp is None else timestamp).astimezone()
        return moment.strftime("%Y-%m-%d %H:%M:%S %z")

    def log(self, message: str) -> None:
        line = f"{self._stamp()} {message}"
        self.echo(line)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    # the loop ---------------------------------------------------------------------------------

    def _more_runs(self) -> bool:
        return self.max_runs is None or self.started_runs < self.max_runs

    def run(self) -> list[Outcome]:
        """Tick until `max_runs` runs have started and ended; forever without `max_runs`."""
        limit = f", stopping after {self.max_runs} run(s)" if self.max_runs else ""
        next_tick = self.schedule.next_after(self.clock())
        self.log(f"scheduler started (pid {os.getpid()}): cron {self.schedule.expression!r}, command "
                 f"{describe_command(self.command)!r}, lock {self.lock.path}{limit}; first run at "
                 f"{self._stamp(next_tick)}")
        try:
            while True:
                self._reap()
                if not self._more_runs() and self._running is None:
                    break
                now = self.clock()
                if self._more_runs() and now >= next_tick:
                    self._tick()
                    next_tick = self.schedule.next_after(max(now, next_tick))
                    if self._more_runs():
                        self.log(f"next run at {self._stamp(next_tick)}")
                    continue
                wait = next_tick - now if self._more_runs() else self.poll_seconds
                if self._running is not None:
                    wait = min(wait, self.poll_seconds)
                self.sleep(max(0.0, min(wait, self.max_sleep)))
        except KeyboardInterrupt:
            self._interrupted()
            raise
        failed = sum(not outcome.succeeded for outcome in self.outcomes)
        self.log(f"scheduler done: {len(self.outcomes)} run(s), {failed} failed, {self.skipped} tick(s) skipped")
        return self.outcomes

    def _tick(self) -> None:
        descriptor = self.lock.try_acquire()
        if descriptor is None:
            self.skipped += 1
            holder = self.lock.holder()
            self.log(f"skipped: previous run still running{f' ({holder})' if holder else ''}")
            return
        self.started_runs += 1
        number = self.started_runs
        started = self.clock()
        stamp = dt.datetime.fromtimestamp(started).strftime("%Y%m%d-%H%M%S")
        run_log = self.log_file.parent / f"scheduled-{stamp}-{os.getpid()}-{number}.log"
        holder = f"run {number}, started {self._stamp(started)} by scheduler pid {os.getpid()}"
        self.lock.describe_holder(descriptor, holder + "\n")
        try:
            with open(run_log, "w", encoding="utf-8") as output:
                # The run inherits the locked descriptor: the lock lives as long as the run does,
                # even if this scheduler dies first.
                process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=output,
                                           stderr=subprocess.STDOUT, pass_fds=(descriptor,), cwd=self.cwd)
        except OSError as error:
            os.close(descriptor)
            self.outcomes.append(Outcome(number, started, self.clock(), 127, run_log))
            self.log(f"run {number} could not start: {describe_command(self.command)}: {error.strerror or error}")
            return
        self.lock.describe_holder(descriptor, f"run {number}, pid {process.pid}, started {self._stamp(started)} "
                                              f"by scheduler pid {os.getpid()}\n")
        self._running = _Running(process, descriptor, number, started, run_log)
        self.log(f"run {number} started (pid {process.pid}): {describe_command(self.command)}; output in {run_log}")

    def _reap(self) -> None:
        running = self._running
        if running is None:
            return
        code = running.process.poll()
        if code is None:
            return
        self._running = None
        os.close(running.lock_descriptor)  # the run's copy died with it: the lock is free now
        outcome = Outcome(running.number, running.started, self.clock(), code, running.log_file)
        self.outcomes.append(outcome)
        error = _last_error(running.log_file) if code else None
        self.log(f"run {running.number} finished: {_exit_description(code)} in {_duration(outcome.seconds)}"
                 f"{f': {error}' if error else ''}; output in {running.log_file}")

    def _interrupted(self) -> None:
        if self._running is None:
            self.log("scheduler interrupted")
            return
        running = self._running
        # Ctrl-C reached the run too (same process group); it keeps the lock until it has stopped.
        self.log(f"scheduler interrupted while run {running.number} (pid {running.process.pid}) was running; "
                 "it holds the lock until it stops")
        os.close(running.lock_descriptor)
        self._running = None
