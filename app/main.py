"""The dashboard's router: st.navigation over the pages, nothing else."""

import streamlit as st

st.set_page_config(page_title="alignlab", layout="wide")
pages = [
    st.Page("pages/runs.py", title="Runs", url_path="runs", default=True),
    st.Page("pages/launch.py", title="Launch", url_path="launch"),
    st.Page("pages/data.py", title="Data", url_path="data"),
    st.Page("pages/compare.py", title="Compare", url_path="compare"),
    st.Page("pages/samples.py", title="Samples", url_path="samples"),
]
st.navigation(pages).run()
