"""What Compare and Samples show of the judge stage: win-rate matrices with intervals, the judge's position bias,
its agreement with the reviewers, the items where they disagree, and the judge's verdicts on one prompt.

Everything is read from the store (`db.queries`); the agreement statistics come from `pipeline.core.judging`.
Text goes out as text (dataframes, `st.text`), never as Markdown.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd
import streamlit as st

from db import queries
from pipeline.core.configs import METHOD_LABELS
from pipeline.core.intervals import interval_text
from pipeline.core.judging import agreement


def _figure_text(stat: dict[str, Any] | None) -> str:
    if stat is None or stat["value"] is None:
        return "—"
    return f"{stat['value']:.3f} {interval_text(stat['ci_low'], stat['ci_high'], stat['n'])}"


def _by_comparison(figures: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, dict]]:
    grouped: dict[tuple[str, str, str], dict[str, dict]] = defaultdict(dict)
    for row in figures:
        grouped[(row["judge"], row["method_a"], row["method_b"])][row["statistic"]] = row
    return grouped


def win_rate_matrix(grouped: dict[tuple[str, str, str], dict[str, dict]], judge: str, statistic: str) -> pd.DataFrame:
    """Rows: method a; columns: method b; cell: a's win rate over b with its interval and n."""
    cells: dict[str, dict[str, str]] = defaultdict(dict)
    for (name, a, b), stats in grouped.items():
        if name == judge and statistic in stats:
            cells[METHOD_LABELS[a]][METHOD_LABELS[b]] = _figure_text(stats[statistic])
    return pd.DataFrame(cells).T.fillna("")


def comparison_table(grouped: dict[tuple[str, str, str], dict[str, dict]], judge: str) -> pd.DataFrame:
    rows = []
    for (name, a, b), stats in grouped.items():
        if name != judge:
            continue
        row = {"comparison": f"{METHOD_LABELS[a]} vs {METHOD_LABELS[b]}"}
        if "reward_difference" in stats:
            row["reward a − b (95% CI)"] = _figure_text(stats["reward_difference"])
            row["win rate by score (95% CI)"] = _figure_text(stats.get("win_rate"))
        else:
            counts = {k: int(stats[k]["value"]) for k in ("a", "b", "tie", "unparsed") if k in stats}
            row.update(
                {
                    "win rate (95% CI)": _figure_text(stats.get("win_rate")),
                    "length-controlled (95% CI)": _figure_text(stats.get("lc_win_rate")),
                    "a wins": counts.get("a"),
                    "b wins": counts.get("b"),
                    "ties": counts.get("tie"),
                    "unparsed": counts.get("unparsed"),
                    "position bias (95% CI)": _figure_text(stats.get("position_bias")),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def agreement_rows(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per judge and comparison: percent agreement and Cohen's kappa with the reviewers, with intervals and n."""
    grouped: dict[tuple[str, str, str], list[tuple[str, str]]] = defaultdict(list)
    for item in items:
        key = (item["judge"], item["method_a"], item["method_b"])
        side = {item["method_a"]: "a", item["method_b"]: "b", "tie": "tie"}
        grouped[key].append((side[item["judge_says"]], side[item["reviewer_says"]]))
    rows = []
    for (judge, a, b), pairs in grouped.items():
        stats = agreement(pairs)
        low, high = stats["agreement_ci"]
        kappa_low, kappa_high = stats["kappa_ci"]
        rows.append(
            {
                "judge": judge,
                "comparison": f"{METHOD_LABELS[a]} vs {METHOD_LABELS[b]}",
                "n": stats["n"],
                "agreement": None if stats["agreement"] is None else round(stats["agreement"], 3),
                "agreement 95% CI": interval_text(low, high, stats["n"]),
                "Cohen's kappa": None if stats["kappa"] is None else round(stats["kappa"], 3),
                "kappa 95% CI": interval_text(kappa_low, kappa_high, stats["n"])
                if stats["kappa"] is not None
                else "undefined (one label only)",
            }
        )
    return rows


def _said(method_or_tie: str) -> str:
    return METHOD_LABELS.get(method_or_tie, method_or_tie)


def compare_section(run_id: int) -> None:
    """The judge's results of one run on Compare (nothing when the run has no judge stage)."""
    figures = queries.judge_figures(run_id)
    if not figures:
        return
    grouped = _by_comparison(figures)
    st.subheader("Judged comparisons")
    for judge in dict.fromkeys(name for name, _, _ in grouped):
        st.text(f"Judge: {judge}")
        st.dataframe(comparison_table(grouped, judge), hide_index=True, key=f"judge_table_{run_id}_{judge}")
        raw = win_rate_matrix(grouped, judge, "win_rate")
        lc = win_rate_matrix(grouped, judge, "lc_win_rate")
        if not lc.empty:
            st.caption(
                "Win rate of the row's method over the column's, ties counted half, with a 95% bootstrap CI over "
                "prompts. Every pair was judged in both orders; a method wins only when both orders chose it. "
                "Length-controlled: the win rate the judge would give at zero length difference (AlpacaEval 2's "
                "logistic regression on the length difference). Position bias: how often both orders chose the "
                "same slot, i.e. the verdict followed the position."
            )
            left, right = st.columns(2)
            left.text("Win rate")
            left.dataframe(raw, key=f"judge_raw_{run_id}_{judge}")
            right.text("Length-controlled win rate")
            right.dataframe(lc, key=f"judge_lc_{run_id}_{judge}")
    items = queries.judge_beside_people(run_id)
    if not items:
        st.caption("Agreement with people: no item was judged both by the judge and on the Samples page's blind A/B.")
        return
    st.subheader("The judge against the reviewers (blind A/B on the Samples page)")
    st.dataframe(pd.DataFrame(agreement_rows(items)), hide_index=True, key=f"judge_agreement_{run_id}")
    disagreeing = [i for i in items if i["judge_says"] != i["reviewer_says"]]
    st.text(f"Items where they disagree: {len(disagreeing)} of {len(items)}")
    if disagreeing:
        st.dataframe(
            pd.DataFrame(
                {
                    "prompt": i["prompt"],
                    "a": _said(i["method_a"]),
                    "output a": i["output_a"],
                    "b": _said(i["method_b"]),
                    "output b": i["output_b"],
                    "judge says": _said(i["judge_says"]),
                    "reviewer": i["reviewer"],
                    "reviewer says": _said(i["reviewer_says"]),
                }
                for i in disagreeing
            ),
            hide_index=True,
            key=f"judge_disagree_{run_id}",
        )


def _probability(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def verdict_rows(verdicts: list[dict[str, Any]]) -> pd.DataFrame:
    """One prompt's judged pairs: the judge's verdict, and its probability for a in each order (local judges)."""
    rows = []
    for v in verdicts:
        pair = f"{METHOD_LABELS[v['method_a']]} vs {METHOD_LABELS[v['method_b']]}"
        if v["outcome"] is None:
            rows.append(
                {"pair": pair, "judge": v["judge"], "verdict": f"scores {v['score_a']:.3f} vs {v['score_b']:.3f}"}
            )
            continue
        verdict = {"a": METHOD_LABELS[v["method_a"]], "b": METHOD_LABELS[v["method_b"]]}.get(v["outcome"], v["outcome"])
        if v.get("identical"):
            verdict = "tie: identical answers (not sent to the judge)"
        rows.append(
            {
                "pair": pair,
                "judge": v["judge"],
                "verdict": verdict,
                "P(a better), a shown first": _probability(v["p_a_first"]),
                "P(a better), a shown second": _probability(v["p_a_second"]),
                "answers (endpoint)": " / ".join(v["answers"]) if v["answers"] else "",
            }
        )
    return pd.DataFrame(rows)
