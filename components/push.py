"""The push step: a blessed model into the serving directory, atomically.

Serving layout (TF Serving's): `<serving_dir>/<model_name>/<version>/saved_model.pb`, with
increasing integer versions. A push copies the model into a hidden sibling directory on the same
filesystem and renames it to its version number only when the copy is complete: TF Serving loads
only integer-named directories, so a push killed halfway leaves nothing it would load, and the next
push clears the leftover. An existing version is never overwritten.

The pipeline tells the model registry about every push (`pipeline.registry`): a version whose
source is the pushed directory, and the `production` alias moved to it. Which model is in
production is `components.resolve_baseline`'s question.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from components import artifacts
from components.errors import TunepipeError
from components.evaluate.blessing import reason as blessing_reason
from components.resolve_baseline import serving_versions
from components.serving import SAVED_MODEL, SAVED_MODEL_ENTRIES

log = logging.getLogger("tunepipe.push")

_DIGEST_FILE = "tunepipe_model_digest.txt"


@dataclass(frozen=True)
class PushResult:
    pushed: bool
    reason: str
    version: int | None = None
    path: str | None = None
    forced: bool = False
    digest: str | None = None  # the pushed model's content digest
    registry_version: str | None = None  # filled in by whoever registers the version


@contextlib.contextmanager
def locked(serving_dir: str | os.PathLike[str], model_name: str) -> Iterator[None]:
    """One push at a time per model, so two pushes cannot take the same version number, and the
    registry is told of a version before anyone else looks at the two together."""
    root = Path(serving_dir, model_name)
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        artifacts.sync_directory(root.parent)  # the model's directory on the disk, as its versions will be
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
    for name in SAVED_MODEL_ENTRIES:
        source = model / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        elif source.is_file():
            shutil.copy2(source, target / name)
    (target / _DIGEST_FILE).write_text(digest + "\n")
    # The copy, its files and directories, must be on disk before the rename makes it visible.
    for path in target.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            artifacts.sync_directory(path)
    artifacts.sync_directory(target)


def served_digest(version_dir: str | os.PathLike[str]) -> str | None:
    path = Path(version_dir, _DIGEST_FILE)
    return path.read_text().strip() if path.exists() else None


def run(model: str | os.PathLike[str], blessing: dict[str, Any], serving_dir: str | os.PathLike[str],
        model_name: str, force: bool = False, register: Callable[[PushResult], str] | None = None) -> PushResult:
    """Push `model` to `<serving_dir>/<model_name>/<next version>/` if `blessing` says so (or `force`).

    `register` tells the model registry of the new version (its return value: the registry's
    version number), still holding the lock, once the version's copy and rename are synced to the
    disk; if either fails, the version is taken back out of the serving directory, so that nothing
    is served that the registry does not know."""
    model = Path(model)
    manifest = artifacts.read_manifest(model, artifacts.MODEL)
    if not (model / SAVED_MODEL).is_file():
        raise TunepipeError(f"{model}: the model artifact has no saved_model.pb to push")
    blessed = bool(blessing.get("blessed"))
    if not blessed and not force:
        return PushResult(False, "not blessed: " + blessing_reason(blessing))
    root = Path(serving_dir, model_name)
    with locked(serving_dir, model_name):
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
        reason = "forced by --force-push although not blessed" if forced else "blessed"
        result = PushResult(True, reason, version, str(final), forced, digest=manifest["digest"])
        synced = False
        try:
            artifacts.sync_directory(root)  # the rename on the disk too, before the registry hears of it
            synced = True
            if register is not None:
                result = replace(result, registry_version=register(result))
        except BaseException:
            _withdraw(final, root, version, "the registry could not be told of it" if synced
                      else "its rename could not be synced to the disk")
            raise
    log.info("push: %s version %d to %s (%s)", model_name, version, final, reason)
    return result


def _withdraw(final: Path, root: Path, version: int, why: str) -> None:
    """Take a version back out of serving: renamed away first (TF Serving stops seeing it at once),
    then removed."""
    hidden = root / f".{version}.partial-{uuid.uuid4().hex[:8]}"
    os.rename(final, hidden)
    with contextlib.suppress(OSError):  # best effort: the disk may be what failed
        artifacts.sync_directory(root)
    shutil.rmtree(hidden, ignore_errors=True)
    log.warning("push: version %d taken back out of %s: %s", version, root, why)


def write_result(result: PushResult, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(json.dumps(asdict(result), indent=2) + "\n")
