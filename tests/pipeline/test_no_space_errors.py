"""A full disk, piece by piece: how an error is known to mean one (`components.errors.disk_full`),
the one line a step and the CLI make of it, the failed step's outputs removed, the run's log given
up without an error, and files written whole. The whole runs on a real small disk are
tests/faults/test_no_space.py."""
from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from components import artifacts
from components.errors import DataError, DiskFull, disk_full
from pipeline import launcher, progress, steps
from pipeline.cli import _Group


def _chained(outer: BaseException, inner: BaseException, cause: bool = True) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as error:
            if cause:
                raise outer from error
            raise outer
    except BaseException as error:
        return error


@pytest.mark.parametrize("error, path", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/a.parquet"), "/out/a.parquet"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), None),
    # shutil's copy names the source, then the destination: the one that was written.
    (OSError(errno.ENOSPC, "No space left on device", "/model/saved_model.pb", None, "/serving/.1.partial/x"),
     "/serving/.1.partial/x"),
    # Beam re-raises a DoFn's error as text.
    (RuntimeError("OSError: [Errno 28] No space left on device [while running 'WriteTrain/Write']"), None),
    (RuntimeError("OSError: [Errno 28] No space left on device: '/out/x.json' [while running 'Stats']"), "/out/x.json"),
    (OSError("Unable to synchronously create file (unable to open file: name = '/work/checkpoint.weights.h5', "
             "errno = 28, error message = 'No space left on device', flags = 13)"), "/work/checkpoint.weights.h5"),
    (Exception("/work/tensorboard/events.out.tfevents.1.v2; No space left on device"),
     "/work/tensorboard/events.out.tfevents.1.v2"),
    (Exception("(sqlite3.OperationalError) database or disk is full"), None),
])
def test_an_error_saying_the_disk_is_full_is_known_and_says_where_if_it_can(error, path):
    found = disk_full(error)
    assert isinstance(found, DiskFull)
    assert found.path == path
    assert str(found) == (f"no space left on device ({path})" if path else "no space left on device")


def test_a_full_disk_is_found_down_the_chain_and_its_path_wherever_the_chain_names_it():
    full = OSError(errno.ENOSPC, "No space left on device", "/out/examples/part-0.parquet")
    assert disk_full(_chained(RuntimeError("the pipeline failed"), full)).path == full.filename
    assert disk_full(_chained(KeyError("x"), full, cause=False)).path == full.filename
    unnamed = _chained(RuntimeError("No space left on device"), full)
    assert disk_full(unnamed).path == full.filename


@pytest.mark.parametrize("error", [OSError(errno.ENOENT, "No such file or directory", "/x"), ValueError("space"),
                                   DataError("x.csv: no data rows")])
def test_other_errors_are_not_a_full_disk(error):
    assert disk_full(error) is None


def test_a_cycle_in_the_chain_ends_the_search():
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert disk_full(first) is None


def test_a_step_on_a_full_disk_ends_in_one_line_even_when_its_error_file_cannot_be_written(tmp_path, monkeypatch,
                                                                                         capsys):
    monkeypatch.setenv(launcher.ERROR_FILE_ENV, str(tmp_path / "no such directory" / "errors.jsonl"))
    with pytest.raises(SystemExit) as exit_, launcher.user_errors("tune"):
        raise OSError(errno.ENOSPC, "No space left on device", "/work/trial.json")
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "tunepipe: error: tune: no space left on device (/work/trial.json)\n"

    monkeypatch.setenv(launcher.ERROR_FILE_ENV, str(tmp_path / "errors.jsonl"))
    with pytest.raises(SystemExit), launcher.user_errors("ingest"):
        raise RuntimeError("OSError: [Errno 28] No space left on device [while running 'WriteTrain']")
    assert json.loads((tmp_path / "errors.jsonl").read_text()) == {"step": "ingest",
                                                                   "message": "no space left on device"}


def test_a_bug_is_still_a_traceback():
    with pytest.raises(ZeroDivisionError), launcher.user_errors("train"):
        raise ZeroDivisionError


def _artifact(path: Path) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), uri=str(path), metadata={})


def test_a_failed_step_leaves_none_of_its_outputs_and_keeps_its_inputs(tmp_path):
    step = steps.BY_NAME["evaluate"]  # inputs examples, model, baseline; outputs evaluation, metrics, ...
    task = {name: _artifact(tmp_path / "inputs" / name) for name in step.inputs}
    task.update(evaluation=_artifact(tmp_path / "evaluate" / "evaluation"), metrics=_artifact(tmp_path / "metrics"))
    for name in step.inputs:
        Path(task[name].path).mkdir(parents=True)
    Path(task["evaluation"].path, ".partial-1").mkdir(parents=True)
    Path(task["metrics"].path).write_text("{}")

    with pytest.raises(OSError), launcher.outputs_removed_on_failure(step, task):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not Path(task["evaluation"].path).exists() and not Path(task["metrics"].path).exists()
    assert all(Path(task[name].path).is_dir() for name in step.inputs)


def test_a_step_that_succeeds_keeps_its_outputs_and_no_output_that_holds_an_input_is_removed(tmp_path):
    step = steps.BY_NAME["preprocess"]
    examples = _artifact(tmp_path / "shared" / "examples")
    transform = _artifact(tmp_path / "shared")  # a path holding an input: never kfp's, never removed
    Path(examples.path).mkdir(parents=True)
    with launcher.outputs_removed_on_failure(step, {"examples": examples, "transform": transform}):
        pass
    with pytest.raises(KeyboardInterrupt), launcher.outputs_removed_on_failure(
            step, {"examples": examples, "transform": transform}):
        raise KeyboardInterrupt
    assert Path(examples.path).is_dir()


def test_a_log_on_a_full_disk_is_given_up_and_the_run_goes_on(capsys):
    shown = []
    with open("/dev/full", "w", encoding="utf-8") as log:  # every write: ENOSPC
        tee = progress.Tee(log, shown.append)
        handler = logging.StreamHandler(log)  # as the run's root logger writes the same file
        tee.write(f"    {progress.MARKER}tune: trial 1 of 5\n")
        tee.write("    tunepipe: error: tune: no space left on device (/work/trial.json)\n")
        handler.emit(logging.LogRecord("kfp", logging.INFO, __file__, 1, "Task finished", None, None))
        handler.flush()
        tee.flush()
    assert shown == ["tune: trial 1 of 5"]
    assert capsys.readouterr().err == ""  # no "--- Logging error ---" with its traceback
    assert progress.step_errors == [{"step": "tune", "message": "no space left on device (/work/trial.json)"}]


def test_the_run_names_the_first_step_that_failed_as_its_output_showed_it(tmp_path):
    from pipeline import local_run

    errors, log_file = tmp_path / "errors.jsonl", tmp_path / "run.log"
    errors.write_text('{"step": "resolve-baseline", "mess')  # the only line a full disk let in, cut short
    with open(os.devnull, "w") as log:
        tee = progress.Tee(log, print)
        tee.write("    tunepipe: error: tune: no space left on device\n")
        tee.write("    tunepipe: error: resolve-baseline: no space left on device\n")
    assert str(local_run._error_from_steps(errors, log_file)) == "step tune failed: no space left on device"

    with open(os.devnull, "w") as log:
        progress.Tee(log, print)  # a run whose output showed no step's line: the file says it
    errors.write_text(json.dumps({"step": "ingest", "message": "x.csv: no data rows"}) + "\n")
    assert str(local_run._error_from_steps(errors, log_file)) == "step ingest failed: x.csv: no data rows"
    errors.unlink()
    assert str(local_run._error_from_steps(errors, log_file)).startswith("the pipeline failed")


@pytest.mark.parametrize("where", ["write", "fsync"])  # fsync: where NFS and some FUSE filesystems report it
def test_a_file_written_whole_keeps_what_it_held_when_the_disk_is_full(tmp_path, monkeypatch, where):
    path = tmp_path / "trial.json"
    artifacts.write_text_whole(path, '{"status": "RUNNING"}')
    assert path.read_text() == '{"status": "RUNNING"}'

    def no_space(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    def cut_short(name, mode, *args, **kwargs):
        handle = open(name, mode, *args, **kwargs)
        handle.write = lambda text: (handle.buffer.write(text[:3].encode()), no_space())
        return handle

    if where == "write":
        monkeypatch.setattr(artifacts, "open", cut_short, raising=False)
    else:
        monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as raised:
        artifacts.write_text_whole(path, '{"status": "COMPLETED"}')
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(path))
    monkeypatch.undo()
    assert path.read_text() == '{"status": "RUNNING"}' and os.listdir(tmp_path) == ["trial.json"]


def test_keras_tuners_state_is_written_whole_and_a_full_disk_in_it_ends_the_search(tmp_path, monkeypatch):
    import keras_tuner
    from keras_tuner.src import utils

    from components.tune import step as tune_step

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    original = utils.save_json
    with tune_step._state_written_whole():
        utils.save_json(str(tmp_path / "oracle.json"), {"trials": 1})
        monkeypatch.setattr(artifacts, "write_text_whole", full)
        with pytest.raises(keras_tuner.errors.FatalError) as raised:
            utils.save_json(str(tmp_path / "trial.json"), {"status": "COMPLETED"})
    assert utils.save_json is original
    assert json.loads((tmp_path / "oracle.json").read_text()) == {"trials": 1}
    assert disk_full(raised.value).path == str(tmp_path / "trial.json")


def test_the_cli_makes_one_line_of_a_full_disk():
    group = _Group()

    @group.command()
    def boom():
        raise OSError(errno.ENOSPC, "No space left on device", "/out/cache/entry.json")

    @group.command()
    def bug():
        raise ZeroDivisionError

    result = CliRunner().invoke(group, ["boom"])
    assert (result.exit_code, result.output) == (1, "tunepipe: error: no space left on device (/out/cache/entry.json)"
                                                     "\n")
    assert isinstance(CliRunner().invoke(group, ["bug"]).exception, ZeroDivisionError)
