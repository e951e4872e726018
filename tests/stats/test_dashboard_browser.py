"""The dashboard in a real headless Chromium: it loads, refreshes from the stats API and draws its charts.

Playwright drives the system's Chromium (`apt-get install chromium`; or name one in SEMPROXY_CHROMIUM):
Playwright's own browser download is never used. The screenshot lands in tests/artifacts/ (git-ignored)
and in pytest's tmp dir.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from semproxy.app import build_app, build_cache
from semproxy.config import Settings
from tests.fakes import FakeOpenAI, HashingEmbedder
from tests.servers import ThreadServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("offline_encodings")]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHARTS = ("#chart-hit-rate", "#chart-savings", "#chart-latency")


def _chromium() -> str:
    for candidate in (os.environ.get("SEMPROXY_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = candidate and shutil.which(candidate)
        if found:
            return found
    if os.environ.get("CI"):  # CI installs it (scripts/install.sh): a missing browser is a broken set-up there
        pytest.fail("no Chromium installed although scripts/install.sh should have installed it")
    pytest.skip("no Chromium installed (scripts/install.sh installs it)")


def _points(page: Any, selector: str) -> int:
    return int(page.get_attribute(selector, "data-points") or 0)


def test_dashboard_draws_live_charts_after_proxied_requests(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    settings = Settings(data_dir=tmp_path / "data", upstream="http://upstream.test/v1", similarity_threshold=0.8,
                        compression_enabled=False, admin_token="dash-token-0123456789", verify_hits=False,
                        audit_rate=1.0, learn_thresholds=False)  # every near prompt at temperature 0 is audited
    embedder = HashingEmbedder()
    app = build_app(settings, transport=FakeOpenAI().transport(),
                    cache=build_cache(settings, load_embedder=lambda: embedder))
    errors: list[str] = []
    with ThreadServer(app) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"{server.url}/semproxy/dashboard?refresh=0.3")
        page.wait_for_selector("#token-form", state="visible", timeout=15_000)  # the API said 401: ask
        assert "needs the admin token" in (page.text_content("#status") or "")
        page.fill("#token-input", "a-wrong-token")
        page.click("#token-form button")
        page.wait_for_function("document.getElementById('status').textContent.includes('refused')", timeout=15_000)
        page.fill("#token-input", "dash-token-0123456789")
        page.click("#token-form button")
        page.wait_for_function("Number(document.body.dataset.updates || 0) >= 1", timeout=15_000)
        assert page.is_hidden("#token-form") and "token" not in page.url  # sent in a header, not the URL
        assert page.text_content("#kpi-requests") == "0"
        assert _points(page, "#chart-hit-rate") == _points(page, "#chart-latency") == 0  # no lookups yet
        assert page.get_attribute("#chart-savings", "data-max") == "0"

        headers = {"authorization": "Bearer sk-carol"}
        for prompt in ("how do I sort a list in python", "how do I sort a list in python",
                       "how do I sort a python list", "what is the capital of France"):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
            assert httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200

        page.wait_for_function("document.getElementById('kpi-requests').textContent === '4'", timeout=15_000)
        page.wait_for_function("Number(document.getElementById('chart-latency').dataset.points) >= 2",
                               timeout=15_000)
        assert page.text_content("#kpi-hit-rate") == "50.0 %"
        assert all(_points(page, chart) >= 1 for chart in CHARTS)
        assert float(page.get_attribute("#chart-savings", "data-max") or 0) == 30  # two hits of 15 tokens
        assert page.locator("#chart-hit-rate path.series").count() == 1
        assert page.locator("#chart-latency path.series").count() == 2  # hits and misses
        assert page.locator("#top-prompts tr").count() == 1  # the prompt asked twice, as a hash
        assert page.text_content("#kpi-audits") == "no audits yet"
        # At temperature 0 a near prompt is audited: the fake upstream's answers differ, so it is wrong.
        for prompt in ("how do I sort a list in python", "how do I sort a python list"):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "temperature": 0}
            assert httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers).status_code == 200
        page.wait_for_function("document.getElementById('kpi-audits').textContent.startsWith('1 audits, 1 wrong')",
                               timeout=15_000)
        page.wait_for_function("document.querySelectorAll('#audits-by-tenant tr td').length === 4", timeout=15_000)
        assert [page.text_content(f"#audits-by-tenant td:nth-child({i})") for i in (2, 3)] == ["1", "1"]
        assert page.text_content("#kpi-wrong-hits") == "\u2013"  # a drawn-for-certain audit stands for no hit
        assert "error" not in (page.get_attribute("#status", "class") or "")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        (ARTIFACTS / "dashboard.png").write_bytes(shot)
        browser.close()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 10_000
    # The browser reports each refused fetch (the two before the right token) as a console error.
    assert [e for e in errors if "status of 401" not in e] == []


def test_the_dashboard_page_holds_no_figures_and_its_api_takes_the_token_in_a_header_only(tmp_path: Path) -> None:
    token = "dash-token-0123456789"
    settings = Settings(data_dir=tmp_path, upstream="http://upstream.test/v1", compression_enabled=False,
                        semantic_enabled=False, admin_token=token)
    app = build_app(settings, transport=FakeOpenAI().transport())
    with ThreadServer(app) as server:
        page = httpx.get(server.url + "/semproxy/dashboard")
        assert page.status_code == 200 and '"requests"' not in page.text  # the page as shipped: figures come later
        assert httpx.get(server.url + "/semproxy/api/stats").status_code == 401
        in_url = httpx.get(server.url + f"/semproxy/api/stats?token={token}")
        assert in_url.status_code == 401 and "never in the URL" in in_url.json()["error"]["message"]
        in_header = httpx.get(server.url + "/semproxy/api/stats", headers={"x-semproxy-admin-token": token})
        assert in_header.status_code == 200
