"""Workers: every worker on the queue's Redis, what it has and runs, and the ones that went silent (live)."""

import pandas as pd
import streamlit as st

from app.text import plain
from workers.fleet import LOST_AFTER_S, fleet_table, supervised_table
from workers.queues import connect

REFRESH_S = 2

st.title("Workers")
st.caption(
    f"From RQ's worker registry and the facts each worker publishes with its heartbeat. A worker silent for more "
    f"than {LOST_AFTER_S} s is lost; the job it was running is failed by the reconciler and can be resumed."
)


@st.fragment(run_every=REFRESH_S)
def fleet_view() -> None:
    rows = fleet_table(connect())
    if not rows:
        st.info("No worker has reported in the last day. Start one with `python -m workers` or `alignlab up`.")
        return
    states = pd.Series([r["state"] for r in rows]).value_counts()
    st.text(f"{len(rows)} workers: " + ", ".join(f"{n} {state}" for state, n in states.items()))
    for row in rows:
        if row["state"] == "lost":
            st.error(
                f"Lost: {plain(row['worker'])} on {plain(row['host'])}, last heartbeat {plain(row['last heartbeat'])}. "
                f"Job: {plain(row['job'])}"
            )
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="workers_table")
    supervised = supervised_table(connect())
    if supervised:
        st.text("Processes of `alignlab up` (a process that exits is restarted with backoff):")
        st.dataframe(pd.DataFrame(supervised), hide_index=True, key="supervised_table")


fleet_view()
