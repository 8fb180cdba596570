"""The dashboard as served: Streamlit's app (`main.py`, the router and its login gate) behind one HTTP gate.

The login runs inside the script, but two of Streamlit's HTTP endpoints are answered before any script runs: file
uploads (`/_stcore/upload_file/<session>/<file>`: a session that never logged in could fill the server's memory)
and the metrics (`/_stcore/metrics`: session and cache facts). Off loopback, an upload is accepted only for a
session that logged in, and the metrics are not served at all. `alignlab up` and the dashboard image run this file.
"""

import re

import streamlit as st
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from app.auth import on_loopback, session_logged_in

UPLOAD = re.compile(r"/_stcore/upload_file/([^/]+)/")
METRICS = re.compile(r"/_stcore/metrics/?$")


class LoginGate:
    """ASGI middleware: refuses, off loopback, uploads of sessions that did not log in, and the metrics endpoint."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not on_loopback():
            refusal = refused(scope["path"], scope.get("method", "GET"))
            if refusal is not None:
                await PlainTextResponse(refusal, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def refused(path: str, method: str) -> str | None:
    """Why a request off loopback is refused before it reaches Streamlit, or None to let it through."""
    if METRICS.search(path):
        return "metrics are not served off loopback"
    upload = UPLOAD.search(path)
    if upload and method != "OPTIONS" and not session_logged_in(upload.group(1)):
        return "log in first: uploads are accepted only from a logged-in session"
    return None


app = st.App("main.py", middleware=[Middleware(LoginGate)])
