"""The dashboard's router: the login gate, then st.navigation over the pages."""

import streamlit as st

from app.auth import require_login

st.set_page_config(page_title="alignlab", layout="wide")
require_login()
pages = [
    st.Page("pages/runs.py", title="Runs", url_path="runs", default=True),
    st.Page("pages/launch.py", title="Launch", url_path="launch"),
    st.Page("pages/data.py", title="Data", url_path="data"),
    st.Page("pages/compare.py", title="Compare", url_path="compare"),
    st.Page("pages/samples.py", title="Samples", url_path="samples"),
]
st.navigation(pages).run()
