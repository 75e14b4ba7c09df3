"""The candidate is the model in production: nothing to evaluate, nothing to push.

On an unchanged rerun kfp's cache hands train's model back, and the model in production is the one
pushed from it: comparing it with itself could not change what is served. The evaluate step then
writes an evaluation that says so (not blessed: there is nothing to push), without running TFMA.
The candidate is recognised by its content digest, the one push wrote beside the served version.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from components import artifacts
from components.evaluate.blessing import FILE as BLESSING
from components.evaluate.report import REPORT


def served_as(model: str | os.PathLike[str], baseline: str | None) -> str | None:
    """The served version directory `baseline` when it holds the candidate `model` itself."""
    from components.push import served_digest

    if not baseline:
        return None
    digest = artifacts.read_manifest(model, artifacts.MODEL)["digest"]
    return baseline if served_digest(baseline) == digest else None


def reason(served: str) -> str:
    return f"the candidate is the model in production (version {Path(served).name}): not evaluated again"


def write(out: str | os.PathLike[str], model: str | os.PathLike[str], served: str) -> str:
    """The evaluation artifact of a candidate already in production, at `out`; its digest."""
    verdict = {"blessed": False, "unchanged": True, "baseline": served, "failures": [], "reason": reason(served)}
    with artifacts.building(out) as partial:
        (partial / BLESSING).write_text(json.dumps(verdict, indent=2) + "\n")
        (partial / REPORT).write_text(f"# Evaluation\n\n{reason(served).capitalize()}: "
                                      f"`{served}` is this model, so there is nothing to compare or push.\n")
        manifest = artifacts.write_manifest(partial, artifacts.EVALUATION, "evaluate", blessed=False, unchanged=True,
                                            candidate=str(model), baseline=served)
    return manifest["digest"]
