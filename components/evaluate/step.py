"""The evaluate step: TensorFlow Model Analysis on Beam over the held-out split, the candidate model
side by side with the baseline (the model in production), and the blessing that decides the push.

The held-out split is `test` when the examples have one, else `eval`. Rows whose label the
candidate never saw in training cannot be scored and are left out (counted and reported). The
policy (thresholds, defaults, failures) is `components.evaluate.blessing`; TFMA's configuration and
output `components.evaluate.tfma_runner`; the report `components.evaluate.report`.

TFMA computes its metrics over batches of examples that share their slice values rather than one
example at a time (`components.evaluate.batched_metrics`): the same metrics, keys and thresholds,
18,000-71,000 rows/s on the DirectRunner (100k-1M rows) instead of 330-660 (bench/evaluate/RESULTS.md).

The baseline is a `model` artifact or a SavedModel as push copied it to the serving directory
(no manifest, no label vocabulary there). Both are scored against the candidate's label indices, so a
baseline whose classes differ from the candidate's (a different vocabulary, or for a served copy a
different number of classes) cannot be compared: it is left out, change thresholds are skipped, and
the blessing's notes say why.

Output layout (an `evaluation` artifact):

    tfma/                 TFMA's own output: metrics, plots, validations, eval_config.json
    blessing.json         {blessed, failures: [{metric, class, slice, threshold, value, ...,
                          by_how_much}], baseline, thresholds, skipped_thresholds, defaulted, notes}
    metrics.json          overall and per-slice metrics of the candidate and the baseline, plain numbers
    confusion_matrix.json {categories, matrix}: rows are the actual class, columns the predicted one
                          (a KFP ClassificationMetrics artifact takes it as it is)
    report.md             what a person reads in the KFP UI
    _manifest.json        written last
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from components import artifacts
from components.beam_run import BeamConfig
from components.errors import ConfigError, DataError
from components.evaluate import blessing as policy
from components.evaluate import models, tfma_runner
from components.evaluate import progress as progress_registry
from components.evaluate.blessing import BASELINE, CANDIDATE, describe, plain
from components.evaluate.config import EvaluationConfig
from components.evaluate.metrics import ordered
from components.evaluate.progress import RowProgress
from components.evaluate.report import REPORT, report
from components.examples import held_out_split, split_files
from components.problem import REGRESSION
from components.schema import NUMERIC, Schema

log = logging.getLogger("tunepipe.evaluate")

BLESSING = policy.FILE  # defined beside the policy, so that reading a verdict imports no Beam
METRICS = "metrics.json"
CONFUSION_MATRIX = "confusion_matrix.json"


@dataclass(frozen=True)
class EvaluateResult:
    path: str
    blessed: bool
    split: str
    example_count: int
    metrics: dict[str, Any]  # the candidate's overall metrics (per-class ones as {class: value})
    baseline: str | None
    baseline_metrics: dict[str, Any] | None
    failures: list[dict[str, Any]]
    thresholds: list[dict[str, Any]]  # applied
    skipped_thresholds: list[dict[str, Any]]  # configured or default, not applied, with the reason
    defaulted: bool
    notes: list[str] = field(default_factory=list)
    digest: str = ""
    problem: str = "multiclass"  # binary, multiclass or regression


def _check_slices(config: EvaluationConfig, schema: Schema, examples: str | os.PathLike[str]) -> None:
    unknown = [name for name in config.slices if name not in schema.names]
    if unknown:
        raise ConfigError(f"evaluation.slices: {', '.join(repr(name) for name in unknown)} "
                          f"{'is not a column' if len(unknown) == 1 else 'are not columns'} of {examples} "
                          f"(columns: {', '.join(schema.names)})")


@dataclass(frozen=True)
class _LabelCounts:
    per_class: dict[str, int]  # rows per class of the candidate's vocabulary
    unknown: int  # rows whose label the candidate does not know

    @property
    def known(self) -> int:
        return sum(self.per_class.values())

    @property
    def majority_share(self) -> float:
        return max(self.per_class.values()) / self.known if self.known else 0.0


def _label_counts(files: list[str], label: str, vocabulary: tuple[str, ...]) -> _LabelCounts:
    """One pass over the label column only: class counts for the default threshold and the report."""
    counts = np.zeros(len(vocabulary), dtype=np.int64)
    unknown = 0
    value_set = pa.array(vocabulary, pa.string())
    for path in files:
        with FileSystems.open(path) as handle:
            column = pq.read_table(handle, columns=[label]).column(label)
        indices = pc.index_in(pc.cast(column, pa.string()), value_set=value_set)
        known = indices.drop_null().to_numpy()
        counts += np.bincount(known, minlength=len(vocabulary))
        unknown += len(indices) - len(known)
    return _LabelCounts({name: int(count) for name, count in zip(vocabulary, counts)}, unknown)


@dataclass(frozen=True)
class _RegressionLabel:
    count: int
    mean: float
    variance: float  # population variance: the MSE of always predicting the mean


def _regression_label(files: list[str], label: str) -> _RegressionLabel:
    """One pass over the label column only: what the default threshold and r2 compare with."""
    count, total, squares = 0, 0.0, 0.0
    for path in files:
        with FileSystems.open(path) as handle:
            values = pq.read_table(handle, columns=[label]).column(label).to_numpy().astype(np.float64)
        values = values[~np.isnan(values)]
        count, total, squares = count + values.size, total + values.sum(), squares + np.square(values).sum()
    mean = total / count if count else 0.0
    return _RegressionLabel(count, mean, max(squares / count - mean * mean, 0.0) if count else 0.0)


def run(examples: str | os.PathLike[str], model: str | os.PathLike[str], out: str | os.PathLike[str],
        config: EvaluationConfig, beam_config: BeamConfig, baseline: str | os.PathLike[str] | None = None,
        progress: Callable[[int], None] | None = None, *, per_example: bool = False) -> EvaluateResult:
    """Evaluate `model` (and `baseline`, the model in production, if any) on the held-out split of
    `examples` with TFMA and write the `evaluation` artifact, with the blessing, at `out`.

    `progress`, if given, is called with the running count of rows evaluated: every ~2 s or
    100,000 rows while TFMA runs (when its feed runs in this process, as on the DirectRunner), and
    once at the end with the number of rows evaluated. `per_example` runs TFMA's own per-example
    metrics, as before they were batched (the same outputs but where TFMA 0.52 is wrong,
    `components.evaluate.batched_combiners`; for the benchmark and the tests that compare both)."""
    out = Path(out)
    artifacts.read_manifest(examples, artifacts.EXAMPLES)
    schema = Schema.read(examples)
    candidate = models.candidate(model)
    baseline_model = models.baseline(baseline) if baseline is not None else None
    kind = candidate.kind
    _check_slices(config, schema, examples)
    split = held_out_split(examples)
    files = split_files(examples, split)
    if not files:
        raise DataError(f"{examples}: the {split} split has no data files")
    vocabulary = candidate.label_vocabulary
    notes: list[str] = []
    failures: list[dict[str, Any]] = []
    if baseline_model is not None:
        reason = models.incomparable(candidate, baseline_model)
        if reason:
            failures.append(policy.incomparable(reason))
            notes.append(reason)
            log.warning("evaluate: %s", reason)
            baseline_model = None
        elif models.other_classes(candidate, baseline_model):
            notes.append(f"the baseline {baseline_model.path} scores other classes "
                         f"({', '.join(baseline_model.label_vocabulary)}) than the candidate "
                         f"({', '.join(vocabulary)}): it cannot be compared, so it is left out")
            log.warning("evaluate: %s", notes[-1])
            baseline_model = None

    label = schema.label.name
    if kind == REGRESSION:
        target = _regression_label(files, label)
        if target.count == 0:
            raise DataError(f"{examples}: the {split} split has no rows with a label")
        counts, reference, evaluated_rows = None, float(np.sqrt(target.variance)), target.count
    else:
        target = None
        counts = _label_counts(files, label, vocabulary)
        if counts.known == 0:
            raise DataError(f"{examples}: the {split} split has no rows with a label the model knows "
                            f"({', '.join(vocabulary)})")
        if counts.unknown:
            notes.append(f"{counts.unknown} row(s) of the {split} split have a label the model was not trained on; "
                         f"they are left out")
            log.warning("evaluate: %s", notes[-1])
        reference, evaluated_rows = counts.majority_share, counts.known
    applied, skipped, threshold_notes = policy.thresholds(config, kind, reference, baseline_model is not None)
    notes += threshold_notes
    tfma_config = tfma_runner.eval_config(kind, label, vocabulary or (), candidate.positive_index, config.slices,
                                          applied, baseline_model is not None, config.thresholds_on_slices)

    # Features for the model, slice columns for slicing, the raw label for slicing by class.
    kinds = schema.kinds()
    columns = {name: kinds[name] for name in
               dict.fromkeys([column.name for column in schema.features] + list(config.slices) + [label])}
    if kind == REGRESSION:
        columns[label] = NUMERIC
    log.info("evaluate: TFMA over the %s split (%d rows) for %s%s on %s", split, evaluated_rows, candidate.path,
             f" against the baseline {baseline_model.path}" if baseline_model else " (no baseline)",
             beam_config.runner)
    started = time.monotonic()
    with artifacts.building(out) as partial:
        tfma_dir = str(partial / tfma_runner.TFMA_DIR)
        rows = RowProgress(progress or (lambda count: None))
        token = progress_registry.register(rows)
        try:
            tfma_runner.run_tfma(files, columns, label, vocabulary, candidate.path,
                                 baseline_model.path if baseline_model else None, tfma_config, tfma_dir, beam_config,
                                 per_example=per_example, progress_token=token)
        finally:
            progress_registry.unregister(token)
        sliced = tfma_runner.read_metrics(tfma_dir, kind, vocabulary or ())
        tfma_runner.derive(sliced, kind, target.variance if target else None)
        matrices = tfma_runner.confusion_matrices(tfma_dir, vocabulary) if vocabulary else {}
        if vocabulary:
            tfma_runner.blank_undefined_auc(sliced, matrices, vocabulary)
        validation_ok, tfma_failed = tfma_runner.tfma_failures(tfma_dir, kind, applied, sliced, vocabulary or ())
        own_failed, own_notes = policy.own_failures(applied, sliced, kind, config.slices, config.thresholds_on_slices)
        failures += tfma_failed + own_failed
        notes += own_notes
        overall = sliced.get((), {})
        candidate_metrics = ordered(overall.get(CANDIDATE, {}), kind)
        baseline_metrics = ordered(overall[BASELINE], kind) if BASELINE in overall else None
        example_count = int(candidate_metrics.get("example_count") or 0)
        if rows.rows == 0:  # the feed ran in another process: only TFMA's count is known
            rows.rows = example_count
        rows.finish()
        blessed = bool(validation_ok) and not failures

        blessing = {
            "blessed": blessed,
            "failures": failures,
            "problem": kind,
            "candidate": candidate.path,
            "baseline": baseline_model.path if baseline_model else None,
            "split": split,
            "example_count": example_count,
            "thresholds": [threshold.to_json() for threshold in applied],
            "skipped_thresholds": [threshold.to_json() for threshold in skipped],
            "defaulted": any(threshold.source == "default" for threshold in applied + skipped),
            "notes": notes,
        }
        metrics_document = {
            "problem": kind,
            "split": split,
            "example_count": example_count,
            "overall": {CANDIDATE: candidate_metrics, BASELINE: baseline_metrics,
                        "change": ordered(overall["change"], kind) if "change" in overall else None},
            "slices": _per_slice(sliced, config.slices, kind),
        }
        if counts is not None:
            metrics_document.update(rows_left_out=counts.unknown, label_vocabulary=list(vocabulary),
                                    class_counts=counts.per_class)
        else:
            metrics_document.update(label_mean=target.mean, label_std=reference)
        matrix = {"categories": list(vocabulary or ()),
                  "matrix": matrices.get((), [[0] * len(vocabulary) for _ in vocabulary]) if vocabulary else []}
        _write_json(partial / BLESSING, blessing)
        _write_json(partial / METRICS, metrics_document)
        if vocabulary:
            _write_json(partial / CONFUSION_MATRIX, matrix)
        (partial / REPORT).write_text(report(blessing, metrics_document, matrix))
        manifest = artifacts.write_manifest(partial, artifacts.EVALUATION, "evaluate", blessed=blessed, split=split,
                                            example_count=example_count, candidate=candidate.path, problem=kind,
                                            baseline=blessing["baseline"], examples=str(examples))
    result = EvaluateResult(str(out), blessed, split, example_count, candidate_metrics, blessing["baseline"],
                            baseline_metrics, failures, blessing["thresholds"], blessing["skipped_thresholds"],
                            blessing["defaulted"], notes, manifest["digest"], kind)
    log.info("evaluate: %d examples in %.0fs; %s", example_count, time.monotonic() - started,
             "blessed" if blessed else "NOT blessed: " + "; ".join(describe(f) for f in failures))
    return result


def _per_slice(sliced: dict[tuple, dict[str, dict[str, Any]]], slices: tuple[str, ...], kind: str) -> dict[str, Any]:
    """column -> value -> {candidate, baseline, change}, values in a stable order."""
    document: dict[str, dict[str, Any]] = {column: {} for column in slices}
    for slice_key in sorted((key for key in sliced if key), key=lambda key: [(c, str(v)) for c, v in key]):
        if len(slice_key) != 1:
            continue
        column, value = slice_key[0]
        by_model = sliced[slice_key]
        document.setdefault(column, {})[str(plain(value))] = {
            CANDIDATE: ordered(by_model.get(CANDIDATE, {}), kind),
            BASELINE: ordered(by_model[BASELINE], kind) if BASELINE in by_model else None,
            "change": ordered(by_model["change"], kind) if "change" in by_model else None,
        }
    return document


def _write_json(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
