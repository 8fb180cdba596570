"""The run's DAG as a Graphviz diagram, each node coloured by its stage status."""

from __future__ import annotations

from pipeline.core.registry import drawn_edges, plan

STATUS_COLOURS = {
    "queued": "#e9ecef",
    "running": "#ffd166",
    "succeeded": "#95d5b2",
    "cached": "#b7e4c7",
    "failed": "#f28482",
    "cancelled": "#adb5bd",
}


def dag_dot(statuses: dict[str, str]) -> str:
    """DOT source of the DAG; nodes this run does not include are drawn dashed."""
    lines = ["digraph dag {", "rankdir=LR;", 'node [shape=box, style="rounded,filled", fontname="sans-serif"];']
    for node in plan():
        status = statuses.get(node.name)
        if status is None:
            lines.append(f'"{node.name}" [label="{node.name}\\nnot in this run", style="rounded,dashed"];')
        else:
            colour = STATUS_COLOURS.get(status, "#ffffff")
            lines.append(f'"{node.name}" [label="{node.name}\\n{status}", fillcolor="{colour}"];')
    lines.extend(f'"{a}" -> "{b}";' for a, b in drawn_edges())
    lines.append("}")
    return "\n".join(lines)
