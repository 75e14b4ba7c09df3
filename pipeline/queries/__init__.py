"""Read-only questions about what tunepipe recorded in MLflow, and how to show the answers.

This package owns three questions, asked only through `MlflowClient` (`store.Store`) so that they
work the same against the embedded SQLite store and a remote tracking server:

- `pipeline_runs(experiment)` (`runs`): one row per `tunepipe run` (when, status, spans, best trial
  score, eval accuracy, blessed, pushed version or why not, which steps came from kfp's cache);
- `trials(run)` (`trials`): the tuner trials behind a pipeline run, best first;
- `lineage(target)` (`lineage`, `lineage_targets`): from the source data through every step,
  artifact and the best trial to a pushed model version, as nodes and edges.

What it reads is the schema `pipeline.tracking` (step runs), `pipeline.trial_tracking` (trial runs)
and `pipeline.registry` (model versions) write, every name of it from `pipeline.tags`; `records`
reads it back. A step that kfp's cache answered is only a record of reused outputs
(`tunepipe.cached=true`); the run that produced those outputs is found by their content digest, so
lineage and trials see through the cache to the run that did the work.

Renderers for the terminal (rich tables and a tree: `render_terminal`) and for other tools (`dot`,
`mermaid`, a self-contained `html` page, `json`: `render_tools`). MLflow and rich are imported only
inside the functions that use them, so importing this package is cheap.
"""
from __future__ import annotations

from pipeline.queries.lineage import Edge, LineageGraph, Node, lineage
from pipeline.queries.records import inputs_of, outputs_of
from pipeline.queries.render_terminal import lineage_tree, runs_table, trials_table
from pipeline.queries.render_tools import MERMAID_SCRIPT, RENDERERS, to_dot, to_html, to_json, to_mermaid
from pipeline.queries.runs import RunRow, pipeline_runs
from pipeline.queries.store import Store
from pipeline.queries.trials import TrialRow, TrialSearch, find_run, trials

__all__ = [
    "MERMAID_SCRIPT", "RENDERERS", "Edge", "LineageGraph", "Node", "RunRow", "Store", "TrialRow", "TrialSearch",
    "find_run", "inputs_of", "lineage", "lineage_tree", "outputs_of", "pipeline_runs", "runs_table", "to_dot",
    "to_html", "to_json", "to_mermaid", "trials", "trials_table",
]
