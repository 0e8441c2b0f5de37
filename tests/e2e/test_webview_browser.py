"""The web view in a real headless Chromium (Debian's `chromium`, driven by
Playwright from PyPI; scripts/setup-env.sh installs it when missing), against
real mitmdump proxies whose trees were recorded from real openai SDK runs
through them: the page at http://butter.local/ through the proxy and the one
`butter ui` serves from the same database while the proxy runs.

A screenshot of each page is saved to test-artifacts/ (git-ignored) for CI to
keep.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import openai
import pytest

from butter.store import Cache
from tests.e2e.harness import ROOT, free_port
from tests.fakes.openai_chat import run_agent

playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
CHROMIUM = os.environ.get("BUTTER_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (scripts/setup-env.sh installs Debian's as root)", allow_module_level=True)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("BUTTER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
ORDERS = ("1234", "9876", "5555")
# The template the two recorded runs teach for their first request,
# "Please refund order {{order_id}}.": system prompt at depth 1, this at 2.
FIRST_STEP_TEMPLATE = ".card[data-kind=template][data-depth='2']"


@pytest.fixture(scope="module")
def browser() -> Iterator["playwright_api.Browser"]:
    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def sdk(api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)


def record_runs(proxy, through, api_key: str) -> list[dict]:
    """Three refunds through the proxy: two recorded, a template learned, the third served."""
    through(proxy)
    runs = [run_agent(sdk(api_key), ORDERS[0]), run_agent(sdk(api_key), ORDERS[1])]
    deadline = time.monotonic() + 20
    # Induction logs one line per recorded miss, in order: wait until all six are learned from.
    while proxy.log_text().count("butter: induction") < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    runs.append(run_agent(sdk(api_key), ORDERS[2]))
    return runs


def page_through(browser, proxy, **options):
    """A browser tab whose traffic goes through the proxy, as a user's browser would."""
    context = browser.new_context(proxy={"server": proxy.url}, ignore_https_errors=True,
                                  viewport={"width": 1600, "height": 1000}, **options)
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    return page


def tree_counts(db: Path) -> dict:
    """Nodes, branch points and templates in the database, for comparing with what is drawn."""
    cache = Cache(db)
    try:
        nodes = list(cache.backend.iter_nodes())
        kids: dict[bytes, int] = {}
        for n in nodes:
            if n.parent is not None:
                kids[n.parent] = kids.get(n.parent, 0) + 1
        return {"nodes": len(nodes), "branch_points": sum(1 for v in kids.values() if v > 1),
                "templates": [n for n in nodes if n.kind == "template"]}
    finally:
        cache.close()


def open_workflow(page) -> None:
    page.wait_for_selector(".wf")
    page.locator(".wf").first.click()
    page.wait_for_selector(".card[data-kind=root]")


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=False)
    return path


@pytest.fixture
def recorded(start_proxy, through, api_key):
    # Learned templates served on induction's word: this page is about drawing
    # the tree (trust has its own tests in test_trust_e2e.py).
    proxy = start_proxy(options={"butter_ui_writes": "false", "butter_verify": "false"})
    runs = record_runs(proxy, through, api_key)
    return proxy, runs


def test_the_proxy_page_draws_every_node_and_branch_of_the_recorded_workflow_and_template_slots(recorded, browser):
    proxy, runs = recorded
    assert [r["cache"] for r in runs][2] == ["hit", "hit", "hit"], "the third run should be served by a template"
    counts = tree_counts(proxy.db)
    assert counts["templates"], "a template was learned from the two recorded runs"
    page = page_through(browser, proxy)
    page.goto("http://butter.local/")
    open_workflow(page)
    page.locator(".card").nth(counts["nodes"] - 1).wait_for()
    assert page.locator(".card").count() == counts["nodes"]
    # A branch point draws one edge per child; the root's first message fans out to the runs.
    branch_points = page.locator(".card").evaluate_all("cards => cards.filter(g => +g.dataset.children > 1).length")
    assert branch_points == counts["branch_points"] > 0
    assert page.locator(".card[data-kind=template]").count() == len(counts["templates"])
    for stored in counts["templates"]:
        template = page.locator(f".card[data-id='{stored.node_id.hex()}']")
        drawn = template.text_content()
        names = sorted(stored.content.get("slots", {}))
        assert names and f"{len(names)} slot" in drawn
        template.click()
        page.locator(f"#detail .msg.here .idlink:text('{stored.node_id.hex()[:12]}')").wait_for()
        chips = page.locator("#detail .msg.here .chip.slot").all_inner_texts()
        assert sorted(c.split()[0] for c in chips if c.startswith("{{")) == [f"{{{{{n}}}}}" for n in names]
    page.locator(FIRST_STEP_TEMPLATE).click()
    page.locator("#detail .reply").first.wait_for()
    screenshot(page, "webview-proxy.png")
    assert not page.errors


def test_clicking_a_node_shows_its_messages_tool_calls_and_reply(recorded, browser):
    proxy, runs = recorded
    page = page_through(browser, proxy)
    page.goto("http://butter.local/")
    open_workflow(page)
    page.fill("#search", f"order {ORDERS[0]}")
    page.locator(".res").first.wait_for()
    page.locator(".res").first.click()
    detail = page.locator("#detail")
    detail.locator(".reply").first.wait_for()
    text = detail.inner_text()
    assert f"Please refund order {ORDERS[0]}." in text
    assert "get_order" in text and '"order_id": "1234"' in text  # the reply's tool call, arguments as JSON
    # The selected card is drawn and highlighted.
    assert page.locator(".card.selected").count() == 1


def test_search_by_text_and_by_node_id_finds_the_node(recorded, browser):
    proxy, runs = recorded
    cache = Cache(proxy.db)
    try:
        leaf = next(n for n in cache.backend.iter_nodes() if "Refunded 17.0" in str(cache.backend.replies(n.node_id)))
    finally:
        cache.close()
    page = page_through(browser, proxy)
    page.goto("http://butter.local/")
    page.fill("#search", "Refunded 17.0")
    page.locator(f".res[data-id='{leaf.node_id.hex()}']").wait_for()
    page.fill("#search", leaf.node_id.hex()[:10])
    result = page.locator(f".res[data-id='{leaf.node_id.hex()}']")
    result.wait_for()
    assert page.locator(".res[data-id]").count() == 1
    result.click()
    page.locator(f".card.selected[data-id='{leaf.node_id.hex()}']").wait_for()
    assert "Refunded 17.0" in page.locator("#detail").inner_text()


def test_without_writes_allowed_the_buttons_are_off_and_a_write_is_refused(recorded, browser):
    proxy, runs = recorded
    page = page_through(browser, proxy)
    page.goto("http://butter.local/")
    open_workflow(page)
    page.locator(FIRST_STEP_TEMPLATE).click()
    page.locator(".reply").first.wait_for()
    assert page.locator(".reply-actions button.bad").first.is_disabled()
    node = page.locator(".card.selected").get_attribute("data-id")
    status = page.evaluate("""async (node) => (await fetch('/api/vote', {method: 'POST',
        headers: {'content-type': 'application/json', 'butter-token': 'guess'},
        body: JSON.stringify({node, score: 'bad'})})).status""", node)
    assert status == 403


def test_with_writes_a_bad_mark_needs_the_token_and_a_confirmation_then_the_next_request_reaches_the_provider(
        start_proxy, through, api_key, provider, browser):
    proxy = start_proxy(options={"butter_ui_writes": "true", "butter_verify": "false"})
    record_runs(proxy, through, api_key)
    page = page_through(browser, proxy)
    page.goto("http://butter.local/")
    open_workflow(page)
    # The first step every run shares: the template for "Please refund order {{order_id}}."
    page.locator(FIRST_STEP_TEMPLATE).click()
    page.locator(".reply").first.wait_for()
    node = page.locator(".card.selected").get_attribute("data-id")
    without_token = page.evaluate("""async (node) => (await fetch('/api/vote', {method: 'POST',
        headers: {'content-type': 'application/json'}, body: JSON.stringify({node, score: 'bad'})})).status""", node)
    assert without_token == 403
    page.locator(".reply-actions button.bad").first.click()
    page.locator("#modal").wait_for()
    page.locator("#modal-cancel").click()  # cancelled: nothing changes
    assert page.locator(".reply.bad").count() == 0
    page.locator(".reply-actions button.bad").first.click()
    page.locator("#modal-ok").click()
    page.locator(".reply.bad").first.wait_for()
    before = len(provider.calls)
    run = run_agent(sdk(api_key), ORDERS[2])
    assert run["cache"][0] == "miss" and len(provider.calls) > before


def test_the_requests_list_updates_while_an_agent_runs(recorded, browser, through, api_key):
    proxy, runs = recorded
    page = page_through(browser, proxy)
    page.goto("http://butter.local/")
    page.locator("#requests tbody tr").first.wait_for()
    before = page.locator("#requests tbody tr").count()
    assert before == sum(len(r["cache"]) for r in runs)
    agent = threading.Thread(target=run_agent, args=(sdk(api_key), ORDERS[0]))
    agent.start()
    agent.join(30)
    page.locator("#requests tbody tr").nth(before + 2).wait_for(timeout=15_000)  # the page's CSP forbids eval
    statuses = page.locator("#requests tbody tr:nth-child(-n+3) .pill.st").all_inner_texts()
    assert statuses == ["hit", "hit", "hit"]
    misses = page.locator("#requests tr.st-miss .why").all_inner_texts()
    # Each miss says where it left the tree; the very first found no root for its context at all.
    assert misses[-1] == "no recording for this model, tools and parameters"
    assert misses[:-1] and all(m.startswith("left the tree at message ") for m in misses[:-1])


def test_butter_ui_serves_the_same_tree_while_the_proxy_runs_and_refuses_a_foreign_host(recorded, browser):
    proxy, runs = recorded
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "butter.cli.main", "--db", str(proxy.db), "ui", "--port", str(port)],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "butter ui: http://127.0.0.1:" in ui.stdout.readline()
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        open_workflow(page)
        assert page.locator(".card").count() == tree_counts(proxy.db)["nodes"]
        assert "read-only" in page.locator("#where").inner_text()
        screenshot(page, "webview-ui.png")
        rebinding = urllib.request.Request(f"http://127.0.0.1:{port}/api/overview", headers={"Host": f"evil.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(rebinding, timeout=10)  # direct
        assert refused.value.code == 403
    finally:
        ui.terminate()
        ui.wait(10)
