"""The lineage graph for other tools: Graphviz `dot`, `mermaid`, a self-contained `html` page, `json`.

`RENDERERS` maps each `tunepipe lineage --format` to its renderer. Each draws a node as its kind,
label and summary lines, marks the steps reused from kfp's cache and the target, and labels the
edges; the page adds a table of every node's facts, readable with no network at all.
"""
from __future__ import annotations

import html as html_lib
import json

from pipeline.queries.lineage import LineageGraph

_DOT_SHAPES = {"source": "cylinder", "step": "box", "artifact": "note", "trial": "ellipse", "model": "doubleoctagon"}


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(graph: LineageGraph) -> str:
    lines = ['digraph "lineage" {', f'  label="{_dot_text("lineage of " + graph.target)}";', "  labelloc=t;",
             "  rankdir=LR;", '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for node in graph.ordered():
        label = "\\n".join(_dot_text(line) for line in [f"{node.kind}: {node.label}", *node.summary])
        style = ["filled"]
        color = "lightblue" if node.target else "lightgrey" if node.cached else "white"
        if node.cached:
            style.append("dashed")
        lines.append(f'  "{_dot_text(node.id)}" [label="{label}", shape={_DOT_SHAPES[node.kind]}, '
                     f'style="{",".join(style)}", fillcolor="{color}"];')
    for edge in graph.edges:
        label = f' [label="{_dot_text(edge.label)}"]' if edge.label else ""
        lines.append(f'  "{_dot_text(edge.source)}" -> "{_dot_text(edge.target)}"{label};')
    lines.append("}")
    return "\n".join(lines) + "\n"


_MERMAID_SHAPES = {"source": ('[("', '")]'), "step": ('["', '"]'), "artifact": ('[/"', '"/]'),
                   "trial": ('(["', '"])'), "model": ('{{"', '"}}')}


def _mermaid_text(text: str) -> str:
    # Mermaid labels take HTML entities; quotes and angle brackets would end or open markup.
    return (text.replace("&", "&amp;").replace('"', "#quot;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("[", "&#91;").replace("]", "&#93;"))


def to_mermaid(graph: LineageGraph) -> str:
    ids = {node.id: f"n{index}" for index, node in enumerate(graph.ordered())}
    lines = ["flowchart LR"]
    for node in graph.ordered():
        opening, closing = _MERMAID_SHAPES[node.kind]
        label = "<br/>".join(_mermaid_text(line) for line in [f"{node.kind}: {node.label}", *node.summary])
        lines.append(f"  {ids[node.id]}{opening}{label}{closing}")
    for edge in graph.edges:
        arrow = f"-->|{_mermaid_text(edge.label)}|" if edge.label else "-->"
        lines.append(f"  {ids[edge.source]} {arrow} {ids[edge.target]}")
    lines += ["  classDef cached stroke-dasharray: 5 5,fill:#eee;", "  classDef target fill:#d6ecff,stroke:#1f6feb;"]
    cached = [ids[node.id] for node in graph.ordered() if node.cached]
    targets = [ids[node.id] for node in graph.ordered() if node.target]
    if cached:
        lines.append(f"  class {','.join(cached)} cached;")
    if targets:
        lines.append(f"  class {','.join(targets)} target;")
    return "\n".join(lines) + "\n"


MERMAID_SCRIPT = "https://cdn.jsdelivr.net/npm/mermaid@11/dist/mermaid.esm.min.mjs"


def to_html(graph: LineageGraph) -> str:
    """One self-contained page: the graph (drawn by mermaid.js when the page can load it; its source
    text otherwise) and a table of every node, readable with no network at all."""
    escape = html_lib.escape
    rows = []
    for node in graph.ordered():
        facts = "".join(f"<tr><th>{escape(key)}</th><td>{escape(value)}</td></tr>" for key, value in node.facts.items())
        sources = ", ".join(escape(graph.nodes[edge.source].label + (f" ({edge.label})" if edge.label else ""))
                            for edge in graph.upstream(node.id)) or "-"
        classes = " ".join(name for name, on in (("cached", node.cached), ("target", node.target)) if on)
        rows.append(f'<tr class="{classes}" id="{escape(node.id)}"><td>{escape(node.kind)}</td>'
                    f"<td><b>{escape(node.label)}</b>{' <i>(reused from cache)</i>' if node.cached else ''}"
                    f"{' <i>(target)</i>' if node.target else ''}</td><td>{sources}</td>"
                    f'<td><table class="facts">{facts}</table></td></tr>')
    title = f"tunepipe lineage of {graph.target}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table.nodes {{ border-collapse: collapse; width: 100%; }}
table.nodes > tbody > tr > td, table.nodes > thead > tr > th {{ border: 1px solid #ccc; padding: 4px 8px;
  vertical-align: top; text-align: left; }}
table.facts th {{ font-weight: normal; color: #666; text-align: left; padding-right: 1em; white-space: nowrap; }}
table.facts td {{ font-family: ui-monospace, monospace; font-size: 90%; word-break: break-all; }}
tr.cached {{ background: #f4f4f4; }}
tr.target {{ background: #e8f3ff; }}
pre.mermaid {{ background: #fafafa; border: 1px solid #eee; padding: 1em; overflow: auto; }}
</style>
</head>
<body>
<h1>{escape(title)}</h1>
<p>Tracking store: <code>{escape(graph.tracking_uri)}</code>{
    f" &middot; pipeline run <code>{escape(graph.pipeline_run_id)}</code>" if graph.pipeline_run_id else ""}</p>
<h2>Graph</h2>
<pre class="mermaid">
{escape(to_mermaid(graph))}</pre>
<h2>Nodes</h2>
<table class="nodes">
<thead><tr><th>kind</th><th>node</th><th>from</th><th>facts</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<script type="module">
import mermaid from "{MERMAID_SCRIPT}";
mermaid.initialize({{ startOnLoad: true, securityLevel: "strict" }});
</script>
</body>
</html>
"""


def to_json(graph: LineageGraph) -> str:
    return json.dumps(graph.to_json(), indent=2) + "\n"


RENDERERS = {"dot": to_dot, "mermaid": to_mermaid, "html": to_html, "json": to_json}
