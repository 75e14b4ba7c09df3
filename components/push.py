"""Finding the model in production, and pushing a blessed model to serving.

Serving layout (TF Serving's): `<serving_dir>/<model_name>/<version>/saved_model.pb`, with
increasing integer versions. A push copies the model into a hidden sibling directory on the same
filesystem and renames it to its version number only when the copy is complete: TF Serving loads
only integer-named directories, so a push killed halfway leaves nothing it would load, and the next
push clears the leftover. An existing version is never overwritten.

The model registry (MLflow) is told about every push: a model version whose source is the pushed
directory, linked to the training run, and the `production` alias moved to it. The baseline for
the next evaluation is the version behind that alias, else the newest version in the serving
directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from components import artifacts
from pipeline.errors import TunepipeError

log = logging.getLogger("tunepipe.push")

PRODUCTION_ALIAS = "production"
# What a SavedModel directory consists of; the rest of a model artifact stays in the pipeline root.
_SAVED_MODEL_ENTRIES = ("saved_model.pb", "variables", "assets", "fingerprint.pb")
_DIGEST_FILE = "tunepipe_model_digest.txt"


@dataclass(frozen=True)
class Baseline:
    path: str
    version: int | None
    source: str  # "registry" or "serving_dir"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PushResult:
    pushed: bool
    reason: str
    version: int | None = None
    path: str | None = None
    forced: bool = False
    registry_version: str | None = None


def serving_versions(serving_dir: str | os.PathLike[str], model_name: str) -> list[int]:
    root = Path(serving_dir, model_name)
    if not root.is_dir():
        return []
    return sorted(int(entry.name) for entry in root.iterdir() if entry.is_dir() and entry.name.isdigit())


def _registry_baseline(model_name: str) -> Baseline | None:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(model_name, PRODUCTION_ALIAS)
    except MlflowException:
        return None  # no such registered model or alias yet
    if not version.source or not Path(version.source).is_dir():
        log.warning("the %s alias of %s points at %s, which is not there; using the serving directory",
                    PRODUCTION_ALIAS, model_name, version.source)
        return None
    serving_version = version.tags.get("serving_version")
    return Baseline(version.source, int(serving_version) if serving_version else None, "registry")


def resolve_baseline(serving_dir: str | os.PathLike[str], model_name: str) -> Baseline | None:
    """The model in production: the registry's `production` alias, else the newest served version,
    else None (the first run)."""
    baseline = _registry_baseline(model_name)
    if baseline is not None:
        return baseline
    versions = serving_versions(serving_dir, model_name)
    if not versions:
        return None
    return Baseline(str(Path(serving_dir, model_name, str(versions[-1]))), versions[-1], "serving_dir")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One push at a time per model, so two pushes cannot take the same version number."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".push.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _clear_leftovers(root: Path) -> None:
    for entry in root.iterdir():
        if entry.name.startswith(".") and ".partial-" in entry.name:
            log.info("push: removing %s, left by an interrupted push", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _copy_saved_model(model: Path, target: Path, digest: str) -> None:
    target.mkdir()
    for name in _SAVED_MODEL_ENTRIES:
        source = model / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        elif source.is_file():
            shutil.copy2(source, target / name)
    (target / _DIGEST_FILE).write_text(digest + "\n")
    # The copy must be on disk before the rename makes it visible.
    for path in target.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def served_digest(version_dir: str | os.PathLike[str]) -> str | None:
    path = Path(version_dir, _DIGEST_FILE)
    return path.read_text().strip() if path.exists() else None


def _register(model_name: str, version_dir: Path, version: int, run_id: str | None, forced: bool,
              digest: str) -> str | None:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Pushed by tunepipe")
    registered = client.create_model_version(
        model_name, source=str(version_dir), run_id=run_id,
        tags={"serving_version": str(version), "forced": str(forced).lower(), "digest": digest})
    client.set_registered_model_alias(model_name, PRODUCTION_ALIAS, registered.version)
    return str(registered.version)


def run(model: str | os.PathLike[str], blessing: dict[str, Any], serving_dir: str | os.PathLike[str],
        model_name: str, force: bool = False, training_run_id: str | None = None) -> PushResult:
    """Push `model` to `<serving_dir>/<model_name>/<next version>/` if `blessing` says so (or `force`)."""
    model = Path(model)
    manifest = artifacts.read_manifest(model, "model")
    if not (model / "saved_model.pb").is_file():
        raise TunepipeError(f"{model}: the model artifact has no saved_model.pb to push")
    blessed = bool(blessing.get("blessed"))
    if not blessed and not force:
        return PushResult(False, "not blessed: " + blessing_reason(blessing))
    root = Path(serving_dir, model_name)
    with _locked(root):
        _clear_leftovers(root)
        versions = serving_versions(serving_dir, model_name)
        if versions and served_digest(root / str(versions[-1])) == manifest["digest"]:
            return PushResult(False, f"this model is already served as version {versions[-1]}", versions[-1],
                              str(root / str(versions[-1])))
        version = (versions[-1] if versions else 0) + 1
        final = root / str(version)
        partial = root / f".{version}.partial-{uuid.uuid4().hex[:8]}"
        try:
            _copy_saved_model(model, partial, manifest["digest"])
            os.rename(partial, final)  # the moment the version becomes visible to TF Serving
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    forced = force and not blessed
    registry_version = _register(model_name, final, version, training_run_id, forced, manifest["digest"])
    reason = "forced by --force-push although not blessed" if forced else "blessed"
    log.info("push: %s version %d to %s (%s)", model_name, version, final, reason)
    return PushResult(True, reason, version, str(final), forced, registry_version)


def blessing_reason(blessing: dict[str, Any]) -> str:
    failures = blessing.get("failures") or []
    if not failures:
        return "the evaluation did not bless the model"
    return "; ".join(_describe_failure(failure) for failure in failures)


def _describe_failure(failure: dict[str, Any]) -> str:
    text = f"{failure.get('metric')} {failure.get('threshold', '')}".strip()
    if failure.get("slice") not in (None, "", "overall"):
        text += f" on {failure['slice']}"
    details = []
    if isinstance(failure.get("value"), (int, float)):
        details.append(f"got {failure['value']:.4g}")
    if isinstance(failure.get("by_how_much"), (int, float)):
        details.append(f"missed by {failure['by_how_much']:.4g}")
    return text + (f" ({', '.join(details)})" if details else "")


def write_result(result: PushResult, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(asdict(result), indent=2) + "\n")
