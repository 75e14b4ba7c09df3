"""The Kubeflow commands of `tunepipe`: upload, submit and schedule a compiled pipeline.

Each command checks what it can without the network (the package exists, every --param is
NAME=VALUE, the cron expression is valid, the options fit together), then calls
`pipeline.kfp_client`. That module imports kfp, so it is imported inside the command bodies:
`tunepipe --help` stays fast. Every failure a user can cause is a `TunepipeError`, which the
`tunepipe` group prints as one line.

`schedule --local` is the same schedule without a cluster: `pipeline.scheduler` runs the retraining
command on this machine on each cron tick, in the foreground.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
import yaml

from pipeline.cli_options import stacked
from components.errors import TunepipeError

DEFAULT_PACKAGE = "pipeline.yaml"
# kfp_client.DEFAULT_EXPERIMENT, repeated so that building the options needs no kfp import.
DEFAULT_EXPERIMENT = "Default"


# Where the KFP API is and who we are there: shared by every Kubeflow command.
_kfp_options = stacked(
    click.option("--host", envvar="KF_PIPELINES_ENDPOINT", show_envvar=True, metavar="URL",
                 help="KFP API endpoint, e.g. http://localhost:8888 (a port-forward of ml-pipeline)."),
    click.option("--namespace", metavar="NS",
                 help="Namespace (profile) of a multi-user Kubeflow; pipelines are uploaded into it."),
    click.option("--token-env", metavar="VAR",
                 help="Environment variable holding the bearer token [default: $KFP_BEARER_TOKEN, "
                      "else the kubeconfig user token]."),
)


# What `--retrain` sets: the pipeline parameters that make a run `tunepipe retrain`.
RETRAIN_PARAMS = {"reuse_hyperparameters": True, "warm_start": True}


def _param_option(function):
    function = click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                            help="Pipeline parameter; VALUE is read as JSON when it parses (3, true, [1,2]), "
                                 "else as a string. Repeatable.")(function)
    return click.option("--retrain", is_flag=True,
                        help="Retrain: reuse the last search's hyperparameters (unless older than "
                             "tuner.retune_after_days) and warm-start from the production model; the same as "
                             + " ".join(f"--param {name}=true" for name in RETRAIN_PARAMS) + ".")(function)


def _connect(host: str | None, namespace: str | None, token_env: str | None) -> Any:
    """A checked `kfp.Client`; the token comes from --token-env VAR if given (see kfp_client.connect)."""
    from pipeline import kfp_client

    if not host:
        raise TunepipeError("give --host URL (the KFP API endpoint) or set KF_PIPELINES_ENDPOINT")
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            raise TunepipeError(f"--token-env {token_env}: the environment variable {token_env} is not set")
        return kfp_client.connect(host, namespace=namespace, token=token, token_source=f"from ${token_env}")
    return kfp_client.connect(host, namespace=namespace)


def parse_params(params: tuple[str, ...], retrain: bool = False) -> dict[str, Any]:
    """`NAME=VALUE` pairs as pipeline arguments: JSON values where they parse, strings otherwise;
    with `retrain`, the retraining parameters too."""
    arguments: dict[str, Any] = {}
    for param in params:
        name, equals, text = param.partition("=")
        name = name.strip()
        if not equals or not name:
            raise TunepipeError(f"--param {param!r} is not NAME=VALUE")
        if name in arguments:
            raise TunepipeError(f"--param {name!r} is given twice")
        try:
            arguments[name] = json.loads(text)
        except ValueError:
            arguments[name] = text
    if retrain:
        contradicted = [name for name, value in RETRAIN_PARAMS.items() if arguments.get(name, value) != value]
        if contradicted:
            raise TunepipeError(f"--retrain sets {', '.join(contradicted)}=true; --param says otherwise")
        arguments.update(RETRAIN_PARAMS)
    return arguments


def _package_pipeline_name(package: Path) -> str:
    """The pipeline name the compiler wrote into the package (`pipelineInfo.name`)."""
    if package.suffix not in (".yaml", ".yml"):
        raise TunepipeError(f"cannot read a pipeline name from {package}: give --name")
    try:
        with package.open() as stream:
            spec = next(yaml.safe_load_all(stream), None)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TunepipeError(f"pipeline package {package} is not readable YAML: {reason}") from None
    name = (spec.get("pipelineInfo") or {}).get("name") if isinstance(spec, dict) else None
    if not name:
        raise TunepipeError(f"pipeline package {package} has no pipelineInfo.name: is it a compiled KFP pipeline? "
                            "Give --name to upload it anyway")
    return str(name)


@click.command()
@_kfp_options
@click.option("--name", help="Pipeline name on the server [default: pipelineInfo.name of the package].")
@click.option("--version", "version", help="Name of the new version [default: <name>-<UTC timestamp>]; "
              "a new pipeline's first version is named after it by KFP.")
@click.option("--description", help="Description shown in the KFP UI.")
@click.argument("package", default=DEFAULT_PACKAGE, required=False, type=click.Path(dir_okay=False))
def upload(host, namespace, token_env, name, version, description, package):
    """Upload a compiled PACKAGE (default pipeline.yaml) as a pipeline, or a new version of it."""
    from pipeline import kfp_client

    package_path = Path(package)
    if not package_path.is_file():
        raise TunepipeError(f"pipeline package {package_path} does not exist: compile one with `tunepipe compile`")
    name = name or _package_pipeline_name(package_path)
    client = _connect(host, namespace, token_env)
    uploaded = kfp_client.upload(client, package_path, name, version=version, description=description)
    what = "created pipeline" if uploaded.new_pipeline else "added to pipeline"
    click.echo(f"{what} {uploaded.pipeline_name!r} (id {uploaded.pipeline_id}): version "
               f"{uploaded.version_name!r} (id {uploaded.version_id})")
    click.echo(f"UI: {uploaded.ui_url}")


@click.command()
@_kfp_options
@click.option("--name", required=True, help="Name of the uploaded pipeline to run.")
@click.option("--version", "version", help="Version to run [default: the newest].")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True,
              help="Experiment to file the run under; created if missing.")
@_param_option
@click.option("--run-name", help="Run name [default: <name>-<UTC timestamp>].")
def submit(host, namespace, token_env, name, version, experiment, params, retrain, run_name):
    """Start a run of an uploaded pipeline on Kubeflow Pipelines."""
    from pipeline import kfp_client

    arguments = parse_params(params, retrain)
    client = _connect(host, namespace, token_env)
    run = kfp_client.submit(client, name, experiment=experiment, params=arguments, run_name=run_name, version=version)
    click.echo(f"started run {run.run_name!r} (id {run.run_id}) of pipeline {run.pipeline_name!r} "
               f"version {run.version_name!r} in experiment {run.experiment!r}")
    click.echo(f"UI: {run.ui_url}")


@click.command()
@_kfp_options
@click.option("--name", help="Name of the uploaded pipeline to run; its newest version is scheduled.")
@click.option("--cron", metavar="EXPR",
              help='When to run: 5 fields ("0 3 * * *": 03:00 daily) or 6 with seconds first, as KFP takes them.')
@click.option("--job-name", help="Name of the recurring run; one of that name is replaced [default: <name>-schedule].")
@click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True,
              help="Experiment of the runs; created if missing. With --list: show only its recurring runs.")
@_param_option
@click.option("--max-concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many runs of the schedule may run at once.")
@click.option("--catchup/--no-catchup", default=False, show_default=True,
              help="Whether to start the runs missed while the schedule was paused or behind.")
@click.option("--list", "list_them", is_flag=True, help="List the recurring runs instead.")
@click.option("--delete", "delete_job", metavar="JOB", help="Delete the recurring run named JOB instead.")
@click.option("--local", is_flag=True, help="Run the schedule on this machine instead, in the foreground: "
              "`tunepipe retrain --config FILE` on each tick, never two at once.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="With --local: the pipeline to retrain [default: ./pipeline.yaml].")
@click.option("--max-runs", type=click.IntRange(min=1), metavar="N",
              help="With --local: stop after N runs [default: run until interrupted].")
@click.option("--command", "command_template", metavar="CMD",
              help="With --local: the command each tick runs; {config} is the config file "
                   "[default: 'tunepipe retrain --config {config}'].")
@click.pass_context
def schedule(ctx, host, namespace, token_env, name, cron, job_name, experiment, params, retrain, max_concurrency,
             catchup, list_them, delete_job, local, config_file, max_runs, command_template):
    """Schedule a pipeline to run on a cron on Kubeflow Pipelines (a KFP recurring run), or with
    --local on this machine.

    \b
    tunepipe schedule --host URL --name PIPELINE --cron "0 3 * * *"
    tunepipe schedule --host URL --list
    tunepipe schedule --host URL --delete JOB
    tunepipe schedule --local --cron "0 3 * * *" --config pipeline.yaml [--max-runs N]
    """
    if local:
        _schedule_locally(name, cron, list_them, delete_job, config_file, max_runs, command_template)
        return
    local_only = [flag for flag, given in (("--config", config_file), ("--max-runs", max_runs),
                                           ("--command", command_template)) if given is not None]
    if local_only:
        raise TunepipeError(f"{', '.join(local_only)}: only with --local (a schedule on this machine)")
    action = _schedule_action(name, cron, list_them, delete_job)
    if action == "list":
        experiment_given = ctx.get_parameter_source("experiment") is not click.core.ParameterSource.DEFAULT
        _list_kubeflow_schedules(host, namespace, token_env, experiment if experiment_given else None)
    elif action == "delete":
        _delete_kubeflow_schedule(host, namespace, token_env, delete_job)
    else:
        _schedule_on_kubeflow(host, namespace, token_env, name, cron, job_name or f"{name}-schedule", experiment,
                              parse_params(params, retrain), max_concurrency, catchup)


def _schedule_action(name: str | None, cron: str | None, list_them: bool, delete_job: str | None) -> str:
    """Which of create / list / delete the options ask for; a mix of them is an error."""
    asked = [flag for flag, given in (("--list", list_them), ("--delete", delete_job is not None)) if given]
    if len(asked) > 1:
        raise TunepipeError("give only one of --list and --delete JOB")
    if asked and (name or cron):
        raise TunepipeError(f"{asked[0]} takes no --name or --cron")
    if list_them:
        return "list"
    if delete_job is not None:
        return "delete"
    if not (name and cron):
        raise TunepipeError("give --name PIPELINE and --cron EXPR to schedule, or --list, or --delete JOB")
    return "create"


def _schedule_on_kubeflow(host: str | None, namespace: str | None, token_env: str | None, name: str, cron: str,
                          job_name: str, experiment: str, arguments: dict[str, Any], max_concurrency: int,
                          catchup: bool) -> None:
    from pipeline import kfp_client

    kfp_cron = kfp_client.to_kfp_cron(cron)  # a typo in the cron fails here, before any request
    client = _connect(host, namespace, token_env)
    scheduled = kfp_client.schedule(client, name, job_name, kfp_cron, experiment=experiment, params=arguments,
                                    max_concurrency=max_concurrency, catchup=catchup)
    replaced = f", replacing {', '.join(scheduled.replaced)}" if scheduled.replaced else ""
    click.echo(f"scheduled {scheduled.job_name!r} (id {scheduled.recurring_run_id}{replaced}): pipeline {name!r} "
               f"newest version (id {scheduled.version_id}) at cron {scheduled.cron!r} (KFP, seconds first), "
               f"max concurrency {scheduled.max_concurrency}, {'catch-up' if scheduled.catchup else 'no catch-up'}")
    click.echo(f"UI: {scheduled.ui_url}")


def _schedule_locally(name: str | None, cron: str | None, list_them: bool, delete_job: str | None,
                      config_file: str | None, max_runs: int | None, command_template: str | None) -> None:
    """`--local`: the foreground scheduler of `pipeline.scheduler`, after checking everything it needs."""
    from pipeline import config, scheduler

    kubeflow_only = [flag for flag, given in (("--name", name), ("--list", list_them), ("--delete", delete_job))
                     if given]
    if kubeflow_only:
        raise TunepipeError(f"--local takes no {', '.join(kubeflow_only)}: those name recurring runs on Kubeflow")
    if not cron:
        raise TunepipeError('give --cron EXPR with --local, e.g. --cron "0 3 * * *" (03:00 daily)')
    cron_schedule = scheduler.CronSchedule(cron)  # a typo in the cron fails here, before anything runs
    if config_file is None:
        if not Path("pipeline.yaml").is_file():
            raise TunepipeError("give --config FILE with --local: the pipeline to retrain (no pipeline.yaml here)")
        config_file = "pipeline.yaml"
    cfg = config.load(config_file)
    command = scheduler.command_for(Path(config_file).resolve(), command_template or scheduler.DEFAULT_COMMAND)
    outcomes = scheduler.Scheduler(cron_schedule, command, cfg.output_root, max_runs=max_runs,
                                   echo=click.echo).run()
    failed = [outcome for outcome in outcomes if not outcome.succeeded]
    if failed:
        raise TunepipeError(f"{len(failed)} of {len(outcomes)} scheduled run(s) failed; "
                            f"see {Path(cfg.output_root).resolve() / scheduler.LOG_FILE}")


def _list_kubeflow_schedules(host: str | None, namespace: str | None, token_env: str | None,
                             experiment: str | None) -> None:
    from pipeline import kfp_client

    client = _connect(host, namespace, token_env)
    schedules = kfp_client.list_schedules(client, experiment=experiment)
    where = f"experiment {experiment!r} on KFP at {host}" if experiment else f"KFP at {host}"
    if not schedules:
        click.echo(f"no recurring runs in {where}")
        return
    rows = [("NAME", "CRON", "STATE", "ID")] + [
        (found.job_name, found.cron, "enabled" if found.enabled else "disabled", found.recurring_run_id)
        for found in schedules]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])


def _delete_kubeflow_schedule(host: str | None, namespace: str | None, token_env: str | None, job_name: str) -> None:
    from pipeline import kfp_client

    client = _connect(host, namespace, token_env)
    deleted = kfp_client.delete_schedule(client, job_name)
    click.echo(f"deleted recurring run {job_name!r} (id {', '.join(deleted)})")


COMMANDS = [upload, submit, schedule]
