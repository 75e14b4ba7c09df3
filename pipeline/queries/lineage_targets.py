"""What a `tunepipe lineage` target names, looked up in the store: the registry and path side of tracing.

A target can be a model version (`penguins:3`, `penguins@production`, `models:/penguins/3`), its
serving directory, or an artifact a step produced (or a file inside one). These find the records
behind such a target: the registered version served from a path, the step run whose output is at a
URI, the push step run that served a version, and the version a push registered. Building the
graph from them is `pipeline.queries.lineage`'s.
"""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from components import artifacts
from components.errors import TunepipeError
from pipeline import steps, tags
from pipeline.queries.store import Store, _unreachable

MODEL_VERSION = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9][\w.-]*)(?::|/)(?P<version>\d+)$")
MODEL_ALIAS = re.compile(r"^(?:models:/)?(?P<name>[A-Za-z0-9][\w.-]*)@(?P<alias>[\w-]+)$")


def path_candidates(target: str) -> list[list[str]]:
    """Where an artifact at `target` may be recorded: the place itself, then the folders above it,
    each in the forms a step may have written it in (a path, a file:// URI)."""
    from urllib.parse import unquote

    if "://" in target and not target.startswith("file://"):
        return [[target.rstrip("/")]]  # gs://, s3://: compared as written
    path = Path(unquote(target.removeprefix("file://"))).expanduser().resolve()
    # A file or folder inside an artifact belongs to the artifact a few levels up.
    return [list(dict.fromkeys([str(place), place.as_uri()])) for place in (path, *path.parents[:3])]


def version_at(store: Store, candidates: list[str]) -> Any | None:
    """The registered model version served from one of `candidates` (<serving_dir>/<model>/<version>)."""
    for candidate in candidates:
        path = Path(candidate.removeprefix("file://"))
        if not path.name.isdigit() or not path.parent.name:
            continue
        from mlflow.exceptions import MlflowException

        try:
            versions = store.versions(path.parent.name)
        except MlflowException as error:
            if _unreachable(error):
                raise
            continue
        for version in versions:
            served = version.tags.get(tags.VERSION_PATH) or version.source  # a server's versions: a runs:/ source
            if served and served.removeprefix("file://").rstrip("/") == str(path):
                return version
    return None


def artifact_producer(store: Store, uri: str) -> tuple[Any, str] | None:
    """The step run whose output artifact is at `uri`, and the artifact's name."""
    experiment_ids = [experiment.experiment_id for experiment in store.experiments()]
    if not experiment_ids:
        return None
    for name in steps.ARTIFACTS:
        found = store.search(experiment_ids, f"tags.`{tags.output(name, 'uri')}` = {tags.quoted(uri)}",
                             order_by=["attributes.start_time ASC"])
        if found:
            produced = [run for run in found if run.data.tags.get(tags.CACHED) == tags.flag(False)]
            return (produced or found)[0], name
    return None


def push_of(store: Store, version: Any) -> Any | None:
    """The push step run that served this model version."""
    serving_version = version.tags.get(tags.VERSION_SERVING) or Path(version.source or "").name
    experiment_ids = []
    if version.run_id:
        with contextlib.suppress(TunepipeError):
            experiment_ids = [store.run(version.run_id).info.experiment_id]
    experiment_ids = experiment_ids or [experiment.experiment_id for experiment in store.experiments()]
    query = (f"tags.`{tags.STEP}` = 'push' and tags.`{tags.PUSHED}` = '{tags.flag(True)}' "
             f"and tags.`{tags.PUSH_VERSION}` = {tags.quoted(str(serving_version))} "
             f"and params.model_name = {tags.quoted(version.name)}")
    found = store.search(experiment_ids, query, order_by=["attributes.start_time DESC"])
    digest = version.tags.get(tags.VERSION_DIGEST)
    matching = [run for run in found
                if not digest or run.data.tags.get(tags.input(artifacts.MODEL, "digest")) == digest]
    return (matching or found or [None])[0]


def registered_by(store: Store, push: Any) -> Any | None:
    """The registry version a push created (matched by serving version and model digest)."""
    from mlflow.exceptions import MlflowException

    recorded = push.data.tags
    name = push.data.params.get("model_name")
    if recorded.get(tags.PUSHED) != tags.flag(True) or not name:
        return None
    try:
        versions = store.versions(name)
    except MlflowException as error:
        if _unreachable(error):
            raise
        return None
    digest = recorded.get(tags.input(artifacts.MODEL, "digest"))
    for version in versions:
        if version.tags.get(tags.VERSION_SERVING) == recorded.get(tags.PUSH_VERSION) and (
                not digest or version.tags.get(tags.VERSION_DIGEST) in (None, digest)):
            return version
    return None
