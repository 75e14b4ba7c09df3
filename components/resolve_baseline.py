"""The resolve-baseline step: which model is in production now, the baseline a candidate is
evaluated against (and, when retraining, warm-started from).

The model in production is the one the model registry says (its `production` alias, looked up by
the pipeline and handed in as `registered`) when that directory is really there, else the newest
integer version in the serving directory, else none: the first run. This step is never cached:
its answer changes whenever something is pushed.

Output (a `baseline` artifact): `baseline.json`, {path, version, source}, all null on a first run.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("tunepipe.resolve-baseline")

BASELINE_FILE = "baseline.json"
REGISTRY, SERVING_DIR = "registry", "serving_dir"  # where a baseline was found


@dataclass(frozen=True)
class Baseline:
    path: str
    version: int | None
    source: str  # REGISTRY or SERVING_DIR

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def serving_versions(serving_dir: str | os.PathLike[str], model_name: str) -> list[int]:
    """The integer versions in `<serving_dir>/<model_name>/`, oldest first: what TF Serving would load."""
    root = Path(serving_dir, model_name)
    if not root.is_dir():
        return []
    return sorted(int(entry.name) for entry in root.iterdir() if entry.is_dir() and entry.name.isdigit())


def run(serving_dir: str | os.PathLike[str], model_name: str, out: str | os.PathLike[str],
        registered: Baseline | None = None) -> Baseline | None:
    """Find the model in production and describe it in `out`/baseline.json; None on the first run."""
    baseline = resolve(serving_dir, model_name, registered)
    Path(out).mkdir(parents=True, exist_ok=True)
    described = baseline.to_json() if baseline else {"path": None, "version": None, "source": None}
    Path(out, BASELINE_FILE).write_text(json.dumps(described, indent=2) + "\n")
    return baseline


def resolve(serving_dir: str | os.PathLike[str], model_name: str, registered: Baseline | None = None
            ) -> Baseline | None:
    """The registry's production version when its directory exists, else the newest served version."""
    if registered is not None:
        if Path(registered.path).is_dir():
            return registered
        log.warning("the production alias of %s points at %s, which is not there; using the serving directory",
                    model_name, registered.path)
    versions = serving_versions(serving_dir, model_name)
    if not versions:
        return None
    return Baseline(str(Path(serving_dir, model_name, str(versions[-1]))), versions[-1], SERVING_DIR)


def read(baseline: str | os.PathLike[str]) -> str | None:
    """The served model directory a `baseline` artifact names, or None on a first run."""
    return json.loads(Path(baseline, BASELINE_FILE).read_text())["path"]
