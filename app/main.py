"""The dashboard's router and its one door: the login gate, then st.navigation over the views.

The views live in `app/views/`, not in a `pages/` folder: Streamlit serves every file of a `pages/` folder beside
the main script as a page of its own, past this script and so past the gate. Every URL therefore runs this script,
and every page and every action (a button's callback runs inside a rerun of this script) passes `require_login`.
"""

import streamlit as st

from app.auth import requested_page, require_login

VIEWS = (  # (file under app/, title, URL path)
    ("views/runs.py", "Runs", "runs"),
    ("views/launch.py", "Launch", "launch"),
    ("views/data.py", "Data", "data"),
    ("views/compare.py", "Compare", "compare"),
    ("views/samples.py", "Samples", "samples"),
    ("views/workers.py", "Workers", "workers"),
)

st.set_page_config(page_title="alignlab", layout="wide")
require_login()
asked_before_login = requested_page()  # taken in the first run after the login, whichever page that run shows
pages = [st.Page(path, title=title, url_path=url) for path, title, url in VIEWS]


def home() -> None:
    """The root URL opens the first view under its own address (/ -> /runs, /?run=3 -> /runs?run=3): Streamlit
    serves its default page only at the root, so a view that is the default would have no URL of its own. After a
    login, the page the visitor asked for (/samples, /runs?run=3): the login's reruns land here, not there."""
    path, query = asked_before_login or ("", st.query_params.to_dict())
    target = next((page for page in pages if page.url_path == path), pages[0])
    st.switch_page(target, query_params=query)


st.navigation([st.Page(home, title="alignlab", url_path="home", default=True, visibility="hidden"), *pages]).run()
