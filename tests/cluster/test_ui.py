"""A user's path through the UI in headless Chromium: log in, trigger a batch from the form, read its report.

Debian's /usr/bin/chromium driven by Playwright (no browser download). The batch runs on both Celery
workers; the run's page has the "Batch report" tab (the plugin's external view), whose page is only
served to a logged-in user; the device history is one click away. The test saves a screenshot of the
report (printed path; UI_SCREENSHOT_DIR, default .local/screenshots).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from tests.cluster.conftest import DAG_ID, RunningCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEVICES = 6000


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        message = f"no {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _screenshot_dir() -> Path:
    directory = Path(os.environ.get("UI_SCREENSHOT_DIR") or ROOT / ".local" / "screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def test_a_batch_triggered_from_the_ui_shows_its_report_on_the_run_page(
    cluster: RunningCluster, browser, tmp_path
):
    from scripts.generate_manifest import write_manifest

    path = tmp_path / "ui-batch.csv"
    with path.open("w", encoding="utf-8") as handle:
        write_manifest(handle, DEVICES, 12, 0.05, seed=7, first=45_000_000)
    uri = cluster.upload_manifest(path, "uploads/ui-batch.csv")
    base = cluster.api.base

    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    page.goto(f"{base}/")
    page.fill("input[name=username]", cluster.api.username)
    page.fill("input[name=password]", cluster.api.password)
    page.click("input[type=submit], button[type=submit]")
    page.wait_for_url(f"{base}/", timeout=60_000)

    page.goto(f"{base}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#element_manifest").fill(uri)
    assert "null" not in dialog.inner_text()  # the product list says what an empty choice means
    dialog.get_by_role("button", name="Trigger").click()
    page.wait_for_url(f"{base}/dags/{DAG_ID}/runs/**", timeout=60_000)
    run_id = urllib.parse.unquote(page.url.rsplit("/runs/", 1)[1].split("/")[0])

    run = cluster.api.wait_finished(run_id, timeout=300)
    assert run["state"] == "success" and run["conf"]["manifest"] == uri
    chunks = [ti for ti in cluster.api.task_instances(run_id) if ti["task_id"] == "issue_credentials"]
    assert {ti["hostname"] for ti in chunks} == {"worker-1", "worker-2"}

    page.goto(f"{base}/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}")
    page.get_by_role("link", name="Batch report").click()
    report = page.frame_locator("iframe").first
    assert report.locator("h1").inner_text(timeout=60_000) == "Batch report"
    report.locator("#rows tbody tr").first.wait_for(timeout=60_000)
    assert report.locator("#row-count").inner_text() == f"rows 1–100 of {DEVICES}"
    assert "accounted" in report.locator(".cards").inner_text()
    downloads = {
        link.inner_text(): link.get_attribute("href") for link in report.locator("#downloads a").all()
    }
    assert {"quarantine.csv", "failed.csv", "report.md"} <= set(downloads)
    report.locator("#outcome").select_option("quarantined")
    report.locator("#row-search button[type=submit]").click()
    report.get_by_text("rows 1–12 of 12").wait_for(timeout=30_000)
    report.locator("h1").scroll_into_view_if_needed()
    time.sleep(0.5)
    shot = _screenshot_dir() / "batch-report.png"
    page.screenshot(path=str(shot), full_page=True)
    report.locator("#rows").scroll_into_view_if_needed()
    page.screenshot(path=str(_screenshot_dir() / "batch-report-rows.png"), full_page=True)
    print(f"screenshot: {shot}")

    # The files come through Airflow with the user's session, and to nobody without one.
    quarantine = page.request.get(f"{base}{downloads['quarantine.csv']}")
    assert quarantine.status == 200
    refused = list(csv.DictReader(io.StringIO(quarantine.text())))
    assert len(refused) == 12 and all(row["reason_code"] for row in refused)
    assert requests.get(f"{base}{downloads['quarantine.csv']}", timeout=30).status_code == 401
    report_url = f"{base}/factory/dags/{DAG_ID}/runs/{urllib.parse.quote(run_id, safe='')}/report"
    assert requests.get(report_url, timeout=30).status_code == 401
    forged = requests.get(report_url, cookies={"_token": "not-a-jwt"}, timeout=30)
    assert forged.status_code in (401, 403)

    # A device's history: one click from its row.
    report.locator("#outcome").select_option("provisioned")
    report.locator("#row-search button[type=submit]").click()
    first_provisioned = report.locator("#rows tbody tr", has=report.locator("td.outcome-provisioned")).first
    first_provisioned.locator("a").click()
    report.get_by_role("heading", name="Device history").wait_for(timeout=30_000)
    assert run_id in report.locator("#runs").inner_text()
    assert "provisioned" in report.locator("#runs").inner_text()
    assert report.locator("#things td").first.inner_text().startswith("TH-100-") or "GW-200-" in (
        report.locator("#things").inner_text()
    )
    page.screenshot(path=str(_screenshot_dir() / "device-history.png"), full_page=True)
    page.close()
