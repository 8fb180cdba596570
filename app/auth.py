"""The dashboard's door: open on localhost, a login whenever it listens anywhere else.

Off loopback the dashboard can queue jobs on a GPU worker, so it requires either Streamlit's OIDC login (an
`[auth]` section in .streamlit/secrets.toml) or a shared password (`app_password` in secrets.toml, or the
ALIGNLAB_DASHBOARD_PASSWORD environment variable). Without either it refuses to show anything.
"""

from __future__ import annotations

import hmac
import os
from urllib.parse import urlsplit

import streamlit as st

from workers.queues import LOOPBACK_HOSTS

PASSWORD_ENV = "ALIGNLAB_DASHBOARD_PASSWORD"
# the page (last URL path segment) and query parameters a visitor asked for before logging in
REQUESTED_KEY = "requested_before_login"


def on_loopback() -> bool:
    return (st.get_option("server.address") or "") in LOOPBACK_HOSTS


def _secret(name: str) -> str | None:
    try:
        return st.secrets.get(name)
    except FileNotFoundError:  # no secrets.toml at all
        return None


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except FileNotFoundError:
        return False


def _check_password(expected: str) -> None:
    given = st.session_state.pop("login_password", "")
    st.session_state["authenticated"] = hmac.compare_digest(given.encode(), expected.encode())
    st.session_state["login_failed"] = not st.session_state["authenticated"]


def _remember_requested_page() -> None:
    """Keep the deep link the visitor came by: the login's own reruns run without st.navigation, so Streamlit
    forgets the page and would land on the default one after the password."""
    if REQUESTED_KEY not in st.session_state:
        path = urlsplit(st.context.url or "").path.rstrip("/")
        st.session_state[REQUESTED_KEY] = (path.rpartition("/")[2], st.query_params.to_dict())


def requested_page() -> tuple[str, dict[str, str]] | None:
    """(URL path, query parameters) asked for before the login, once; None when there was no login."""
    return st.session_state.pop(REQUESTED_KEY, None)


def require_login() -> None:
    """Stop the script unless the visitor may see the dashboard."""
    if on_loopback() or st.session_state.get("authenticated"):
        return
    _remember_requested_page()
    if _oidc_configured():
        if st.user.is_logged_in:
            return
        st.title("alignlab")
        st.button("Log in", on_click=st.login, key="oidc_login")
        st.stop()
    expected = os.environ.get(PASSWORD_ENV) or _secret("app_password")
    st.title("alignlab")
    if not expected:
        st.error(
            f"This dashboard listens on {st.get_option('server.address') or 'every interface'}, not localhost, and "
            f"no login is configured. Set {PASSWORD_ENV} (or app_password in .streamlit/secrets.toml), configure "
            "[auth] for OIDC, or bind it to 127.0.0.1 and reach it through an SSH tunnel."
        )
        st.stop()
    st.text_input("Password", type="password", key="login_password", on_change=_check_password, args=(expected,))
    if st.session_state.get("login_failed"):
        st.error("Wrong password.")
    st.stop()
