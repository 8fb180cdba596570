"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against the real stack that
`alignlab up` starts: embedded Redis, the recorder, a worker and `streamlit run`.

A researcher's path: launch a tiny run from the Launch page, watch it finish on the Runs page, read Compare, judge
one pair blind on Samples. Screenshots go to the test's directory, or to $ALIGNLAB_SCREENSHOTS (the README's
`docs/screenshots/` are made that way)."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from db.models import Judgement, Run
from tests.test_cli_up import ROOT, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
RUN_TIMEOUT_MS = 480_000


@pytest.fixture
def stack(tiny_model_dir, tmp_path):
    """`alignlab up` on a free port, in its own ALIGNLAB_HOME (tiny model copied in), stopped with SIGTERM."""
    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ALIGNLAB_HOME"] = str(home)
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - closed below; a file, not a pipe, so it never blocks
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "up", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the dashboard did not come up in 120 s"
        time.sleep(0.5)
    yield {"url": url, "home": home, "db": f"sqlite:///{home / 'alignlab.db'}", "log": tmp_path / "up.log"}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    log.close()


def wait_for_run(page, timeout=60_000):
    """Streamlit's own wait: connected, script not running, no skeleton left."""
    from playwright.sync_api import expect

    page.wait_for_timeout(200)
    page.locator("[data-testid='stApp'][data-test-connection-state='CONNECTED']").wait_for(
        state="attached", timeout=timeout
    )
    page.locator("[data-testid='stApp'][data-test-script-state='notRunning']").wait_for(
        state="attached", timeout=timeout
    )
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0, timeout=timeout)


def navigate(page, name):
    page.get_by_test_id("stSidebarNav").get_by_role("link", name=name).click()
    wait_for_run(page)


def test_launch_watch_compare_and_judge_in_a_real_browser(stack, tmp_path):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install -y chromium chromium-driver"
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("ALIGNLAB_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(stack["url"], timeout=60_000)
        wait_for_run(page)
        expect(page.get_by_text("No runs yet")).to_be_visible(timeout=60_000)

        # Launch: the tiny-ci preset, a name of our own, then the Launch button of the form
        navigate(page, "Launch")
        page.get_by_test_id("stSelectbox").filter(has_text="Preset").click()
        page.get_by_role("option", name="tiny-ci").click()
        wait_for_run(page)
        name = page.get_by_test_id("stTextInput").filter(has_text="name").first.locator("input")
        name.fill("browser-run")
        page.get_by_test_id("stFormSubmitButton").filter(has_text="Launch").locator("button").click()
        wait_for_run(page)

        # Runs: we land on the run's page; its live fragment refreshes until the run succeeds
        expect(page).to_have_url(f"{stack['url']}/?run=1", timeout=60_000)
        expect(page.get_by_text("Run 1 · browser-run · succeeded")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        wait_for_run(page)
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(shots / "run.png"), full_page=True, animations="disabled")
        page.get_by_test_id("stButton").filter(has_text="all runs").locator("button").click()
        wait_for_run(page)
        page.screenshot(path=str(shots / "runs.png"), full_page=True, animations="disabled")

        navigate(page, "Compare")
        expect(page.get_by_text("Did SFT before DPO help?")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("GO", exact=False).first).to_be_visible()
        page.screenshot(path=str(shots / "compare.png"), full_page=True, animations="disabled")

        navigate(page, "Samples")
        expect(page.get_by_text("Reference (SFT data)")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(shots / "samples.png"), full_page=True, animations="disabled")
        page.get_by_role("tab", name="Blind A/B").click()
        page.get_by_test_id("stTextInput").filter(has_text="Reviewer").locator("input").fill("browser")
        page.get_by_test_id("stTextInput").filter(has_text="Reviewer").locator("input").press("Enter")
        wait_for_run(page)
        page.get_by_test_id("stRadio").filter(has_text="Which is better?").get_by_text("B", exact=True).click()
        wait_for_run(page)
        page.get_by_test_id("stButton").filter(has_text="Record judgement").locator("button").click()
        wait_for_run(page)
        page.get_by_role("tab", name="Blind A/B").click()
        expect(page.get_by_text("Win rates from judgements")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(shots / "blind.png"), full_page=True, animations="disabled")
        browser.close()

    engine = create_engine(stack["db"])
    with engine.connect() as connection:
        run = connection.execute(select(Run.name, Run.status)).one()
        judgement = connection.execute(select(Judgement.reviewer, Judgement.method_b, Judgement.winner)).one()
    engine.dispose()
    assert tuple(run) == ("browser-run", "succeeded")
    assert judgement.reviewer == "browser" and judgement.winner == judgement.method_b  # "B" is the right one
    assert {p.name for p in shots.glob("*.png")} >= {"runs.png", "run.png", "compare.png", "samples.png", "blind.png"}
