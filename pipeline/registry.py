"""The MLflow model registry: which version is in production, and registering a pushed one.

A pushed model becomes a registered version whose source is its serving directory, linked to the
training run and tagged with its serving version, whether it was forced and its content digest; the
`production` alias moves to it. resolve-baseline asks here first for the model in production.
"""
from __future__ import annotations

import logging
from pathlib import Path

from components.push import PushResult
from components.resolve_baseline import REGISTRY, Baseline
from pipeline import tags

log = logging.getLogger("tunepipe.registry")


def production(model_name: str) -> Baseline | None:
    """The version behind the `production` alias, or None (no registered model, or no alias yet)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(model_name, tags.PRODUCTION_ALIAS)
    except MlflowException:
        return None
    if not version.source:
        return None
    serving_version = version.tags.get(tags.VERSION_SERVING)
    return Baseline(version.source, int(serving_version) if serving_version else None, REGISTRY)


def register(model_name: str, pushed: PushResult, run_id: str | None) -> str:
    """Register what `pushed` put in the serving directory and move the `production` alias to it;
    the registry's version number."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Pushed by tunepipe")
    registered = client.create_model_version(
        model_name, source=str(Path(pushed.path)), run_id=run_id,
        tags={tags.VERSION_SERVING: str(pushed.version), tags.VERSION_FORCED: tags.flag(pushed.forced),
              tags.VERSION_DIGEST: pushed.digest or ""})
    client.set_registered_model_alias(model_name, tags.PRODUCTION_ALIAS, registered.version)
    log.info("push: registered %s version %s, now %s", model_name, registered.version, tags.PRODUCTION_ALIAS)
    return str(registered.version)
