"""The `tunepipe` command as a user meets it: start-up, help, and one clear line for bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PENGUINS

TUNEPIPE = [sys.executable, "-m", "pipeline"]


def tunepipe(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*TUNEPIPE, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})


def test_help_does_not_import_tensorflow_beam_or_kfp():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom pipeline.cli import main\n"
            "result = CliRunner().invoke(main, ['--help'])\nassert result.exit_code == 0, result.output\n"
            "heavy = [m for m in ('tensorflow', 'apache_beam', 'kfp', 'mlflow', 'keras') if m in sys.modules]\n"
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_lists_the_commands():
    result = tunepipe("--help")
    assert result.returncode == 0
    for command in ("run", "compile"):
        assert command in result.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--data", "{tmp}/missing.csv", "--label", "species"], "the data source {tmp}/missing.csv does not exist"),
    (["run", "--data", "{tmp}/*.csv", "--label", "species"], "matches no files"),
    (["run", "--data", str(PENGUINS), "--label", "kind"], "no label column 'kind'"),
    (["run", "--config", "{tmp}/bad.yaml"], "data.lable: unknown key (did you mean 'label'?"),
    (["run", "--config", "{tmp}/typed.yaml"], "{tmp}/typed.yaml: data.split.eval: "),
    (["run", "--data", str(PENGUINS)], "give --config FILE, or --data PATH and --label COLUMN"),
    (["run", "--config", "{tmp}/none.yaml"], "config file {tmp}/none.yaml does not exist"),
])
def test_bad_input_ends_in_one_line_and_exit_1(tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text(f"data:\n  source: {PENGUINS}\n  lable: species\n")
    (tmp_path / "typed.yaml").write_text(f"data:\n  source: {PENGUINS}\n  label: species\n  split: {{eval: [1]}}\n")
    result = tunepipe(*[arg.format(tmp=tmp_path) for arg in args], cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().startswith("tunepipe: error: ")
    assert message.format(tmp=tmp_path) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tunepipe-out").exists()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens on it once the probe is closed


def test_an_unreachable_tracking_server_is_one_line_before_any_work(tmp_path):
    uri = f"http://127.0.0.1:{_closed_port()}"
    result = subprocess.run([*TUNEPIPE, "run", "--config", str(PENGUINS.parent / "pipeline.yaml"),
                             "--output-root", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"})
    assert result.returncode == 1
    assert f"tunepipe: error: the tracking server {uri} does not answer" in result.stderr
    assert "nothing was run" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "pipelines").exists()  # no step ran
