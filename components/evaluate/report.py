"""What a person reads of an evaluation: the Markdown report the KFP UI shows, and the few lines
the terminal prints."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.evaluate.blessing import BASELINE, CANDIDATE, describe
from components.evaluate.metrics import OVERALL_ORDER, PER_CLASS

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


def report(blessing: dict[str, Any], metrics: dict[str, Any], matrix: dict[str, Any]) -> str:
    """The Markdown report: verdict, thresholds, candidate vs baseline, per class, per slice, confusion matrix."""
    overall = metrics["overall"]
    candidate, baseline, change = overall[CANDIDATE], overall[BASELINE], overall["change"] or {}
    compared = baseline is not None
    lines = [f"# Evaluation: {'BLESSED' if blessing['blessed'] else 'NOT BLESSED'}", "",
             f"{metrics['example_count']} examples of the `{metrics['split']}` split. Candidate "
             f"`{blessing['candidate']}`; baseline "
             + (f"`{blessing['baseline']}`." if blessing["baseline"] else "none (first run)."), ""]
    if blessing["failures"]:
        lines += ["## Failed thresholds", ""] + [f"- {describe(f)}" for f in blessing["failures"]] + [""]
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
                     for name in OVERALL_ORDER if name in candidate])
    lines += [f"## Per class ({'candidate / baseline' if compared else 'candidate'})", ""]
    lines += _table(["class", "examples", *PER_CLASS],
                    [[name, str(metrics["class_counts"].get(name, 0))]
                     + [_format(candidate.get(metric, {}).get(name))
                        + (" / " + _format(baseline.get(metric, {}).get(name)) if compared else "")
                        for metric in PER_CLASS]
                     for name in metrics["label_vocabulary"]])
    for column, values in metrics["slices"].items():
        lines += [f"## By `{column}`", ""]
        rows = []
        for value, by_model in values.items():
            mine, theirs, diff = by_model[CANDIDATE], by_model[BASELINE] or {}, by_model["change"] or {}
            rows.append([value, _format(mine.get("example_count")), _format(mine.get("accuracy"))]
                        + ([_format(theirs.get("accuracy")), _format(diff.get("accuracy"), signed=True)]
                           if compared else [])
                        + [_format(mine.get("loss")), _format(mine.get("macro_auc"))])
        if not rows:
            lines += [f"No example has a `{column}` value.", ""]
            continue
        lines += _table([column, "examples", "accuracy"] + (["baseline accuracy", "change"] if compared else [])
                        + ["loss", "macro_auc"], rows)
    lines += ["## Confusion matrix (candidate; rows actual, columns predicted)", ""]
    lines += _table(["actual \\ predicted", *matrix["categories"]],
                    [[name, *(str(count) for count in row)]
                     for name, row in zip(matrix["categories"], matrix["matrix"])])
    return "\n".join(lines)


def summary_lines(result: EvaluateResult) -> list[str]:
    """A few short lines for the terminal."""
    metrics, base = result.metrics, result.baseline_metrics
    line = (f"evaluated {result.example_count} examples ({result.split} split): "
            f"accuracy {_format(metrics.get('accuracy'))}")
    if base is not None and metrics.get("accuracy") is not None and base.get("accuracy") is not None:
        line += f" vs baseline {base['accuracy']:.4f} ({metrics['accuracy'] - base['accuracy']:+.4f})"
    line += f", macro AUC {_format(metrics.get('macro_auc'))}"
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
