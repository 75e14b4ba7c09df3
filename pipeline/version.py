"""The code version that steps record and that keys KFP's cache: the package version plus a digest
of the package's own source, so an edited component never reuses a result of the old code."""
from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path

_PACKAGES = ("components", "pipeline")


def package_version() -> str:
    try:
        return metadata.version("tunepipe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def code_version() -> str:
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{package_version()}+{digest.hexdigest()[:12]}"
