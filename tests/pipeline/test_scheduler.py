"""`tunepipe schedule --local`: ticks, one run at a time, a lock that a crash cannot leave behind.

Time is faked (the scheduler takes a clock and a sleep function): a fake minute passes in a few
real milliseconds. The runs are real subprocesses that the tests control through files (a run
waits until the test lets it finish), and "held by someone else" is a real process holding the
real flock, so what is tested is what the kernel does.
"""
from __future__ import annotations

import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline import scheduler
from pipeline.cli import main
from components.errors import TunepipeError

START = dt.datetime(2026, 1, 1, 2, 59, 30).timestamp()  # local time, 30 s before a minute tick
REAL_PAUSE = 0.002  # what each fake sleep really waits, so that the subprocesses get to run

# A run: notes its start, waits until the test creates the release file, notes its end.
WAITING_RUN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    marks, release = Path(sys.argv[1]), Path(sys.argv[2])
    with marks.open("a") as handle:
        handle.write(f"start {os.getpid()}\\n")
    while not release.exists():
        time.sleep(0.01)
    with marks.open("a") as handle:
        handle.write(f"end {os.getpid()}\\n")
""")


class FakeTime:
    """A clock and a sleep for the scheduler; `when(condition, action)` acts once on the way."""

    def __init__(self, start: float = START, real_limit: float = 60.0):
        self.now = start
        self._actions: list[list] = []
        self._real_deadline = time.monotonic() + real_limit

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        for action in self._actions:
            if not action[2] and action[0]():
                action[2] = True
                action[1]()
        if time.monotonic() > self._real_deadline:
            raise AssertionError("the scheduler did not finish in time")
        time.sleep(REAL_PAUSE)

    def when(self, condition, action) -> None:
        self._actions.append([condition, action, False])


def log_text(root: Path) -> str:
    path = root / scheduler.LOG_FILE
    return path.read_text() if path.exists() else ""


def python(code: str, *args: object) -> list[str]:
    return [sys.executable, "-c", code, *[str(arg) for arg in args]]


def make_scheduler(root: Path, command: list[str], fake: FakeTime, cron: str = "* * * * *", **options):
    lines: list[str] = []
    found = scheduler.Scheduler(scheduler.CronSchedule(cron), command, root, clock=fake.clock, sleep=fake.sleep,
                                echo=lines.append, **options)
    return found, lines


def test_a_tick_while_the_previous_run_still_runs_is_skipped_not_overlapped(tmp_path):
    marks, release = tmp_path / "marks", tmp_path / "release"
    fake = FakeTime()
    runner, lines = make_scheduler(tmp_path / "out", python(WAITING_RUN, marks, release), fake, max_runs=2)
    # Let the first run finish only once the scheduler has skipped a tick because of it.
    fake.when(lambda: "skipped" in log_text(tmp_path / "out"), release.touch)

    outcomes = runner.run()

    assert [outcome.exit_code for outcome in outcomes] == [0, 0]
    assert runner.skipped == 1
    events = [line.split()[0] for line in marks.read_text().splitlines()]
    assert events == ["start", "end", "start", "end"]  # never two at once
    log = log_text(tmp_path / "out")
    assert log.splitlines() == lines  # the terminal and the log file say the same
    messages = [line.split(" ", 3)[3] for line in lines]  # without the date, time and zone
    assert messages[0].startswith("scheduler started")
    assert messages[1].startswith("run 1 started (pid ")
    assert messages[2] == "next run at 2026-01-01 03:01:00 " + messages[2].rsplit(" ", 1)[1]
    assert messages[3].startswith("skipped: previous run still running (run 1, pid ")
    assert messages[-1] == "scheduler done: 2 run(s), 0 failed, 1 tick(s) skipped"
    ticks = [line.split(" ")[1] for line, message in zip(lines, messages, strict=True)
             if message.startswith(("run 1 started", "run 2 started", "skipped:"))]
    assert ticks == ["03:00:00", "03:01:00", "03:02:00"]
    finished = [message for message in messages if message.startswith("run 1 finished")]
    minutes, seconds = divmod(round(outcomes[0].seconds), 60)
    assert outcomes[0].seconds >= 60  # it spanned the skipped tick, on the fake clock
    assert finished == [f"run 1 finished: exit code 0 (succeeded) in {minutes} min {seconds:02d} s; output in "
                        f"{outcomes[0].log_file}"]


def test_a_crashed_lock_holder_does_not_block_the_next_tick(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    holder_code = textwrap.dedent("""
        import fcntl, sys, time
        lock = open(sys.argv[1], "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen(python(holder_code, root / scheduler.LOCK_FILE), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        fake = FakeTime()
        ran = tmp_path / "ran"
        runner, lines = make_scheduler(root, python("import sys; open(sys.argv[1], 'w').write('ran')", ran), fake,
                                       max_runs=1)

        def crash_the_holder():
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)

        fake.when(lambda: "skipped" in log_text(root), crash_the_holder)
        outcomes = runner.run()
    finally:
        holder.kill()
        holder.wait(timeout=10)

    assert holder.returncode == -signal.SIGKILL
    assert runner.skipped == 1 and [outcome.exit_code for outcome in outcomes] == [0]
    assert ran.read_text() == "ran"
    assert any("skipped: previous run still running" in line for line in lines)


def test_a_run_killed_by_sigkill_is_logged_and_the_next_tick_runs(tmp_path):
    counter = tmp_path / "count"
    crash_once = textwrap.dedent("""
        import os, signal, sys
        from pathlib import Path
        counter = Path(sys.argv[1])
        count = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(count + 1))
        if count == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    fake = FakeTime()
    runner, lines = make_scheduler(tmp_path / "out", python(crash_once, counter), fake, max_runs=2)

    outcomes = runner.run()

    assert [outcome.exit_code for outcome in outcomes] == [-signal.SIGKILL, 0]
    assert runner.skipped == 0
    assert any("run 1 finished: exit code -9 (killed by SIGKILL)" in line for line in lines)
    assert lines[-1].endswith("scheduler done: 2 run(s), 1 failed, 0 tick(s) skipped")


def test_a_run_outlives_its_crashed_scheduler_and_keeps_the_lock(tmp_path):
    """The run holds the lock it inherited: a restarted scheduler does not start a second run beside it."""
    root, marks, release = tmp_path / "out", tmp_path / "marks", tmp_path / "release"
    first_scheduler = textwrap.dedent(f"""
        import sys
        from pipeline import scheduler

        class Fake:
            now = {START!r}
            def clock(self):
                return self.now
            def sleep(self, seconds):
                self.now += seconds
                import time; time.sleep({REAL_PAUSE!r})

        fake = Fake()
        command = [sys.executable, "-c", {WAITING_RUN!r}, {str(marks)!r}, {str(release)!r}]
        scheduler.Scheduler(scheduler.CronSchedule("* * * * *"), command, {str(root)!r}, max_runs=1,
                            clock=fake.clock, sleep=fake.sleep).run()
    """)
    crashed = subprocess.Popen(python(first_scheduler), stdout=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 60
        while "run 1 started" not in log_text(root):
            assert crashed.poll() is None and time.monotonic() < deadline, log_text(root)
            time.sleep(0.02)
        crashed.send_signal(signal.SIGKILL)
        crashed.wait(timeout=10)

        fake = FakeTime()
        ran = tmp_path / "ran"
        runner, lines = make_scheduler(root, python("import sys; open(sys.argv[1], 'w').write('ran')", ran), fake,
                                       max_runs=1)
        fake.when(lambda: "skipped" in "".join(lines), release.touch)
        outcomes = runner.run()
    finally:
        release.touch()
        crashed.kill()
        crashed.wait(timeout=10)

    skipped = next(line for line in lines if "skipped" in line)
    assert f"by scheduler pid {crashed.pid})" in skipped  # the orphaned run of the crashed scheduler
    assert [outcome.exit_code for outcome in outcomes] == [0] and ran.read_text() == "ran"
    assert [line.split()[0] for line in marks.read_text().splitlines()] == ["start", "end"]


def test_ctrl_c_stops_the_scheduler_but_the_run_keeps_the_lock_until_it_ends(tmp_path):
    root, marks, release = tmp_path / "out", tmp_path / "marks", tmp_path / "release"
    fake = FakeTime()
    runner, lines = make_scheduler(root, python(WAITING_RUN, marks, release), fake)

    def interrupt():
        raise KeyboardInterrupt

    fake.when(lambda: marks.exists(), interrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.run()

    assert "it holds the lock until it stops" in lines[-1]
    lock = scheduler.RunLock(root / scheduler.LOCK_FILE)
    assert lock.try_acquire() is None and lock.holder().startswith("run 1, pid ")
    release.touch()
    deadline = time.monotonic() + 30
    while (descriptor := lock.try_acquire()) is None:
        assert time.monotonic() < deadline, "the run never released the lock"
        time.sleep(0.01)
    os.close(descriptor)


def test_a_daily_cron_ticks_at_its_time_and_missed_ticks_run_once_not_one_by_one(tmp_path):
    fake = FakeTime(start=dt.datetime(2026, 1, 1, 12, 0, 0).timestamp())
    stamps = tmp_path / "stamps"
    runner, lines = make_scheduler(tmp_path / "out", python("import sys; open(sys.argv[1], 'a').write('x')", stamps),
                                   fake, cron="0 3 * * *", max_runs=3, max_sleep=3600)
    started = []

    def note(line: str) -> None:
        lines.append(line)
        if line.split(" ", 3)[3].startswith("run ") and " started (pid " in line:
            started.append(dt.datetime.fromtimestamp(fake.now).strftime("%Y-%m-%d %H:%M"))
        if " run 1 finished" in line:
            fake.now += 3 * 86400 + 5 * 3600  # the machine slept through three 03:00 ticks

    runner.echo = note
    runner.run()

    # On waking at 08:00 on the 5th: one run for the missed ticks, then the schedule as usual.
    assert started == ["2026-01-02 03:00", "2026-01-05 08:00", "2026-01-06 03:00"]
    assert stamps.read_text() == "xxx"


def test_a_command_that_cannot_start_is_a_failed_run_and_frees_the_lock(tmp_path):
    fake = FakeTime()
    runner, lines = make_scheduler(tmp_path / "out", [str(tmp_path / "no-such-program")], fake, max_runs=2)
    outcomes = runner.run()
    assert [outcome.exit_code for outcome in outcomes] == [127, 127]
    assert sum("could not start" in line for line in lines) == 2


@pytest.mark.parametrize("cron, message", [
    ("0 25 * * *", "cron expression '0 25 * * *': the hour field '25' is out of range (0-23)"),
    ("every day", "cron expression 'every day' has 2 field(s): give 5"),
])
def test_a_bad_cron_is_refused_before_anything_runs(cron, message):
    with pytest.raises(TunepipeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        scheduler.CronSchedule(cron)


def test_the_default_command_is_tunepipe_retrain_and_can_be_replaced():
    assert scheduler.command_for("my pipeline.yaml") == [sys.executable, "-m", "pipeline", "retrain", "--config",
                                                         "my pipeline.yaml"]
    assert scheduler.describe_command(scheduler.command_for("p.yaml")) == "tunepipe retrain --config p.yaml"
    assert scheduler.command_for("p.yaml", "tunepipe retrain --config {config} --retune") == [
        sys.executable, "-m", "pipeline", "retrain", "--config", "p.yaml", "--retune"]
    with pytest.raises(TunepipeError, match="cannot be split into words"):
        scheduler.command_for("p.yaml", "run 'unterminated")


# -- the command -----------------------------------------------------------------------------------

def tunepipe(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "penguins", "output_root": str(tmp_path / "out"),
                                    "data": {"source": str(tmp_path / "penguins.csv"), "label": "species"}}))
    return path


@pytest.fixture
def fake_time(monkeypatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(scheduler, "time", types.SimpleNamespace(time=fake.clock, sleep=fake.sleep))
    return fake


def test_schedule_local_runs_the_command_with_the_config_and_logs_it(config_file, fake_time, tmp_path):
    seen = tmp_path / "seen"
    command = f"{shlex.quote(sys.executable)} -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' " \
              f"{shlex.quote(str(seen))} {{config}}"

    result = tunepipe("schedule", "--local", "--cron", "* * * * *", "--config", str(config_file), "--max-runs", "1",
                      "--command", command)

    assert result.exit_code == 0, result.output
    assert seen.read_text() == str(config_file.resolve())
    lines = result.stdout.splitlines()
    assert any(" run 1 started (pid " in line for line in lines)
    assert any(" run 1 finished: exit code 0 (succeeded)" in line for line in lines)
    assert lines[-1].endswith("scheduler done: 1 run(s), 0 failed, 0 tick(s) skipped")
    assert log_text(tmp_path / "out").splitlines() == lines


def test_schedule_local_with_a_failing_run_ends_in_one_line(config_file, fake_time, tmp_path):
    failing = python("import sys; print('tunepipe: error: step ingest failed: no rows', file=sys.stderr); "
                     "sys.exit(1)")
    result = tunepipe("schedule", "--local", "--cron", "* * * * *", "--config", str(config_file), "--max-runs", "1",
                      "--command", shlex.join(failing))
    assert result.exit_code == 1
    finished = next(line for line in result.stdout.splitlines() if "run 1 finished" in line)
    assert "run 1 finished: exit code 1 (failed) in" in finished
    assert ": tunepipe: error: step ingest failed: no rows; output in" in finished
    assert result.stderr.strip() == (f"tunepipe: error: 1 of 1 scheduled run(s) failed; see "
                                     f"{tmp_path / 'out' / scheduler.LOG_FILE}")


@pytest.mark.parametrize("args, message", [
    (["--cron", "0 25 * * *"], "cron expression '0 25 * * *': the hour field '25' is out of range (0-23)"),
    (["--cron", "daily"], "cron expression 'daily' has 1 field(s): give 5"),
    ([], 'give --cron EXPR with --local, e.g. --cron "0 3 * * *"'),
    (["--cron", "0 3 * * *", "--name", "penguins"], "--local takes no --name: those name recurring runs on Kubeflow"),
    (["--cron", "0 3 * * *", "--list"], "--local takes no --list"),
])
def test_schedule_local_refuses_bad_options_before_anything_runs(config_file, tmp_path, args, message):
    marker = tmp_path / "ran"
    command = shlex.join(python("import sys; open(sys.argv[1], 'w').write('ran')", marker))
    result = tunepipe("schedule", "--local", "--config", str(config_file), "--command", command, *args)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tunepipe: error: ") and message in lines[0], result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out").exists()  # no lock, no log


def test_schedule_local_without_a_config_here_says_what_to_give(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = tunepipe("schedule", "--local", "--cron", "0 3 * * *")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("tunepipe: error: give --config FILE with --local: the pipeline to retrain "
                                     "(no pipeline.yaml here)")


def test_local_only_options_without_local_are_an_error(config_file):
    result = tunepipe("schedule", "--name", "penguins", "--cron", "0 3 * * *", "--max-runs", "2")
    assert result.exit_code == 1
    assert result.stderr.strip() == "tunepipe: error: --max-runs: only with --local (a schedule on this machine)"
