"""The lineage commands of `tunepipe`: `runs`, `trials` and `lineage`, read from the MLflow tracking store.

They only read (see `pipeline.queries`), through MLflow's client, so they work against the embedded
SQLite store and a tracking server alike. Where the store is: `--tracking-uri`, else (with
`--config`) where `tunepipe run` puts it for that config ($MLFLOW_TRACKING_URI, the config's
`tracking_uri`, `<output_root>/mlflow.db`), else $MLFLOW_TRACKING_URI, else `tunepipe-out/mlflow.db`
here. MLflow is imported inside the command bodies, so `tunepipe --help` stays fast. Every failure
a user can cause (an unknown run or model version, no store, an unreachable server) is one
`TunepipeError` line.

Each command is one short process that spends most of its time importing MLflow (docs/benchmarks.md,
"Queries"); `_store` keeps the garbage collector from walking what those imports built, again and
again.
"""
from __future__ import annotations

import contextlib
import gc
import os
import sys
from collections.abc import Iterator

import click

from pipeline.cli_options import stacked
from components.errors import TunepipeError

# A query that cannot reach the tracking server should say so in seconds, not after MLflow's
# default of 7 retries with exponential backoff (minutes).
_HTTP_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


_store_options = stacked(
    click.option("--config", "config_file", type=click.Path(dir_okay=False),
                 help="Pipeline YAML file: its tracking store (and, for `runs`, its experiment)."),
    click.option("--tracking-uri", metavar="URI",
                 help="MLflow tracking URI, e.g. http://mlflow:5000 or sqlite:///tunepipe-out/mlflow.db "
                      "[default: $MLFLOW_TRACKING_URI, else the config's store, else ./tunepipe-out/mlflow.db]."),
)


def _where(config_file: str | None, tracking_uri: str | None) -> tuple[str, str | None]:
    """The tracking URI to read, and the experiment the config names (if a config is given)."""
    from pipeline import tracking

    if config_file:
        from pipeline import config

        cfg = config.load(config_file)
        return tracking_uri or tracking.tracking_uri(cfg.output_root, cfg.tracking_uri), cfg.name
    if tracking_uri:
        return tracking_uri, None
    return tracking.tracking_uri("tunepipe-out"), None


@contextlib.contextmanager
def _store(config_file: str | None, tracking_uri: str | None) -> Iterator[tuple[object, str | None]]:
    """The store to read, and the experiment the config names.

    Importing MLflow and SQLAlchemy leaves some 270,000 objects that live as long as the process,
    and CPython's collector walks all of them on each full collection: during the imports, again
    and again while a search builds its runs (1.1 s of the 1.5 s it took to load 358 runs), and
    once more as the interpreter shuts down (1.2 s). So the collector is paused while the store
    opens, and what exists then is frozen (`gc.freeze`: later collections skip it) for the rest of
    the process; garbage made afterwards is collected as usual.
    """
    gc.disable()
    try:
        uri, experiment = _where(config_file, tracking_uri)
        from pipeline import queries, tracking

        with tracking.environment(_HTTP_SETTINGS, overwrite=False):
            store = queries.Store(uri)
            gc.freeze()
            gc.enable()
            yield store, experiment
    finally:
        gc.enable()


def _console(file=None):
    from rich.console import Console

    width = int(os.environ.get("COLUMNS", "0") or 0) or None
    stream = file or sys.stdout
    if width is None and not stream.isatty():
        width = 200  # piped or redirected: keep rows on one line rather than fold them at 80 columns
    return Console(file=file, width=width, soft_wrap=False, highlight=False)


@click.command()
@_store_options
@click.option("--experiment", metavar="NAME", help="Experiment (= pipeline name) to list [default: the config's "
                                                   "name; without --config, every experiment].")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs, newest first.")
def runs(config_file, tracking_uri, experiment, limit):
    """List pipeline runs: when, status, spans, best trial, accuracy, blessed, pushed version, cached steps."""
    with _store(config_file, tracking_uri) as (store, configured):
        from pipeline import queries

        experiment = experiment or configured
        rows = queries.pipeline_runs(experiment, limit=limit, store=store)
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        if not rows:
            click.echo(f"no pipeline runs in {where} at {store.uri}")
            return
        title = f"pipeline runs in {where} ({store.uri}), newest first"
        _console().print(queries.runs_table(rows, title=title))


@click.command()
@_store_options
@click.option("--format", "output_format", type=click.Choice(["text", "html"]), default="text", show_default=True,
              help="text: a table for the terminal; html: the tuning report, plots included (renders offline).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.argument("run")
def trials(config_file, tracking_uri, output_format, output, run):
    """List the tuner trials of RUN (a pipeline run id or name, or a tune step run id), best first.

    When the run's tune step came from kfp's cache, these are the trials of the run that produced
    the reused tuning result.
    """
    with _store(config_file, tracking_uri) as (store, _):
        from pipeline import queries
        from pipeline.queries.trials import report

        search = queries.trials(run, store=store)
        if output_format == "html":
            _write_or_echo(report(search), output, f"the tuning report of tune run {search.tune_run_id}")
            return
        if not search.rows:
            tune = store.run(search.tune_run_id)
            why = ("tuning was off: the default hyperparameters were used" if tune.data.metrics.get("trials") == 0
                   else "no trial runs are recorded under it")
            click.echo(f"no trials in tune run {search.tune_run_id}: {why}")
            return
        reused = (f"; pipeline run {search.reused_by} reused this search's result (from kfp's cache or by "
                  f"retraining)" if search.reused_by else "")
        title = (f"{len(search.rows)} trials of tune run {search.tune_run_id} (pipeline run {search.pipeline_run_id})"
                 f", best first by {search.objective or 'score'} ({search.direction}){reused}")
        _console().print(queries.trials_table(search, title=title))


@click.command(name="lineage")
@_store_options
@click.option("--format", "output_format", type=click.Choice(["text", "dot", "mermaid", "html", "json"]),
              default="text", show_default=True, help="text: a tree for the terminal; dot (Graphviz), mermaid, "
                                                      "html (one self-contained page), json.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.argument("target")
def lineage(config_file, tracking_uri, output_format, output, target):
    """Trace TARGET back to its source data, through every step, artifact and the best trial.

    \b
    TARGET is one of:
      penguins:3, penguins@production   a registered model version, or its serving path
      RUN_ID or pipeline run name       a pipeline, step or trial run
      PATH or URI                       an artifact a step produced
    Steps served from kfp's cache are followed, by content digest, to the run that produced them.
    """
    with _store(config_file, tracking_uri) as (store, _):
        from pipeline import queries

        graph = queries.lineage(target, store=store)
    if not output:
        if output_format == "text":
            _console().print(queries.lineage_tree(graph))
        else:
            click.echo(queries.RENDERERS[output_format](graph), nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            if output_format == "text":
                _console(handle).print(queries.lineage_tree(graph))
            else:
                handle.write(queries.RENDERERS[output_format](graph))
    except OSError as error:
        raise TunepipeError(f"cannot write {output}: {error.strerror or error}") from None
    else:
        click.echo(f"wrote the {output_format} lineage of {graph.target} ({len(graph.nodes)} nodes, "
                   f"{len(graph.edges)} edges) to {output}")


def _write_or_echo(text: str, output: str | None, what: str) -> None:
    if not output:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        raise TunepipeError(f"cannot write {output}: {error.strerror or error}") from None
    click.echo(f"wrote {what} to {output}")


COMMANDS = [runs, trials, lineage]
