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
import os
from pathlib import Path

from components import artifacts, push
from components.push import PushResult
from components.errors import TunepipeError
from components.resolve_baseline import REGISTRY, SERVING_DIR, Baseline, serving_versions
from components.serving import SAVED_MODEL
from pipeline import tags

log = logging.getLogger("tunepipe.registry")


def production(model_name: str) -> Baseline | None:
    """The version behind the `production` alias, or None (no registered model, or no alias yet)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(model_name, tags.PRODUCTION_ALIAS)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None  # no such model, or no alias yet; a server that does not answer is not "none"
        raise TunepipeError(f"the model registry did not say which version of {model_name} is in production "
                            f"({error.error_code}: {str(error.message).splitlines()[0][:200]})") from None
    if not _served_path(version):
        return None
    serving_version = version.tags.get(tags.VERSION_SERVING)
    return Baseline(_served_path(version), int(serving_version) if serving_version else None, REGISTRY)


def _served_path(version) -> str:
    """A registered version's directory in the serving directory (its source, where the registry
    took the path as the source)."""
    return version.tags.get(tags.VERSION_PATH) or version.source


def _source(path: str, digest: str | None, run_id: str | None) -> tuple[str, str | None]:
    """The source and run of a new version. A store on this machine takes the served directory; a
    tracking server takes a local path only inside the run's artifacts, so there the source is the
    training run's copy of the model (train logs it), that run found by the model's digest if not given."""
    import mlflow
    from mlflow import MlflowClient

    if not mlflow.get_tracking_uri().startswith(("http://", "https://")):
        return path, run_id
    active = mlflow.active_run()
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or (active.info.experiment_id if active else None)
    if run_id is None and digest and experiment_id:
        made_it = (f"tags.`{tags.output(artifacts.MODEL, 'digest')}` = '{digest}' "
                   f"and tags.`{tags.CACHED}` = '{tags.flag(False)}'")  # the run that trained it logged it
        found = MlflowClient().search_runs([experiment_id], made_it, max_results=1)
        run_id = found[0].info.run_id if found else None
    return (f"runs:/{run_id}/{artifacts.MODEL}", run_id) if run_id else (path, run_id)


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
    path = str(Path(pushed.path))
    # A version of the same directory and content: registered by a push killed before the alias
    # moved (a directory a withdrawn push left registered holds another model now).
    registered = next((version for version in client.search_model_versions(f"name = '{model_name}'")
                       if _served_path(version) == path and version.tags.get(tags.VERSION_DIGEST) == pushed.digest),
                      None)
    if registered is None:
        source, run_id = _source(path, pushed.digest, run_id)
        registered = client.create_model_version(
            model_name, source=source, run_id=run_id,
            tags={tags.VERSION_SERVING: str(pushed.version), tags.VERSION_PATH: path,
                  tags.VERSION_FORCED: tags.flag(pushed.forced),
                  tags.VERSION_DIGEST: pushed.digest or "", **({tags.VERSION_RECOVERED: "true"} if recovered else {})})
    client.set_registered_model_alias(model_name, tags.PRODUCTION_ALIAS, registered.version)
    log.info("push: registered %s version %s, now %s", model_name, registered.version, tags.PRODUCTION_ALIAS)
    return str(registered.version)


def reconcile(serving_dir: str, model_name: str, registered: Baseline | None) -> Baseline | None:
    """The production alias made to name the newest served version if a killed push left it behind;
    the version in production then (`registered` when nothing needed doing; the served version,
    unregistered, if the registry refuses it)."""
    from mlflow.exceptions import MlflowException

    with push.locked(serving_dir, model_name):
        versions = serving_versions(serving_dir, model_name)
        if not versions:
            return registered
        newest = Path(serving_dir, model_name, str(versions[-1]))
        if registered is not None and Path(registered.path) == newest:
            return registered
        if not (newest / SAVED_MODEL).is_file():
            return registered  # not a push's: a push renames only a complete copy
        pushed = PushResult(True, "recovered", versions[-1], str(newest), digest=push.served_digest(newest))
        try:
            version = register(model_name, pushed, None, recovered=True)
        except MlflowException as error:
            log.warning("resolve-baseline: TF Serving serves version %d of %s, which the registry's %s alias does not "
                        "name, and the registry would not take it (%s); comparing against the served version",
                        versions[-1], model_name, tags.PRODUCTION_ALIAS, str(error.message).splitlines()[0][:200])
            return Baseline(str(newest), versions[-1], SERVING_DIR)
    log.warning("resolve-baseline: TF Serving serves version %d of %s, which the registry's %s alias did not name "
                "(a push cut short); the alias now names it (registry version %s)", versions[-1], model_name,
                tags.PRODUCTION_ALIAS, version)
    return Baseline(str(newest), versions[-1], REGISTRY)
