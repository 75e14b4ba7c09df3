"""The MLflow model registry: which version is in production, and registering a pushed one.

A pushed model becomes a registered version whose source is its serving directory, linked to the
training run and tagged with its serving version, whether it was forced and its content digest; the
`production` alias moves to it. resolve-baseline asks here first for the model in production.

The alias always names the version TF Serving serves: the newest in the serving directory. A push
registers its version before it lets go of the serving directory's lock, and takes the version back
out if the registry cannot be told; only a push killed outright (SIGKILL, a lost node) can leave a
served version the alias does not name, and `reconcile`, which resolve-baseline calls before it
answers, registers it then (tagged `recovered`).
"""
from __future__ import annotations

import logging
from pathlib import Path

from components import push
from components.push import PushResult
from components.resolve_baseline import REGISTRY, Baseline, serving_versions
from components.serving import SAVED_MODEL
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


def register(model_name: str, pushed: PushResult, run_id: str | None, recovered: bool = False) -> str:
    """Register what `pushed` put in the serving directory (unless a version of that directory is
    registered already: a push killed between the two registry calls) and move the `production`
    alias to it; the registry's version number."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Pushed by tunepipe")
    source = str(Path(pushed.path))
    registered = next((version for version in client.search_model_versions(f"name = '{model_name}'")
                       if version.source == source), None)
    if registered is None:
        registered = client.create_model_version(
            model_name, source=source, run_id=run_id,
            tags={tags.VERSION_SERVING: str(pushed.version), tags.VERSION_FORCED: tags.flag(pushed.forced),
                  tags.VERSION_DIGEST: pushed.digest or "", **({tags.VERSION_RECOVERED: "true"} if recovered else {})})
    client.set_registered_model_alias(model_name, tags.PRODUCTION_ALIAS, registered.version)
    log.info("push: registered %s version %s, now %s", model_name, registered.version, tags.PRODUCTION_ALIAS)
    return str(registered.version)


def reconcile(serving_dir: str, model_name: str, registered: Baseline | None) -> Baseline | None:
    """The production alias made to name the newest served version if a killed push left it behind;
    the version in production then (`registered` when nothing needed doing)."""
    with push.locked(serving_dir, model_name):
        versions = serving_versions(serving_dir, model_name)
        if not versions or (registered is not None and registered.version == versions[-1]):
            return registered
        newest = Path(serving_dir, model_name, str(versions[-1]))
        if not (newest / SAVED_MODEL).is_file():
            return registered  # not a push's: a push renames only a complete copy
        pushed = PushResult(True, "recovered", versions[-1], str(newest), digest=push.served_digest(newest))
        version = register(model_name, pushed, None, recovered=True)
    log.warning("resolve-baseline: TF Serving serves version %d of %s, which the registry's %s alias did not name "
                "(a push cut short); the alias now names it (registry version %s)", versions[-1], model_name,
                tags.PRODUCTION_ALIAS, version)
    return Baseline(str(newest), versions[-1], REGISTRY)
