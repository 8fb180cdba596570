"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against the real stack that
`alignlab up` starts: embedded Redis, the recorder, a worker and `streamlit run`.

The stack listens off loopback (127.0.0.2, not one of the addresses that skip the login) with a password. Without
it, every page URL shows the login and nothing else, and no action can be reached; after it, every action works:
cancel, resume, retry, tags and notes on a run parked on a queue no worker serves, then a researcher's path:
launch a tiny run from the Launch page, watch it finish on the Runs page, read Compare, judge one pair blind on
Samples. Screenshots go to the test's directory, or to $ALIGNLAB_SCREENSHOTS (the README's
`docs/screenshots/` are made that way)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, select

from db.models import Judgement, Run
from tests.ports import free_port
from tests.test_cli_up import ROOT

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
HOST = "127.0.0.2"  # loopback range, so the test talks to nothing else; not a login-exempt address
PASSWORD = "correct horse battery staple"
PAGE_URLS = (
    "/",
    "/runs",
    "/runs?run=1",
    "/?run=1",
    "/launch",
    "/data",
    "/compare",
    "/samples",
    "/workers",
    "/nonexistent",
)


@pytest.fixture
def stack(tiny_model_dir, tmp_path):
    """`alignlab up` on a free port, in its own ALIGNLAB_HOME (tiny model copied in), stopped with SIGTERM."""
    home = tmp_path / "home"
    shutil.copytree(tiny_model_dir, home / "models" / tiny_model_dir.name)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ALIGNLAB_HOME"] = str(home)
    env["ALIGNLAB_DASHBOARD_PASSWORD"] = PASSWORD
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115 - closed below; a file, not a pipe, so it never blocks
    # the local worker serves gpu and cpu only: a run sent to gpu-80gb stays queued for the run actions
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "up", "--host", HOST, "--port", str(port), "--queues", "gpu,cpu"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{HOST}:{port}"
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
    parked = subprocess.run(
        [sys.executable, "-m", "workers.cli", "submit", "--preset", "tiny-ci", "--name", "parked"]
        + ["--execution.default_queue", "gpu-80gb", "--execution.queues", "{compare: gpu-80gb, make_pairs: gpu-80gb}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert parked.returncode == 0 and "run 1 submitted" in parked.stdout, parked.stderr
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


def button(page, label):
    return page.get_by_test_id("stButton").filter(has_text=re.compile(f"^{re.escape(label)}$")).locator("button")


def log_in(page, url):
    """A fresh session on `url`, or a reload of the page when None (a password login lasts one browser session):
    type the password, see the page."""
    if url is None:
        page.reload(timeout=60_000)
    else:
        page.goto(url, timeout=60_000)
    wait_for_run(page)
    field = page.get_by_test_id("stTextInput").filter(has_text="Password").locator("input")
    field.fill(PASSWORD)
    field.press("Enter")
    wait_for_run(page)


def confirm_cancel(page):
    button(page, "Cancel run").click()
    wait_for_run(page)
    button(page, "Yes, cancel the run").click()
    wait_for_run(page)


def name_field(page):
    return page.get_by_test_id("stTextInput").filter(has_text="name").first.locator("input")


def number_field(page, label):
    return page.get_by_test_id("stNumberInput").filter(has_text=label).locator("input")


def db_row(stack, *columns, where=None):
    engine = create_engine(stack["db"])
    with engine.connect() as connection:
        row = connection.execute(select(*columns).where(where)).one()
    engine.dispose()
    return row


def test_every_page_and_action_needs_the_login_then_launch_watch_compare_and_judge(stack, tmp_path):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: apt-get install -y chromium chromium-driver"
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("ALIGNLAB_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    url = stack["url"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})

        # Without the password: every URL is the login, and nothing of a page (its actions included) is there
        for path in PAGE_URLS:
            page.goto(url + path, timeout=60_000)
            wait_for_run(page)
            expect(page.get_by_test_id("stTextInput").filter(has_text="Password")).to_be_visible(timeout=60_000)
            for text in ("Launch a run", "parked", "Runs", "Compare", "Samples", "Check a file"):
                expect(page.get_by_text(text, exact=True)).to_have_count(0)
            expect(page.get_by_test_id("stButton")).to_have_count(0)  # cancel, resume, retry, launch, judge...
            expect(page.get_by_test_id("stSidebarNav")).to_have_count(0)
        field = page.get_by_test_id("stTextInput").filter(has_text="Password").locator("input")
        field.fill("wrong")
        field.press("Enter")
        wait_for_run(page)
        expect(page.get_by_text("Wrong password.")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stButton")).to_have_count(0)
        page.screenshot(path=str(shots / "login.png"), full_page=True, animations="disabled")
        assert db_row(stack, Run.status, Run.notes, where=Run.id == 1) == ("queued", "")  # nothing acted

        # With it: the actions on the parked run
        log_in(page, url + "/runs?run=1")  # the Runs page has an address of its own
        expect(page.get_by_text("parked", exact=False).first).to_be_visible(timeout=60_000)
        button(page, "Cancel run").click()
        wait_for_run(page)
        expect(page.get_by_text("Cancel run 1?", exact=False)).to_be_visible(timeout=60_000)  # asks first
        assert db_row(stack, Run.status, where=Run.id == 1) == ("queued",)
        button(page, "Yes, cancel the run").click()
        wait_for_run(page)
        expect(button(page, "Resume run")).to_be_visible(timeout=60_000)
        assert db_row(stack, Run.status, where=Run.id == 1) == ("cancelled",)
        button(page, "Resume run").click()
        wait_for_run(page)
        expect(page.get_by_text("re-enqueued", exact=False)).to_be_visible(timeout=60_000)
        assert db_row(stack, Run.status, where=Run.id == 1) == ("queued",)
        confirm_cancel(page)
        page.get_by_test_id("stButton").filter(has_text="what depends on it").locator("button").click()
        wait_for_run(page)
        expect(page.get_by_text("re-enqueued", exact=False)).to_be_visible(timeout=60_000)
        assert db_row(stack, Run.status, where=Run.id == 1) == ("queued",)
        page.get_by_test_id("stTextArea").filter(has_text="Notes").locator("textarea").fill("parked on purpose")
        page.get_by_test_id("stFormSubmitButton").filter(has_text="Save tags and notes").locator("button").click()
        wait_for_run(page)
        expect(page.get_by_text("Saved")).to_be_visible(timeout=60_000)
        assert db_row(stack, Run.notes, where=Run.id == 1) == ("parked on purpose",)
        confirm_cancel(page)  # leave the worker free for the run below

        # Launch: the tiny-ci preset, a name of our own, then Launch
        navigate(page, "Launch")
        page.get_by_test_id("stSelectbox").filter(has_text="Preset").click()
        page.get_by_role("option", name="tiny-ci").click()
        wait_for_run(page)
        name = name_field(page)
        name.fill("browser-run")
        name.press("Enter")
        wait_for_run(page)
        expect(page.get_by_test_id("stCode").filter(has_text="name: browser-run")).to_have_count(1)
        button(page, "Launch").click()
        wait_for_run(page)

        # Runs: we land on the run's page; its live fragment refreshes until the run succeeds, curves included
        expect(page).to_have_url(f"{url}/runs?run=2", timeout=60_000)
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible(timeout=RUN_TIMEOUT_MS)
        header = page.get_by_text(re.compile(r"^Run 2 · browser-run · ")).first.text_content()
        assert header.endswith("running"), f"the curves appeared only once the run had ended: {header}"
        expect(page.get_by_text("Run 2 · browser-run · succeeded")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        wait_for_run(page)
        expect(page.get_by_test_id("stVegaLiteChart").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(shots / "run.png"), full_page=True, animations="disabled")
        button(page, "← all runs").click()
        wait_for_run(page)
        page.screenshot(path=str(shots / "runs.png"), full_page=True, animations="disabled")
        table = page.get_by_test_id("stDataFrame").first.bounding_box()  # a click on the first row opens its run
        page.mouse.click(table["x"] + 200, table["y"] + 35 + 17)
        wait_for_run(page)
        expect(page).to_have_url(f"{url}/runs?run=2", timeout=60_000)
        expect(page.get_by_text("Run 2 · browser-run · succeeded")).to_be_visible(timeout=60_000)
        button(page, "← all runs").click()  # and back: the earlier click does not open the run again
        wait_for_run(page)
        expect(page.get_by_text("Click a row to open its run.")).to_be_visible(timeout=60_000)
        expect(page).to_have_url(f"{url}/runs", timeout=60_000)

        navigate(page, "Compare")
        expect(page.get_by_text("Did SFT before DPO help?")).to_be_visible(timeout=60_000)
        # tiny-ci has fewer than 20 held-out prompts: its intervals carry a label, never look like real ones
        label = re.compile(r"too few to trust|all \d+ equal|no estimate")
        expect(page.get_by_test_id("stVegaLiteChart").locator("svg text").filter(has_text=label).first).to_be_visible()
        expect(page.get_by_text("GO", exact=False).first).to_be_visible()
        page.screenshot(path=str(shots / "compare.png"), full_page=True, animations="disabled")

        navigate(page, "Samples")
        expect(page.get_by_text("Reference (SFT data)")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(shots / "samples.png"), full_page=True, animations="disabled")
        page.get_by_role("tab", name="Blind A/B").click()
        page.get_by_test_id("stTextInput").filter(has_text="Reviewer").locator("input").fill("browser")
        page.get_by_test_id("stTextInput").filter(has_text="Reviewer").locator("input").press("Enter")
        wait_for_run(page)
        expect(page.get_by_text("0 of ", exact=False).first).to_be_visible(timeout=60_000)
        page.get_by_test_id("stButton").filter(has_text="B is better").locator("button").click()  # label + key hint
        wait_for_run(page)
        page.get_by_role("tab", name="Blind A/B").click()
        expect(page.get_by_text("1 of ", exact=False).first).to_be_visible(timeout=60_000)
        page.get_by_role("tab", name="Blind A/B").click()
        expect(page.get_by_text("Win rates from judgements")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(shots / "blind.png"), full_page=True, animations="disabled")

        # A reload is a new session: the login again lands on the page asked for (not Runs), and the reviewer's
        # queue continues where it stopped
        log_in(page, None)
        expect(page).to_have_url(f"{url}/samples", timeout=60_000)
        expect(page.get_by_text("Reference (SFT data)")).to_be_visible(timeout=60_000)
        page.get_by_role("tab", name="Blind A/B").click()
        page.get_by_test_id("stTextInput").filter(has_text="Reviewer").locator("input").fill("browser")
        page.get_by_test_id("stTextInput").filter(has_text="Reviewer").locator("input").press("Enter")
        wait_for_run(page)
        page.get_by_role("tab", name="Blind A/B").click()
        expect(page.get_by_text("1 of ", exact=False).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("0 of ", exact=False)).to_have_count(0)

        # Launch from an earlier run and from a file: the fields, the preview and the export show that spec
        navigate(page, "Launch")
        page.get_by_test_id("stRadio").filter(has_text="Start from").get_by_text("earlier run", exact=True).click()
        wait_for_run(page)
        page.get_by_test_id("stSelectbox").filter(has_text="Run").first.click()
        page.get_by_role("option", name="2: browser-run (succeeded)").click()
        wait_for_run(page)
        assert name_field(page).input_value() == "browser-run"
        preview = yaml.safe_load(page.get_by_test_id("stCode").first.text_content())
        assert preview["name"] == "browser-run" and preview["stages"] == ["train_dpo", "evaluate", "compare"]
        page.get_by_test_id("stRadio").filter(has_text="Start from").get_by_text("config file", exact=True).click()
        wait_for_run(page)
        config = tmp_path / "from-a-file.yaml"
        config.write_text("name: from-a-file\ndpo:\n  beta: 0.33\n")
        page.get_by_test_id("stFileUploader").first.locator("input[type=file]").set_input_files(str(config))
        wait_for_run(page)
        expect(page.get_by_text("Loaded from-a-file.yaml")).to_be_visible(timeout=60_000)
        assert name_field(page).input_value() == "from-a-file"
        preview = yaml.safe_load(page.get_by_test_id("stCode").first.text_content())
        with page.expect_download() as download:
            page.get_by_test_id("stDownloadButton").locator("button").click()
        exported = yaml.safe_load(Path(download.value.path()).read_text())
        assert exported == preview and preview["name"] == "from-a-file" and preview["dpo"]["beta"] == 0.33

        # A β sweep: run 2 again with another β, from the earlier run; Compare draws the metric along β
        page.get_by_test_id("stRadio").filter(has_text="Start from").get_by_text("earlier run", exact=True).click()
        wait_for_run(page)
        page.get_by_test_id("stSelectbox").filter(has_text="Run").first.click()
        page.get_by_role("option", name="2: browser-run (succeeded)").click()
        wait_for_run(page)
        for field, value in ((name_field(page), "browser-beta"), (number_field(page, "DPO β"), "0.3")):
            field.fill(value)
            field.press("Enter")
            wait_for_run(page)
        preview = yaml.safe_load(page.get_by_test_id("stCode").first.text_content())
        assert preview["name"] == "browser-beta" and preview["dpo"]["beta"] == 0.3
        button(page, "Launch").click()
        wait_for_run(page)
        expect(page).to_have_url(f"{url}/runs?run=3", timeout=60_000)
        expect(page.get_by_text("Run 3 · browser-beta · succeeded")).to_be_visible(timeout=RUN_TIMEOUT_MS)
        navigate(page, "Compare")
        page.get_by_test_id("stMultiSelect").filter(has_text="Runs").click()
        page.get_by_role("option", name="2: browser-run (succeeded)").click()
        page.keyboard.press("Escape")
        wait_for_run(page)
        along_beta = page.locator("svg text").filter(has_text=re.compile(r"^dpo\.beta$"))  # the x axis's title
        sweep = page.get_by_test_id("stVegaLiteChart").filter(has=along_beta)
        expect(sweep).to_have_count(1, timeout=60_000)
        # a point per (run, method): 2 runs x the 4 methods; a chart whose field Vega-Lite cannot read draws none
        expect(sweep.locator("g.mark-symbol.role-mark path")).to_have_count(8, timeout=60_000)  # legend symbols aside
        sweep.scroll_into_view_if_needed()
        sweep.screenshot(path=str(shots / "sweep.png"), animations="disabled")
        browser.close()

    assert tuple(db_row(stack, Run.name, Run.status, where=Run.id == 2)) == ("browser-run", "succeeded")
    assert tuple(db_row(stack, Run.name, Run.status, where=Run.id == 3)) == ("browser-beta", "succeeded")
    judgement = db_row(stack, Judgement.reviewer, Judgement.method_b, Judgement.winner, where=Judgement.run_id == 2)
    assert judgement.reviewer == "browser" and judgement.winner == judgement.method_b  # "B" is the right one
    assert {p.name for p in shots.glob("*.png")} >= {"login.png", "runs.png", "run.png", "compare.png", "blind.png"}
    assert "Collecting usage statistics" not in stack["log"].read_text()


def test_the_workers_page_lists_three_workers_and_marks_a_killed_one_lost(stack, tmp_path):
    """`alignlab up`'s worker and two more on the same Redis; one SIGKILLed (no goodbye) is shown lost, live, and
    `alignlab workers` says the same."""
    from playwright.sync_api import expect, sync_playwright

    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["ALIGNLAB_HOME"] = str(stack["home"])
    log = open(tmp_path / "extra-workers.log", "w")  # noqa: SIM115 - closed below
    extra = {
        name: subprocess.Popen(
            [sys.executable, "-m", "workers", "--queues", "fleet-test", "--no-preload", "--name", name],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for name in ("extra-1", "extra-2")
    }
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            log_in(page, stack["url"])
            navigate(page, "Workers")
            expect(page.get_by_text("3 workers: 3 idle", exact=True)).to_be_visible(timeout=180_000)
            table = page.get_by_test_id("stDataFrame")
            for name in ("extra-1", "extra-2"):
                expect(table.get_by_text(name, exact=True)).to_have_count(1, timeout=60_000)

            extra["extra-1"].kill()  # SIGKILL: no clean shutdown, no last word to Redis
            extra["extra-1"].wait(30)
            # lost after three missed heartbeats (45 s); the bound here is only a generous wait
            expect(page.get_by_text("3 workers: 2 idle, 1 lost", exact=True)).to_be_visible(timeout=240_000)
            expect(page.get_by_text("Lost: extra-1", exact=False)).to_be_visible(timeout=60_000)
            page.screenshot(path=str(tmp_path / "workers.png"), full_page=True, animations="disabled")
            browser.close()
        listed = subprocess.run(
            [sys.executable, "-m", "workers.cli", "workers"], cwd=ROOT, env=env, capture_output=True, text=True
        )
        states = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:]}
        assert states["extra-1"] == "lost" and states["extra-2"] == "idle", listed.stdout
    finally:
        for proc in extra.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        log.close()
