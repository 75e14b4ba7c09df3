"""What a person reads of an evaluation: the Markdown report the KFP UI shows, and the few lines
the terminal prints."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.evaluate.blessing import BASELINE, CANDIDATE, describe
from components.evaluate import metrics as metric_table
from components.evaluate.metrics import OVERALL_ORDER
from components.problem import REGRESSION

if TYPE_CHECKING:
    from components.evaluate.step import EvaluateResult

REPORT = "report.md"


def _format(value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], numbers: bool = True) -> list[str]:
    align = " ---: |" if numbers else " --- |"
    return (["| " + " | ".join(header) + " |", "| --- |" + align * (len(header) - 1)]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


# The headline metric of each kind: what a slice table and the terminal lead with.
HEADLINE = {"multiclass": "accuracy", "binary": "accuracy", REGRESSION: "rmse"}
_SPOKEN = {"macro_auc": "macro AUC", "roc_auc": "ROC AUC", "mae": "MAE"}
_SLICE_COLUMNS = {"multiclass": ("loss", "macro_auc"), "binary": ("loss", "roc_auc"), REGRESSION: ("mae", "r2")}


def report(blessing: dict[str, Any], metrics: dict[str, Any], matrix: dict[str, Any]) -> str:
    """The Markdown report: verdict, thresholds, candidate vs baseline, per class (a classifier), per
    slice, the confusion matrix (a classifier)."""
    kind = metrics.get("problem", "multiclass")
    overall = metrics["overall"]
    candidate, baseline, change = overall[CANDIDATE], overall[BASELINE], overall["change"] or {}
    compared = baseline is not None
    lines = [f"# Evaluation: {'BLESSED' if blessing['blessed'] else 'NOT BLESSED'}", "",
             f"A {kind} model; {metrics['example_count']} examples of the `{metrics['split']}` split. Candidate "
             f"`{blessing['candidate']}`; baseline "
             + (f"`{blessing['baseline']}`." if blessing["baseline"] else "none (first run)."), ""]
    if blessing["failures"]:
        lines += ["## Failed", ""] + [f"- {describe(f)}" for f in blessing["failures"]] + [""]
    lines += ["## Thresholds", ""]
    lines += _table(["metric", "threshold", "source", "applied"],
                    [[t["metric"], t["threshold"], t["source"], "yes"] for t in blessing["thresholds"]]
                    + [[t["metric"], t["threshold"], t["source"], f"no: {t['reason']}"]
                       for t in blessing["skipped_thresholds"]], numbers=False)
    if blessing["notes"]:
        lines += [f"- {note}" for note in blessing["notes"]] + [""]

    lines += ["## Overall", ""]
    lines += _table(["metric", "candidate"] + (["baseline", "change"] if compared else []),
                    [[name, _format(candidate.get(name))]
                     + ([_format(baseline.get(name)), _format(change.get(name), signed=True)] if compared else [])
                     for name in OVERALL_ORDER[kind] if name in candidate])
    if kind != REGRESSION:
        per_class = metric_table.per_class(kind)
        lines += [f"## Per class ({'candidate / baseline' if compared else 'candidate'})", ""]
        lines += _table(["class", "examples", *per_class],
                        [[name, str(metrics["class_counts"].get(name, 0))]
                         + [_format(candidate.get(metric, {}).get(name))
                            + (" / " + _format(baseline.get(metric, {}).get(name)) if compared else "")
                            for metric in per_class]
                         for name in metrics["label_vocabulary"]])
    headline, more = HEADLINE[kind], _SLICE_COLUMNS[kind]
    for column, values in metrics["slices"].items():
        lines += [f"## By `{column}`", ""]
        rows = []
        for value, by_model in values.items():
            mine, theirs, diff = by_model[CANDIDATE], by_model[BASELINE] or {}, by_model["change"] or {}
            rows.append([value, _format(mine.get("example_count")), _format(mine.get(headline))]
                        + ([_format(theirs.get(headline)), _format(diff.get(headline), signed=True)]
                           if compared else [])
                        + [_format(mine.get(name)) for name in more])
        if not rows:
            lines += [f"No example has a `{column}` value.", ""]
            continue
        lines += _table([column, "examples", headline] + ([f"baseline {headline}", "change"] if compared else [])
                        + list(more), rows)
    if kind != REGRESSION:
        lines += ["## Confusion matrix (candidate; rows actual, columns predicted)", ""]
        lines += _table(["actual \\ predicted", *matrix["categories"]],
                        [[name, *(str(count) for count in row)]
                         for name, row in zip(matrix["categories"], matrix["matrix"])])
    return "\n".join(lines)


def summary_lines(result: EvaluateResult) -> list[str]:
    """A few short lines for the terminal."""
    metrics, base = result.metrics, result.baseline_metrics
    headline = HEADLINE[result.problem]
    line = (f"evaluated {result.example_count} examples ({result.split} split): "
            f"{headline} {_format(metrics.get(headline))}")
    if base is not None and metrics.get(headline) is not None and base.get(headline) is not None:
        line += f" vs baseline {base[headline]:.4f} ({metrics[headline] - base[headline]:+.4f})"
    second = {"multiclass": "macro_auc", "binary": "roc_auc", REGRESSION: "mae"}[result.problem]
    line += f", {_SPOKEN.get(second, second)} {_format(metrics.get(second))}"
    lines = [line]
    applied = ", ".join(f"{t['metric']} {t['threshold']}{' (default)' if t['source'] == 'default' else ''}"
                        for t in result.thresholds)
    lines.append(f"thresholds: {applied or 'none'}")
    if result.skipped_thresholds:
        lines.append(f"skipped: {len(result.skipped_thresholds)} change threshold(s), no baseline model")
    if result.blessed:
        lines.append("BLESSED: every threshold holds")
    else:
        lines.append("NOT BLESSED: " + "; ".join(describe(failure) for failure in result.failures[:3])
                     + (f" (+{len(result.failures) - 3} more)" if len(result.failures) > 3 else ""))
    lines.append(f"report: {Path(result.path, REPORT)}")
    return lines
