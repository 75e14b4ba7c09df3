"""The answers for the terminal: rich tables of runs and trials, and the lineage graph as a tree.

rich is imported inside each function, so that importing the queries does not load it.
"""
from __future__ import annotations

from pipeline import tags
from pipeline.queries.lineage import LineageGraph
from pipeline.queries.records import _format_time, _short
from pipeline.queries.runs import RunRow
from pipeline.queries.trials import TrialSearch


def _headline(row) -> str:
    return "-" if row.headline is None else f"{row.headline[0]} {row.headline[1]:.4f}"


def runs_table(rows: list[RunRow], title: str | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    show_experiment = len({row.experiment for row in rows}) > 1
    columns = ["started", "run", *(["experiment"] if show_experiment else []), "status", "spans", "best trial",
               "evaluation", "blessed", "pushed", "cached steps"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        best = "-" if row.best_score is None else f"{row.best_score:.4f}"
        if row.best_score is not None and row.objective:
            best += f" {row.objective}"
        if row.trials == 0:
            best = "tuning off"
        elif row.tuning == tags.REUSED:
            best += " (reused)"
        pushed = f"v{row.pushed_version}" if row.pushed_version else "no"
        if row.push_reason:
            pushed += f": {row.push_reason}" if row.pushed_version is None else f" ({row.push_reason})"
        spans = "-" if row.spans is None else ", ".join(row.spans) or "none"
        cached = ", ".join(row.cached_steps) or "-"
        cells = [_format_time(row.started), f"{row.name}\n{row.run_id}", *([row.experiment] if show_experiment else []),
                 row.status.lower(), spans, best, _headline(row),
                 {True: "yes", False: "no", None: "-"}[row.blessed], pushed, cached]
        table.add_row(*cells)
    return table


def trials_table(search: TrialSearch, title: str | None = None):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    names = sorted({name for row in search.rows for name in row.hyperparameters})
    for column in ["#", "trial", "status", search.objective or "score", "epochs", "time", *names]:
        table.add_column(column, overflow="fold")
    for rank, row in enumerate(search.rows, start=1):
        status = row.status if not row.error else f"{row.status}: {row.error}"
        table.add_row(str(rank), row.trial_id, status, "-" if row.score is None else f"{row.score:.4f}",
                      "-" if row.epochs is None else str(row.epochs),
                      "-" if row.duration_s is None else f"{row.duration_s:.1f} s",
                      *[_short(row.hyperparameters[name], 14) if name in row.hyperparameters else "" for name in names])
    return table


_KIND_MARK = {"source": "▣ data", "step": "▶ step", "artifact": "◆ artifact", "trial": "★ trial", "model": "⬢ model"}


def lineage_tree(graph: LineageGraph):
    """The graph for the terminal: every node, source first, with its facts and where it came from."""
    from rich.markup import escape
    from rich.tree import Tree

    tree = Tree(f"[bold]lineage of {escape(graph.target)}[/bold] ({escape(graph.tracking_uri)})")
    for node in graph.ordered():
        mark = " [cyan](reused from cache)[/cyan]" if node.cached else ""
        target = " [bold green]← target[/bold green]" if node.target else ""
        branch = tree.add(f"{_KIND_MARK[node.kind]} [bold]{escape(node.label)}[/bold]{mark}{target}")
        sources = [f"{graph.nodes[edge.source].label} ({edge.label})" if edge.label else graph.nodes[edge.source].label
                   for edge in graph.upstream(node.id)]
        if sources:
            branch.add("from: " + escape(", ".join(sources)))
        for key, value in node.facts.items():
            branch.add(f"[dim]{escape(key)}:[/dim] {escape(_short(value, 160))}")
    return tree
