"""Reading what a recorded run says: its artifacts, params and tags, as the queries need them.

The schema is the one `pipeline.tracking`, `pipeline.trial_tracking` and `pipeline.registry` write,
named in `pipeline.tags`. MLflow keeps every param and tag as a string; these helpers turn them back
into the values they were, and shorten values for display.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from components import objectives
from pipeline import tags

_FIELDS = ("uri", "digest")  # what `tags.input` / `tags.output` record of each artifact


def outputs_of(run: Any) -> dict[str, tuple[str, str]]:
    """A step run's output artifacts: name -> (uri, digest)."""
    return _artifacts(run, tags.OUTPUT, tags.output)


def inputs_of(run: Any) -> dict[str, tuple[str, str]]:
    return _artifacts(run, tags.INPUT, tags.input)


def _artifacts(run: Any, prefix: str, tag: Callable[[str, str], str]) -> dict[str, tuple[str, str]]:
    recorded = run.data.tags
    start = prefix + "."
    names = sorted({key[len(start):].rsplit(".", 1)[0] for key in recorded
                    if key.startswith(start) and key.rsplit(".", 1)[-1] in _FIELDS})
    return {name: (recorded.get(tag(name, "uri"), ""), recorded.get(tag(name, "digest"), "")) for name in names}


def _number(text: str | None) -> Any:
    """A param as MLflow keeps it (a string) as the value it was: int, float, bool or string."""
    if text is None:
        return None
    for convert in (int, float):
        with contextlib.suppress(ValueError):
            return convert(text)
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    return text


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _json_param(run: Any, name: str) -> dict[str, Any]:
    with contextlib.suppress(TypeError, ValueError):
        value = json.loads(run.data.params.get(name, ""))
        if isinstance(value, dict):
            return value
    return {}


def _direction(tune_run: Any | None, objective: str | None) -> str:
    """Which way the search's objective is better: as the tuner config said, else by its name."""
    tuner = _json_param(tune_run, "tuner") if tune_run is not None else {}
    if tuner.get("direction") in (objectives.MAX, objectives.MIN):
        return tuner["direction"]
    return objectives.direction(objective or tuner.get("objective") or "")


def _spans(recorded: dict[str, str]) -> tuple[str, ...] | None:
    if tags.SPANS not in recorded:
        return None
    return tuple(span.strip() for span in recorded[tags.SPANS].split(",") if span.strip())


def _fingerprint(run: Any | None) -> str | None:
    if run is None:
        return None
    return run.data.params.get("fingerprint") or run.data.tags.get(tags.FINGERPRINT)


def _short(value: Any, width: int = 60) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def _digest(text: str) -> str:
    """sha256:abcdef… -> sha256:abcdef012345 (what a person compares by eye)."""
    algorithm, _, value = text.partition(":")
    return f"{algorithm}:{value[:12]}" if value else text[:19]


def _format_time(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
