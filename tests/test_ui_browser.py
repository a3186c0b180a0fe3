"""The Sequence syncs view in a real browser: Debian's Chromium, driven by Selenium, against
``airflow api-server`` on loopback with the simple auth manager, on the demo's state (two
nights of the example DAGs against the simulators, ``scripts/demo.py``).

It logs in through Airflow's login page, opens the view from the UI's navigation route
(``/plugin/sequence-syncs``), checks that the chart and the runs table show the figures each
demo task returned (its XCom), and saves a screenshot (``docs/sequence-syncs.png``).

Run by ``make e2e-ui`` (``.ci/run`` calls it); skipped elsewhere, since it takes a minute or
two and installs Chromium on a machine without it (``scripts/chromium.sh``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = Path(os.environ.get("SEQUENCES_SCREENSHOT") or REPO / "docs" / "sequence-syncs.png")
PASSWORD = "sequence-syncs-e2e"  # a throwaway user of a throwaway api-server on loopback

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("SEQUENCES_E2E_UI") != "1", reason="the browser test runs in make e2e-ui"
    ),
    pytest.mark.timeout(900),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's two nights, written into a fresh directory; returns its AIRFLOW_HOME."""
    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "SEQUENCES_DEMO_DIR": str(work)}
    env.pop("AIRFLOW_HOME", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "airflow"


def _sync_report_links(home: Path) -> dict[str, str]:
    """run key -> the Sync report link each sync task's worker stored (Airflow 3 keeps
    operator links in XCom)."""
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT dag_id, task_id, map_index, run_id, value FROM xcom WHERE key = '_link_SyncReportLink'"
        ).fetchall()
    links = {}
    for dag_id, task_id, map_index, run_id, value in rows:
        link = json.loads(value)
        links[f"{dag_id}.{task_id}[{map_index}]:{run_id}"] = (
            json.loads(link) if link.startswith('"') else link
        )
    return links


def _task_results(home: Path) -> list[dict[str, Any]]:
    """Every sync task's XCom result in the demo's metadata database, with its run key."""
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT dag_id, task_id, map_index, run_id, value FROM xcom "
            "WHERE key = 'return_value' AND task_id = 'enrol_new_leads'"
        ).fetchall()
    found = []
    for dag_id, task_id, map_index, run_id, value in rows:
        result = json.loads(value)
        result = json.loads(result) if isinstance(result, str) else result
        found.append({"run_key": f"{dag_id}.{task_id}[{map_index}]:{run_id}", "dag_id": dag_id, **result})
    return found


@pytest.fixture(scope="module")
def api_server(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``airflow api-server`` on loopback, simple auth manager, one user; stopped after."""
    work = tmp_path_factory.mktemp("api-server")
    passwords = work / "passwords.json"
    passwords.write_text(json.dumps({"admin": PASSWORD}))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(demo),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags_examples"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__BASE_URL": url,
        "AIRFLOW__API_AUTH__JWT_SECRET": "sequence-syncs-e2e-secret",
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    log = (work / "api-server.log").open("w")
    # Started from elsewhere than the repository: its egg-info would register the plugin twice.
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("airflow")),
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--apps",
            "core",
            "--workers",
            "1",
        ],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert server.poll() is None, (work / "api-server.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (work / "api-server.log").read_text()[-4000:]
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless Chromium (Debian's, installed by scripts/chromium.sh when missing); quit after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "chromium.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    chromium, driver_path = done.stdout.split()[-2:]
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1440,1500",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, find: Any, timeout: float = 60) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: find(d))


def _check_figures(browser: Any, results: list[dict[str, Any]]) -> None:
    """The chart's bars and the runs table's counts of each run are what its task returned."""
    from selenium.webdriver.common.by import By

    assert results
    for result in results:
        stats, run_key = result["stats"], result["run_key"]
        bars = {
            rect.get_attribute("data-series"): int(rect.get_attribute("data-value"))
            for rect in browser.find_elements(By.CSS_SELECTOR, "#outcomes-chart rect")
            if rect.get_attribute("data-run") == run_key
        }
        reasons: dict[str, int] = {}
        for outcome in result["not_processed"].values():
            reasons[outcome["reason"]] = reasons.get(outcome["reason"], 0) + 1
        expected = {"added": stats["added"], "unchanged": stats.get("unchanged", 0)}
        expected |= {f"not_processed:{reason}": n for reason, n in reasons.items()}
        assert bars == {k: v for k, v in expected.items() if v}, run_key
        row = browser.find_element(By.CSS_SELECTOR, f"#runs tr[data-run='{run_key}']")
        cells = [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td.n")]
        assert cells[:4] == [
            f"{stats['rows']:,}",
            f"{stats['added']:,}",
            f"{stats['not_processed']:,}",
            f"{stats.get('unchanged', 0):,}",
        ], run_key
        assert stats["added"] + stats.get("unchanged", 0) > 0, run_key
        # Its requests against the floor: the writes and reads it returned, and a floor line.
        writes, reads = (
            int(n.replace(",", "")) for n in row.find_element(By.CSS_SELECTOR, "td.pace").text.split(" / ")
        )
        assert (writes, writes + reads) == (stats["write_requests"], stats["requests"]), run_key
        floors = [
            line
            for line in browser.find_elements(By.CSS_SELECTOR, "#pace-chart line.floor")
            if line.get_attribute("data-run") == run_key
        ]
        assert len(floors) == 1, run_key


def test_the_view_refuses_a_request_without_a_logged_in_user(api_server):
    for path in ("/sequence-syncs/", "/sequence-syncs/sequence?service=reply&connection=x&sequence=1"):
        answer = requests.get(api_server + path, timeout=10, allow_redirects=False)
        assert answer.status_code in (401, 403), (path, answer.status_code)


def test_a_logged_in_user_sees_the_demo_nights_in_the_view(api_server, browser, demo):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    results = _task_results(demo)
    assert len(results) == 4, results  # two nights of the Reply and the Whippy example DAGs

    # Log in through Airflow's own login page.
    browser.get(f"{api_server}/")
    username = _wait(browser, lambda d: d.find_elements(By.NAME, "username"))[0]
    username.send_keys("admin")
    password = browser.find_element(By.NAME, "password")
    password.send_keys(PASSWORD)
    password.send_keys(Keys.ENTER)
    _wait(browser, lambda d: "/auth/login" not in d.current_url and d.get_cookie("_token"))

    # The view is in the UI's navigation, under Browse; it opens embedded at its route.
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "button[aria-label='Browse']"))[0].click()
    entry = "//a[@role='menuitem'][normalize-space()='Sequence syncs']"
    _wait(browser, lambda d: d.find_elements(By.XPATH, entry))[0].click()
    _wait(browser, lambda d: d.current_url.endswith("/plugin/sequence-syncs"))
    frame = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))[0]
    browser.switch_to.frame(frame)
    _wait(browser, lambda d: d.find_elements(By.ID, "scopes"))
    # Whippy's sequence, then Reply's (whose page the screenshot shows later).
    for service, dag_id in (("whippy", "whippy_nightly_crm_sync"), ("reply", "reply_nightly_crm_sync")):
        scope_link = f"//table[@id='scopes']//tr[td[1]='{service}']//a"
        _wait(browser, lambda d, xpath=scope_link: d.find_elements(By.XPATH, xpath))[0].click()
        _wait(browser, lambda d: d.find_elements(By.ID, "outcomes-chart"))
        _check_figures(browser, [r for r in results if r["dag_id"] == dag_id])
        if service == "whippy":
            browser.find_element(By.LINK_TEXT, "all sequences").click()
    page = browser.page_source
    # The latest night's not-processed rows: masked, with their reasons.
    table = browser.find_element(By.ID, "not-processed-rows").text
    assert re.search(r"\w+", table)
    assert not re.search(r"[^\s\u2022'(]@\w", table), "an email shown unmasked"
    assert "API key" not in page

    # Each task's Sync report link opens the view at that task's run.
    links = _sync_report_links(demo)
    first_night = min(
        (r for r in results if r["dag_id"] == "reply_nightly_crm_sync"), key=lambda r: r["run_key"]
    )
    browser.get(api_server + links[first_night["run_key"]])
    selected = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs tr.selected"))[0]
    assert selected.get_attribute("data-run") == first_night["run_key"]
    heading = browser.find_element(By.CSS_SELECTOR, "h2#not-processed").text
    assert heading == f"Not processed in run {first_night['run_key']}"
    assert {r["run_key"] for r in results} <= set(links)

    # The screenshot: the latest night, in the UI.
    browser.get(f"{api_server}/plugin/sequence-syncs")
    frame = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "iframe"))[0]
    browser.switch_to.frame(frame)
    _wait(browser, lambda d: d.find_elements(By.XPATH, "//table[@id='scopes']//tr[td[1]='reply']//a"))[
        0
    ].click()
    _wait(browser, lambda d: d.find_elements(By.ID, "outcomes-chart"))
    browser.switch_to.default_content()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
    shutil.copy(SCREENSHOT, demo / SCREENSHOT.name)
