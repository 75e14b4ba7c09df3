"""What runs inside a pipeline task: from KFP artifacts and parameters to `components.<step>.run`.

The kfp components in `pipeline.dag` are a few lines each and call the functions here, which
rebuild the typed config, open the step's lineage run, call the plain component, and describe the
outputs in the artifacts' metadata (what the KFP UI and the CLI summary show).

A user error in a step ends the task with one line on stderr, written also to the file named by
`TUNEPIPE_ERROR_FILE` so that `tunepipe run` can repeat it, and exit code 1, never a traceback.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from pipeline.errors import TunepipeError

ERROR_FILE_ENV = "TUNEPIPE_ERROR_FILE"


def _quiet_libraries() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py", "matplotlib", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def user_errors(step: str) -> Iterator[None]:
    """Turn a TunepipeError into one line and exit code 1."""
    try:
        yield
    except TunepipeError as error:
        print(f"tunepipe: error: {step}: {error}", file=sys.stderr, flush=True)
        error_file = os.environ.get(ERROR_FILE_ENV)
        if error_file:
            with open(error_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, "message": str(error)}) + "\n")
        raise SystemExit(1) from None


def _artifact_digest(path: str) -> str:
    from components import artifacts

    with open(os.path.join(path, artifacts.MANIFEST)) as handle:
        return json.load(handle)["digest"]


def _log_metrics(metrics: Any, values: dict[str, float]) -> None:
    """KFP shows a Metrics artifact's metadata; the file holds the same numbers, and its existence is
    what lets kfp.local's cache accept the artifact as present."""
    for name, value in values.items():
        metrics.log_metric(name, value)
    os.makedirs(os.path.dirname(metrics.path), exist_ok=True)
    with open(metrics.path, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2)


def ingest(source: str, label: str, data: dict[str, Any], beam: dict[str, Any], examples: Any, metrics: Any) -> None:
    """The ingest task: `components.ingest.run` into the `examples` artifact."""
    _quiet_libraries()
    with user_errors("ingest"):
        from components import ingest as ingest_step
        from pipeline import config, lineage

        data_config = config.section(config.DataConfig, {**data, "source": source, "label": label}, "data parameter")
        beam_config = config.section(config.BeamConfig, beam, "beam parameter")
        with lineage.step_run("ingest", {"source": source, "label": label, "data": data, "beam": beam},
                              inputs={}) as record:
            result = ingest_step.run(data_config, beam_config, examples.path)
            flat_counts = {**{k: v for k, v in result.counts.items() if k != "splits"},
                           **{f"rows_{split}": n for split, n in result.counts["splits"].items()}}
            examples.metadata.update({"digest": result.digest, "label": label, **flat_counts})
            _log_metrics(metrics, flat_counts)
            record.output("examples", examples.uri, result.digest)
            record.metrics(flat_counts)


def preprocess(examples: Any, options: dict[str, Any], beam: dict[str, Any], transform: Any) -> None:
    """The preprocess task: `components.preprocess.run` over the train split into `transform`."""
    _quiet_libraries()
    with user_errors("preprocess"):
        from components import preprocess as preprocess_step
        from pipeline import config, lineage

        preprocess_config = config.section(config.PreprocessConfig, options, "preprocess parameter")
        beam_config = config.section(config.BeamConfig, beam, "beam parameter")
        inputs = {"examples": (examples.uri, _artifact_digest(examples.path))}
        with lineage.step_run("preprocess", {"preprocess": options, "beam": beam}, inputs=inputs) as record:
            result = preprocess_step.run(examples.path, transform.path, preprocess_config, beam_config)
            facts = {"features": len(result.transform.features), "classes": len(result.transform.label_vocabulary),
                     "train_rows": result.transform.train_rows}
            transform.metadata.update({"digest": result.digest, **facts})
            record.output("transform", transform.uri, result.digest)
            record.metrics(facts)
