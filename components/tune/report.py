"""The tuning report: one HTML page a person would rather look at than read, about what a search did.

Sections: the best score so far against the epochs spent; the score against each hyperparameter;
a parallel-coordinates view of every completed trial; Hyperband's brackets and rounds (the epochs
each trial trained, by bracket and round); the failed and invalid trials with their errors; and a
hyperparameter importance table.

Importance is ε² (epsilon squared), the correlation ratio η² adjusted for the number of groups: the
share of the variance of the completed trials' scores that lies between the groups of trials sharing
a value of a hyperparameter, less what that many groups would explain by chance (numbers are
grouped in quantile bins of at least two trials, at most five bins; a conditional hyperparameter is
measured over the trials where it is active). It is a one-at-a-time, main-effect measure, simpler
than fANOVA and blind to interactions: read it as "where the scores move", not as a decomposition
that adds up.

The plots are Plotly's, with plotly.js inlined once: the page renders offline (no CDN at view
time). The same page is the tuning artifact's `report.html` (a KFP HTML output) and what
`tunepipe trials RUN --format html` writes from the tracking store; both hand `render` plain rows.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any

REPORT = "report.html"
_BINS = 5


@dataclass(frozen=True)
class ReportTrial:
    trial_id: str
    status: str  # completed, failed, invalid, interrupted
    score: float | None
    hyperparameters: dict[str, Any]
    epochs: int | None = None
    bracket: int | None = None
    round: int | None = None
    max_epoch: int | None = None
    duration_s: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ReportSearch:
    title: str
    objective: str
    direction: str  # max or min
    trials: list[ReportTrial]
    # Each conditional hyperparameter's conditions, e.g. {"mlp.units_1": "mlp.num_layers in 2, 3"}.
    conditions: dict[str, str] = field(default_factory=dict)


def _better(score: float, than: float, direction: str) -> bool:
    return score > than if direction == "max" else score < than


def _completed(search: ReportSearch) -> list[ReportTrial]:
    return [trial for trial in search.trials if trial.status == "completed" and trial.score is not None
            and math.isfinite(trial.score)]


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)


def importance(search: ReportSearch) -> list[tuple[str, float, int]]:
    """(hyperparameter, ε², trials measured) for every hyperparameter that varies, most important first."""
    completed = _completed(search)
    names = sorted({name for trial in completed for name in trial.hyperparameters})
    found = []
    for name in names:
        pairs = [(trial.hyperparameters[name], trial.score) for trial in completed if name in trial.hyperparameters]
        values = [value for value, _ in pairs]
        if len(pairs) < 3 or len({str(value) for value in values}) < 2:
            continue
        bins = min(_BINS, len(pairs) // 2)
        if _numeric(values) and len(set(values)) > bins:
            ordered = sorted(values)
            edges = sorted({ordered[min(len(ordered) - 1, round(len(ordered) * index / bins))]
                            for index in range(1, bins)})
            groups = [sum(value >= edge for edge in edges) for value in values]
        else:
            groups = [str(value) for value in values]
        scores = [score for _, score in pairs]
        mean = sum(scores) / len(scores)
        total = sum((score - mean) ** 2 for score in scores)
        kinds = len(set(groups))
        if total == 0 or kinds >= len(scores) or kinds < 2:
            continue
        between = 0.0
        for group in set(groups):
            members = [score for score, member in zip(scores, groups) if member == group]
            between += len(members) * (sum(members) / len(members) - mean) ** 2
        within = (total - between) / (len(scores) - kinds)
        found.append((name, max(0.0, (between - (kinds - 1) * within) / total), len(pairs)))
    return sorted(found, key=lambda item: -item[1])


def _figures(search: ReportSearch) -> dict[str, Any]:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figures: dict[str, Any] = {}
    completed = _completed(search)
    ordered = sorted(search.trials, key=lambda trial: trial.trial_id)

    # The best score so far, against the epochs spent (trials in the order they ran).
    spent, best, xs, ys, hover = 0, None, [], [], []
    for trial in ordered:
        spent += trial.epochs or 0
        if trial in completed and (best is None or _better(trial.score, best, search.direction)):
            best = trial.score
        if best is not None:
            xs.append(spent)
            ys.append(best)
            hover.append(f"after trial {trial.trial_id}")
    progress = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line_shape="hv", text=hover, name="best"))
    progress.update_layout(xaxis_title="epochs spent", yaxis_title=f"best {search.objective} so far")
    figures["progress"] = progress

    # Only what varied: a fixed hyperparameter has nothing to show.
    names = sorted(name for name in {name for trial in completed for name in trial.hyperparameters}
                   if len({str(trial.hyperparameters.get(name)) for trial in completed
                           if name in trial.hyperparameters}) > 1)
    if names:
        columns = min(3, len(names))
        rows = math.ceil(len(names) / columns)
        grid = make_subplots(rows=rows, cols=columns, subplot_titles=names)
        for index, name in enumerate(names):
            active = [trial for trial in completed if name in trial.hyperparameters]
            grid.add_trace(go.Scatter(
                x=[str(trial.hyperparameters[name]) if not _numeric([trial.hyperparameters[name]])
                   else trial.hyperparameters[name] for trial in active],
                y=[trial.score for trial in active], mode="markers", name=name, showlegend=False,
                text=[f"trial {trial.trial_id}" for trial in active]), row=index // columns + 1,
                col=index % columns + 1)
        grid.update_layout(height=260 * rows, title_text=f"{search.objective} against each hyperparameter")
        figures["scores"] = grid

        dimensions = []
        for name in names:
            values = [trial.hyperparameters.get(name) for trial in completed]
            present = [value for value in values if value is not None]
            if _numeric(present) and present:
                filler = min(present) - (max(present) - min(present) or 1) * 0.1
                dimensions.append({"label": name, "values": [filler if value is None else value for value in values]})
            else:
                labels = sorted({str(value) for value in present}) + (["(inactive)"] if None in values else [])
                codes = {label: code for code, label in enumerate(labels)}
                dimensions.append({"label": name, "values": [codes["(inactive)" if v is None else str(v)]
                                                             for v in values],
                                   "tickvals": list(codes.values()), "ticktext": list(codes)})
        dimensions.append({"label": search.objective, "values": [trial.score for trial in completed]})
        parallel = go.Figure(go.Parcoords(line={"color": [trial.score for trial in completed],
                                                "colorscale": "Viridis", "showscale": True},
                                          dimensions=dimensions))
        parallel.update_layout(height=460)
        figures["parallel"] = parallel

    bracketed = [trial for trial in ordered if trial.bracket is not None]
    if bracketed:
        brackets = go.Figure()
        for bracket in sorted({trial.bracket for trial in bracketed}):
            members = [trial for trial in bracketed if trial.bracket == bracket]
            brackets.add_trace(go.Scatter(
                x=[trial.trial_id for trial in members], y=[trial.max_epoch for trial in members],
                mode="markers", marker={"size": [8 + 4 * (trial.round or 0) for trial in members]},
                name=f"bracket {bracket}",
                text=[f"round {trial.round}; {search.objective} "
                      f"{'-' if trial.score is None else f'{trial.score:.4f}'}" for trial in members]))
        brackets.update_layout(xaxis={"title": "trial", "type": "category",
                                      "categoryorder": "category ascending"},
                               yaxis_title="epochs the trial runs to",
                               title_text="Hyperband: brackets and rounds (larger: a later round)")
        figures["brackets"] = brackets
    return figures


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if cell is None else str(cell))}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render(search: ReportSearch) -> str:
    """The whole page, self-contained."""
    figures = _figures(search)
    plots, first = {}, True
    for name, figure in figures.items():
        plots[name] = figure.to_html(full_html=False, include_plotlyjs=first, div_id=f"plot-{name}",
                                     config={"displaylogo": False})
        first = False
    completed = _completed(search)
    best = None
    for trial in completed:
        if best is None or _better(trial.score, best.score, search.direction):
            best = trial
    failed = [trial for trial in search.trials if trial.status != "completed"]
    statuses = {status: sum(trial.status == status for trial in search.trials)
                for status in dict.fromkeys(trial.status for trial in search.trials)}
    summary = (f"{len(search.trials)} trials ({', '.join(f'{count} {status}' for status, count in statuses.items())})"
               + (f"; best {search.objective} {best.score:.4f} in trial {best.trial_id}" if best else ""))
    sections = [f"<h1>{html.escape(search.title)}</h1>", f"<p class='summary'>{html.escape(summary)}</p>"]
    if best:
        sections.append("<h2>Best trial</h2>" + _table(["hyperparameter", "value"],
                                                         [[name, value] for name, value in
                                                          sorted(best.hyperparameters.items())]))
    sections.append("<h2>Best score so far against epochs spent</h2>" + plots["progress"])
    if "scores" in plots:
        sections.append("<h2>Score against each hyperparameter</h2>" + plots["scores"])
        sections.append("<h2>All completed trials (parallel coordinates)</h2>" + plots["parallel"])
    if "brackets" in plots:
        sections.append("<h2>Hyperband brackets and rounds</h2>" + plots["brackets"])
    ranked = importance(search)
    sections.append("<h2>Hyperparameter importance (ε², main effects)</h2>" + (
        _table(["hyperparameter", "ε² (share of score variance between its values, adjusted)", "trials"],
               [[name, f"{value:.3f}", count] for name, value, count in ranked]) if ranked
        else "<p>Too few completed trials, or no hyperparameter varied.</p>"))
    if search.conditions:
        sections.append("<h2>Conditional hyperparameters</h2>" + _table(
            ["hyperparameter", "active when"], [[name, when] for name, when in sorted(search.conditions.items())]))
    sections.append("<h2>Failed and invalid trials</h2>" + (
        _table(["trial", "status", "error"], [[trial.trial_id, trial.status, trial.error] for trial in failed])
        if failed else "<p>None: every trial completed.</p>"))
    sections.append("<h2>Every trial</h2>" + _table(
        ["trial", "status", search.objective, "epochs", "bracket", "round", "seconds", "hyperparameters"],
        [[trial.trial_id, trial.status, "" if trial.score is None else f"{trial.score:.4f}", trial.epochs,
          trial.bracket, trial.round, "" if trial.duration_s is None else f"{trial.duration_s:.1f}",
          ", ".join(f"{name}={value}" for name, value in sorted(trial.hyperparameters.items()))]
         for trial in sorted(search.trials, key=lambda trial: trial.trial_id)]))
    style = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
             "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:90%}"
             "h2{margin-top:1.6em}.summary{font-size:110%}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(search.title)}"
            f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n")


def conditions_of(space: list) -> dict[str, str]:
    """Each conditional hyperparameter of a Keras Tuner space, and when it is active."""
    return {found.name: " and ".join(f"{condition.name} in {', '.join(map(str, condition.values))}"
                                     for condition in found.conditions)
            for found in space if found.conditions}
