"""The dashboard's door: open on localhost, a login whenever it listens anywhere else.

Off loopback the dashboard can queue jobs on a GPU worker, so it requires either Streamlit's OIDC login (an
`[auth]` section in .streamlit/secrets.toml) or a shared password (`app_password` in secrets.toml, or the
ALIGNLAB_DASHBOARD_PASSWORD environment variable). Without either it refuses to show anything.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from urllib.parse import urlsplit

import streamlit as st

from app.text import plain
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


class LoginThrottle:
    """Wrong passwords per client address: after `FREE_ATTEMPTS` a client waits before its next attempt is even
    compared, 2 s after the first extra failure, doubling with each, at most `MAX_DELAY_S`; a right password clears
    it. Counted per address, not per session, so a new session (or socket) does not reset it."""

    FREE_ATTEMPTS = 3
    MAX_DELAY_S = 300.0

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (failures, time of the last one)

    def wait_s(self, client: str) -> float:
        """How long `client` must wait before its next attempt counts (0: it may try now)."""
        with self._lock:
            failures, last = self._failures.get(client, (0, 0.0))
        if failures < self.FREE_ATTEMPTS:
            return 0.0
        delay = min(2.0 ** (failures - self.FREE_ATTEMPTS + 1), self.MAX_DELAY_S)
        return max(0.0, last + delay - self._clock())

    def failed(self, client: str) -> None:
        with self._lock:
            failures, _ = self._failures.get(client, (0, 0.0))
            self._failures[client] = (failures + 1, self._clock())

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


THROTTLE = LoginThrottle()
# the Streamlit sessions that logged in: the dashboard's HTTP gate (app.server) lets only these upload files
_logged_in_sessions: set[str] = set()
_sessions_lock = threading.Lock()


def session_logged_in(session_id: str) -> bool:
    with _sessions_lock:
        return session_id in _logged_in_sessions


def _this_session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def _mark_logged_in() -> None:
    st.session_state["authenticated"] = True
    session_id = _this_session_id()
    if session_id is not None:
        with _sessions_lock:
            _logged_in_sessions.add(session_id)


def _client() -> str:
    """The client's address (behind a proxy, the proxy's: configure it to pass one client per address)."""
    address = st.context.ip_address
    return address if isinstance(address, str) and address else "unknown"


def _check_password(expected: str) -> None:
    given = st.session_state.pop("login_password", "")
    client = _client()
    wait = THROTTLE.wait_s(client)
    if wait > 0:  # not even compared: guessing costs time whatever the guess
        st.session_state["login_failed"] = f"Too many wrong passwords from {client}: try again in {wait:.0f} s."
        return
    if hmac.compare_digest(given.encode(), expected.encode()):
        THROTTLE.succeeded(client)
        st.session_state["login_failed"] = None
        _mark_logged_in()
    else:
        THROTTLE.failed(client)
        st.session_state["login_failed"] = "Wrong password."


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
            _mark_logged_in()
            return
        st.title("alignlab")
        st.button("Log in", on_click=st.login, key="oidc_login")
        st.stop()
    expected = os.environ.get(PASSWORD_ENV) or _secret("app_password")
    st.title("alignlab")
    if not expected:
        st.error(
            f"This dashboard listens on {plain(st.get_option('server.address') or 'every interface')}, not "
            "localhost, and "
            f"no login is configured. Set {PASSWORD_ENV} (or app_password in .streamlit/secrets.toml), configure "
            "[auth] for OIDC, or bind it to 127.0.0.1 and reach it through an SSH tunnel."
        )
        st.stop()
    st.text_input("Password", type="password", key="login_password", on_change=_check_password, args=(expected,))
    if st.session_state.get("login_failed"):
        st.error(plain(st.session_state["login_failed"]))
    st.stop()
