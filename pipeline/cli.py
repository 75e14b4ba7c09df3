"""The `tunepipe` command line.

Start-up stays light: TensorFlow, Beam, kfp and MLflow are imported inside the commands that need
them, so `tunepipe --help` answers at once.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from pipeline.cli_options import stacked
from components.errors import TunepipeError, disk_full


class _Group(click.Group):
    """Turns a user's mistake, or a full disk, into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TunepipeError as error:
            click.echo(f"tunepipe: error: {error}", err=True)
            sys.exit(getattr(error, "exit_code", 1))  # an interrupted run: 130 (SIGINT), 143 (SIGTERM)
        except Exception as error:
            full = disk_full(error)
            if full is None:
                raise
            click.echo(f"tunepipe: error: {full}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("tunepipe: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tunepipe")
def main() -> None:
    """Tune, train, evaluate and push a Keras model for a table, locally or on Kubeflow."""


# The options that pick and override the pipeline config, shared by `run` and `compile`.
_config_options = stacked(
    click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Pipeline YAML file."),
    click.option("--data", help="Data source: a CSV or Parquet path, glob or URI (overrides data.source)."),
    click.option("--label", help="Label column (overrides data.label)."),
    click.option("--output-root", help="Where artifacts, caches and the tracking store go."),
    click.option("--runner", help="Beam runner for the data steps, e.g. DirectRunner, DataflowRunner."),
)


def _load_config(config_file, data, label, output_root, runner):
    from pipeline import config

    overrides: dict = {}
    if data:
        overrides.setdefault("data", {})["source"] = data
    if label:
        overrides.setdefault("data", {})["label"] = label
    if output_root:
        overrides["output_root"] = output_root
    if runner:
        overrides["beam"] = {"runner": runner}
    if config_file is None and not (data and label):
        raise TunepipeError("give --config FILE, or --data PATH and --label COLUMN")
    return config.load(config_file, overrides)


# The options of a local run, shared by `run` and `retrain`.
_run_options = stacked(
    _config_options,
    click.option("--no-cache", is_flag=True, help="Run every step even if kfp's cache holds its result."),
    click.option("--force-push", is_flag=True, help="Push the model even if the evaluation does not bless "
                                                    "it (recorded as forced)."),
)


def _run_locally(cfg, no_cache: bool, force_push: bool, reuse_hyperparameters: bool = False,
                 warm_start: bool = False) -> None:
    from rich.console import Console

    from components import source
    from components.ingest.infer import infer_schema
    from pipeline import local_run, version

    console = Console(stderr=True, soft_wrap=True)
    # The run's log going unwritable (a full disk) must not put logging's own error report, a
    # traceback, on the terminal: the run gives the log up (`progress.Tee`) and says what failed in one line.
    logging.raiseExceptions = False
    # Check what is cheap to check before any step starts: the files exist and have the label.
    resolved = source.resolve(cfg.data.source, cfg.data.span_window)
    infer_schema(resolved.files, cfg.data)
    spans = f" (span{'s' if len(resolved.spans) > 1 else ''} {', '.join(resolved.spans)})" if resolved.spans else ""
    retraining = reuse_hyperparameters or warm_start
    console.print(f"tunepipe: {'retraining' if retraining else 'pipeline'} [bold]{cfg.name}[/bold]: "
                  f"{len(resolved.files)} file(s) from {cfg.data.source}{spans}, label {cfg.data.label!r}")
    summary = local_run.run(cfg, version.code_version(), use_cache=not no_cache, force_push=force_push,
                            console=console, reuse_hyperparameters=reuse_hyperparameters, warm_start=warm_start)
    local_run.print_summary(summary, console)


@main.command()
@_run_options
def run(config_file, data, label, output_root, runner, no_cache, force_push):
    """Run the pipeline on this machine (kfp.local, Beam DirectRunner)."""
    _run_locally(_load_config(config_file, data, label, output_root, runner), no_cache, force_push)


@main.command()
@_run_options
@click.option("--retune", is_flag=True, help="Search hyperparameters again instead of reusing the last search's.")
@click.option("--no-warm-start", is_flag=True, help="Train from scratch instead of from the production model.")
def retrain(config_file, data, label, output_root, runner, no_cache, force_push, retune, no_warm_start):
    """Retrain on the newest data: reuse the last search's best hyperparameters (unless --retune, or
    the search is older than tuner.retune_after_days), warm-start from the production model,
    evaluate against it and push only if the new model is better.

    On Kubeflow the same run is `tunepipe submit --retrain` (or `tunepipe schedule --retrain`).
    """
    _run_locally(_load_config(config_file, data, label, output_root, runner), no_cache, force_push,
                 reuse_hyperparameters=not retune, warm_start=not no_warm_start)


@main.command(name="compile")
@_config_options
@click.option("--image", default=None, help="Container image the steps run in.")
@click.option("-o", "--output", "output", default="pipeline.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Where to write the KFP pipeline YAML.")
def compile_pipeline(config_file, data, label, output_root, runner, image, output):
    """Compile the pipeline to a KFP v2 package (YAML) for Kubeflow Pipelines."""
    from kfp import compiler

    from pipeline import dag, steps, version

    cfg = _load_config(config_file, data, label, output_root, runner)
    required = dag.machine_paths(cfg, *([Path(config_file).parent] if config_file else []))
    pipeline_function = dag.create_pipeline(cfg, image=image or dag.DEFAULT_IMAGE,
                                             code_version=version.code_version(), required=required)
    compiler.Compiler().compile(pipeline_function, package_path=output)
    click.echo(f"compiled pipeline {cfg.name!r} ({len(steps.active(cfg.tuner.workers))} steps) to {output}")
    parameters = [name for name in required if name != dag.HYPERMODEL_PATH]
    if parameters:
        click.echo(f"  {', '.join(parameters)}: paths of this machine, left out of the package; give them to a "
                   f"run (e.g. tunepipe submit --param {parameters[0]}=...)")


def _register_commands() -> None:
    # click and yaml only: kfp and MLflow are imported inside the commands.
    from pipeline import cli_kubeflow, cli_lineage

    for command in [*cli_kubeflow.COMMANDS, *cli_lineage.COMMANDS]:
        main.add_command(command)


_register_commands()
