"""A helper the `tunepipe` command modules share: click options grouped under one decorator."""
from __future__ import annotations

from collections.abc import Callable


def stacked(*options: Callable) -> Callable:
    """Several click options as one decorator; `--help` lists them in the order given."""
    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate
