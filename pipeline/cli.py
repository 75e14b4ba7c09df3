"""The `tunepipe` command line.

Start-up stays light: TensorFlow, Beam, kfp and MLflow are imported inside the commands that need
them, so `tunepipe --help` answers at once.
"""
from __future__ import annotations

import sys

import click

from pipeline.errors import TunepipeError


class _Group(click.Group):
    """Turns a user's mistake into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TunepipeError as error:
            click.echo(f"tunepipe: error: {error}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("tunepipe: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tunepipe")
def main() -> None:
    """Tune, train, evaluate and push a Keras model for a table, locally or on Kubeflow."""


def _register_kubeflow_commands() -> None:
    from pipeline import cli_kubeflow

    for command in cli_kubeflow.COMMANDS:
        main.add_command(command)


_register_kubeflow_commands()
