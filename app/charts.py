"""Charts shared by the pages: one colour per method, everywhere, and the training curves of one or more runs."""

from __future__ import annotations

import altair as alt
import pandas as pd

from pipeline.core.configs import METHOD_LABELS
from pipeline.core.registry import plan, stage

# one colour per method, far apart (the two DPO variants especially), in METHODS order
METHOD_COLOURS = dict(zip(METHOD_LABELS.values(), ("#7f7f7f", "#2ca02c", "#d62728", "#1f77b4"), strict=True))
CURVE_METRICS = ["loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"]
LEGEND = alt.Legend(orient="bottom", labelLimit=0, title=None)


def method_colour(field: str = "method") -> alt.Color:
    return alt.Color(
        f"{field}:N",
        scale=alt.Scale(domain=list(METHOD_COLOURS), range=list(METHOD_COLOURS.values())),
        legend=LEGEND,
    )


def curve_rows(curves: list[dict], smoothing: float = 0.0) -> pd.DataFrame:
    """Metric rows {node, name, step, value[, run]} as charted: each training node labelled by the method it trains
    and each panel by its stage and metric ("DPO · loss"), so SFT and DPO never share an axis; with `smoothing`
    in [0, 1) an exponential moving average of each curve (TensorBoard's), the raw value kept beside it."""
    frame = pd.DataFrame(curves)
    if frame.empty:
        return frame
    nodes = {n.name: n for n in plan()}
    frame["method"] = [METHOD_LABELS.get(nodes[n].makes, n) if n in nodes else n for n in frame["node"]]
    frame["panel"] = [
        f"{stage(nodes[n].stage).title if n in nodes else n} · {name}"
        for n, name in zip(frame["node"], frame["name"], strict=True)
    ]
    keys = [k for k in ("run", "node", "name") if k in frame]
    frame = frame.sort_values([*keys, "step"])
    frame["smoothed"] = frame.groupby(keys)["value"].transform(
        lambda v: v.ewm(alpha=1.0 - smoothing, adjust=False).mean()
    )
    return frame


def training_curves(frame: pd.DataFrame, smoothing: float = 0.0, colour: str = "method") -> alt.FacetChart:
    """One panel per (stage, metric) with its own y axis; lines coloured by method (or by run, when overlaying
    runs); with smoothing, the raw curve faint behind the smoothed one."""
    colours = method_colour() if colour == "method" else alt.Color(f"{colour}:N", legend=LEGEND)
    base = alt.Chart(frame).encode(
        x=alt.X("step:Q", title="optimizer step"),
        color=colours,
        detail="node:N",
        tooltip=list(dict.fromkeys([colour, "method", "step", "value", "smoothed"])),
    )
    if colour != "method":  # runs by colour, each run's methods by dash
        base = base.encode(strokeDash=alt.StrokeDash("method:N", legend=LEGEND))
    line = base.mark_line().encode(y=alt.Y("smoothed:Q", title=None))
    layers = line if smoothing <= 0 else alt.layer(base.mark_line(opacity=0.25).encode(y="value:Q"), line)
    return (
        layers.properties(height=200, width=320)
        .facet(facet=alt.Facet("panel:N", title=None), columns=2)
        .resolve_scale(y="independent")
    )
