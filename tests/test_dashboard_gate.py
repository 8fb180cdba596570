"""The dashboard's doors that open before any script runs: uploads and metrics are refused at the HTTP layer off
loopback until a session logged in, and wrong passwords cost a growing wait per client address."""

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from app.auth import LoginThrottle
from app.server import refused
from app.text import shown
from tests.ports import free_port
from tests.test_cli_up import ROOT

HOST = "127.0.0.2"  # loopback, but not an address that skips the login


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    port = free_port()
    env = {
        **os.environ,
        "ALIGNLAB_DASHBOARD_PASSWORD": "correct horse",
        "ALIGNLAB_HOME": str(tmp_path_factory.mktemp("h")),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app/server.py",
            "--server.address",
            HOST,
            "--server.port",
            str(port),
            "--server.headless",
            "true",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}/_stcore/health", timeout=5)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.2)
    yield base
    proc.terminate()
    proc.wait(30)


def status(url: str, method: str = "GET", body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        return urllib.request.urlopen(request, timeout=30).status
    except urllib.error.HTTPError as err:
        return err.code


def test_an_upload_before_login_is_refused_at_the_http_layer(dashboard):
    url = f"{dashboard}/_stcore/upload_file/some-session/some-file"
    assert status(url, "PUT", b"x" * 1024) == 403
    # a large body is not read at all: the gate answers and closes, so the client sees 403 or a reset mid-send
    try:
        assert status(url, "PUT", b"x" * (4 * 1024 * 1024)) == 403
    except urllib.error.URLError as exc:
        assert isinstance(exc.reason, ConnectionResetError | BrokenPipeError), exc
    assert status(f"{dashboard}/_stcore/metrics") == 403
    assert status(f"{dashboard}/_stcore/health") == 200  # the rest of Streamlit is served as before


def test_the_gate_lets_a_logged_in_sessions_upload_through(monkeypatch):
    from app import auth

    assert refused("/_stcore/upload_file/s1/f1", "PUT") is not None
    monkeypatch.setattr(auth, "_logged_in_sessions", {"s1"})
    assert refused("/_stcore/upload_file/s1/f1", "PUT") is None
    assert refused("/_stcore/upload_file/s2/f1", "PUT") is not None  # another session still not
    assert refused("/base/_stcore/metrics", "GET") is not None  # behind a base URL path too


def test_wrong_passwords_cost_a_growing_wait_per_client():
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(LoginThrottle.FREE_ATTEMPTS):
        assert throttle.wait_s("10.0.0.9") == 0
        throttle.failed("10.0.0.9")
    waits = []
    for _ in range(4):
        waits.append(throttle.wait_s("10.0.0.9"))
        now[0] += waits[-1]
        throttle.failed("10.0.0.9")
    assert waits == [2.0, 4.0, 8.0, 16.0]
    assert throttle.wait_s("10.0.0.10") == 0  # another client is not slowed
    for _ in range(40):
        throttle.failed("10.0.0.9")
    assert throttle.wait_s("10.0.0.9") == LoginThrottle.MAX_DELAY_S
    now[0] += LoginThrottle.MAX_DELAY_S
    throttle.succeeded("10.0.0.9")
    assert throttle.wait_s("10.0.0.9") == 0


def test_the_login_refuses_even_the_right_password_while_a_client_must_wait(filled, monkeypatch):
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    from app import auth

    monkeypatch.setattr(auth, "THROTTLE", LoginThrottle())
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    monkeypatch.setenv("ALIGNLAB_DASHBOARD_PASSWORD", "correct horse")
    try:
        at = AppTest.from_file("../app/main.py", default_timeout=60)
        at.user = {"is_logged_in": False}
        at.run()
        for attempt in range(LoginThrottle.FREE_ATTEMPTS + 1):
            at.text_input(key="login_password").set_value(f"wrong {attempt}").run()
        at.text_input(key="login_password").set_value("correct horse").run()
        assert any("Too many wrong passwords" in shown(e.value) for e in at.error)
        assert not at.dataframe  # still the login
    finally:
        config.set_option("server.address", before)
