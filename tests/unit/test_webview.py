"""The web view's API: JSON built from the store (store/webview.py), readable
blocks for every wire format (store/readable.py), the HTTP face shared by the
proxy and `butter ui` (addon/webview.py) with its write guards, and the
addon's butter.local page and recent-request list."""
from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy import connection

from butter.addon import webview as web
from butter.store import Cache, Conversation, webview
from butter.store.readable import message_blocks, reply_blocks
from tests.unit.exchange import send
from tests.unit.test_feedback import completion, llm_flow, local_flow

CONTEXT = {"api": "openai-chat", "model": "gpt-4o-mini",
           "params": {"tools": [{"type": "function", "function": {"name": "get_order"}}]}}
SYSTEM = {"role": "system", "content": "You help with orders."}


def reply(text: str | None = None, call: dict | None = None) -> dict:
    message = {"role": "assistant", "content": text}
    if call:
        message["tool_calls"] = [{"type": "function", "function": {"name": "get_order", "arguments": json.dumps(call)}}]
    return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"total_tokens": 40}}


def ask(order: str) -> tuple[dict, ...]:
    return (SYSTEM, {"role": "user", "content": f"Refund order {order}."})


@pytest.fixture
def cache(tmp_path):
    c = Cache(tmp_path / "db")
    yield c
    c.close()


def record_orders(cache: Cache, orders, namespace: str = "key:one") -> None:
    for order in orders:
        cache.record(namespace, Conversation(CONTEXT, ask(order)), reply(call={"order_id": order}))


# -- store/webview.py ------------------------------------------------------------------------------

def test_overview_lists_each_namespace_with_its_workflows_api_model_tools_and_branches(cache):
    record_orders(cache, ["1", "2", "3"])
    record_orders(cache, ["9"], namespace="ns:team")
    data = webview.overview(cache.backend)
    assert [ns["namespace"] for ns in data["namespaces"]] == ["key:one", "ns:team"]
    wf = data["namespaces"][0]["workflows"][0]
    assert (wf["api"], wf["model"], wf["tools"], wf["branches"]) == ("openai-chat", "gpt-4o-mini", ["get_order"], 1)


def test_the_roots_index_survives_forget_and_a_database_from_before_it_is_indexed_on_first_listing(cache):
    record_orders(cache, ["1"])
    root = webview.overview(cache.backend)["namespaces"][0]["workflows"][0]["id"]
    webview.forget(cache.backend, bytes.fromhex(root))
    assert webview.overview(cache.backend)["namespaces"] == []
    record_orders(cache, ["2"])
    from butter.store.lmdb_backend import ROOTS, ROOTS_INDEXED
    cache.backend._write(lambda txn: [txn.delete(k, db=cache.backend.meta) for k in
                                      [bytes(k) for k in txn.cursor(db=cache.backend.meta).iternext(values=False)]
                                      if k.startswith(ROOTS) or k == ROOTS_INDEXED])
    assert [w["id"] for ns in webview.overview(cache.backend)["namespaces"] for w in ns["workflows"]] == [root]


def test_subtree_pages_children_follows_chains_and_reveals_a_node_beyond_the_page(cache):
    record_orders(cache, [str(i) for i in range(12)])
    root = bytes.fromhex(webview.overview(cache.backend)["namespaces"][0]["workflows"][0]["id"])
    tree = webview.subtree(cache.backend, root, depth=2, limit=5)
    system = tree["children"][0]
    assert system["role"] == "system" and system["children_total"] == 12 and len(system["children"]) == 5
    page2 = webview.children(cache.backend, bytes.fromhex(system["id"]), offset=5, limit=5)
    seen = {c["id"] for c in system["children"]} | {c["id"] for c in page2["children"]}
    assert page2["total"] == 12 and len(seen) == 10
    hidden = next(n for n in cache.backend.iter_nodes() if n.content.get("role") == "user"
                  and n.node_id.hex() not in seen)
    revealed = webview.subtree(cache.backend, root, depth=2, limit=5, reveal=[hidden.node_id])
    assert hidden.node_id.hex() in {c["id"] for c in revealed["children"][0]["children"]}
    leaf = system["children"][0]
    assert leaf["reply"]["servable"] and leaf["reply"]["tokens"] == 40 and leaf["bad"] is False


def test_a_card_shows_hits_tokens_saved_and_a_bad_mark(cache):
    record_orders(cache, ["1"])
    conversation = Conversation(CONTEXT, ask("1"))
    hit = cache.lookup("key:one", conversation)
    cache.backend.add_hits({hit.node_id: 3})
    with cache.backend.snapshot() as snap:
        card = webview.card(snap, snap.node(hit.node_id), cache.policy)
    assert (card["hits"], card["reply"]["tokens_saved"]) == (3, 120)
    webview.vote(cache.backend, hit.node_id, "bad", None)
    with cache.backend.snapshot() as snap:
        card = webview.card(snap, snap.node(hit.node_id), cache.policy)
    assert card["bad"] is True and card["reply"]["servable"] is False and card["reply"]["tokens_saved"] == 0


def test_detail_is_butter_shows_data_with_readable_blocks(cache):
    record_orders(cache, ["7"])
    node = cache.lookup("key:one", Conversation(CONTEXT, ask("7"))).node_id
    data = webview.detail(cache.backend, node)
    assert [step["role"] for step in data["path"]] == ["system", "user"]
    assert data["path"][1]["blocks"] == [{"type": "text", "text": "Refund order 7."}]
    assert data["replies"][0]["blocks"] == [{"type": "tool_call", "name": "get_order", "arguments": {"order_id": "7"}}]
    assert data["root"] and data["workflow"]["model"] == "gpt-4o-mini"


def test_search_finds_nodes_by_text_in_a_message_or_a_reply_and_by_id_prefix(cache):
    record_orders(cache, ["4242", "77"])
    by_text = webview.search(cache.backend, "order 4242")
    assert [r["text"] for r in by_text["results"]] == ["Refund order 4242."]
    cache.record("key:one", Conversation(CONTEXT, ask("88")), reply('Refunded "in full".'))
    in_reply = webview.search(cache.backend, 'REFUNDED "in full"')  # case folded, quotes as JSON stores them
    assert [r["text"] for r in in_reply["results"]] == ["Refund order 88."]
    node = by_text["results"][0]["id"]
    by_id = webview.search(cache.backend, node[:8])
    assert [r["id"] for r in by_id["results"]] == [node] and by_id["results"][0]["root"]
    assert webview.search(cache.backend, "nothing like this")["results"] == []


def test_the_recent_ring_keeps_only_the_newest_rows_newest_first(cache):
    rows = [(webview.recent_key(1000.0 + i, i), {"t": 1000.0 + i, "status": "hit"}) for i in range(10)]
    cache.backend.append_ring(webview.RECENT_TABLE, rows[:6], keep=4)
    cache.backend.append_ring(webview.RECENT_TABLE, rows[6:], keep=4)
    assert [r["t"] for r in webview.recent(cache.backend)["requests"]] == [1009.0, 1008.0, 1007.0, 1006.0]


def test_no_answer_of_the_api_contains_the_namespace_secret(cache):
    record_orders(cache, ["1"])
    backend, secret = cache.backend, cache.backend.secret.hex()
    root = webview.overview(backend)["namespaces"][0]["workflows"][0]["id"]
    node = cache.lookup("key:one", Conversation(CONTEXT, ask("1"))).node_id
    settings = web.Settings("ui")
    for target in ("/", "/api/overview", f"/api/tree/{root}", f"/api/node/{node.hex()}", "/api/search?q=order",
                   "/api/recent", "/api/generation"):
        page = web.handle(backend, cache.policy, settings, "GET", target, {}, b"")
        assert page.status == 200, target
        assert secret not in page.body.decode() and secret[:16] not in page.body.decode()


# -- store/readable.py ----------------------------------------------------------------------------

def test_blocks_for_anthropic_thinking_tool_use_and_tool_results():
    message = {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "look it up", "signature": "sig"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "name": "get_order", "input": {"order_id": "1"}}]}
    assert [b["type"] for b in message_blocks(message)] == ["thinking", "text", "tool_call"]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "0", "content": '{"ok": true}'}]}
    assert message_blocks(result) == [{"type": "tool_result", "ref": "0", "result": {"ok": True}}]


def test_blocks_for_openai_tool_results_gemini_parts_and_responses_items():
    tool = {"role": "tool", "tool_call_ref": 0, "content": '{"status": "paid"}'}
    assert message_blocks(tool) == [{"type": "tool_result", "ref": 0, "name": None, "result": {"status": "paid"}}]
    gemini = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "hmm", "thought": True}, {"functionCall": {"name": "f", "args": {"a": 1}}}]}}]}
    assert [b["type"] for b in reply_blocks(gemini)] == ["thinking", "tool_call"]
    responses = {"output": [{"type": "reasoning", "summary": []},
                            {"type": "function_call", "name": "f", "arguments": '{"a": 1}', "call_id": "c"},
                            {"type": "message", "content": [{"type": "output_text", "text": "done"}]}]}
    assert reply_blocks(responses)[1:] == [{"type": "tool_call", "name": "f", "arguments": {"a": 1}},
                                           {"type": "text", "text": "done"}]


# -- addon/webview.py: the write guards --------------------------------------------------------------

def post(cache, settings, path, body, headers):
    return web.handle(cache.backend, cache.policy, settings, "POST", path, headers, json.dumps(body).encode())


def test_writes_are_refused_unless_allowed_then_need_the_token_and_the_same_origin(cache):
    record_orders(cache, ["1"])
    node = cache.lookup("key:one", Conversation(CONTEXT, ask("1"))).node_id.hex()
    vote = {"node": node, "score": "bad"}
    read_only = web.Settings("ui")
    assert post(cache, read_only, "/api/vote", vote, {web.TOKEN_HEADER: read_only.token}).status == 403
    writable = web.Settings("ui", writes=True)
    assert post(cache, writable, "/api/vote", vote, {}).status == 403
    assert post(cache, writable, "/api/vote", vote, {web.TOKEN_HEADER: "guess"}).status == 403
    foreign = {web.TOKEN_HEADER: writable.token, "origin": "http://evil.example", "host": "127.0.0.1:8765"}
    assert post(cache, writable, "/api/vote", vote, foreign).status == 403
    assert cache.backend.replies(bytes.fromhex(node))[0].bad is False
    same = {web.TOKEN_HEADER: writable.token, "origin": "http://127.0.0.1:8765", "host": "127.0.0.1:8765"}
    answer = post(cache, writable, "/api/vote", vote, same)
    assert answer.status == 200 and cache.backend.replies(bytes.fromhex(node))[0].bad is True
    assert post(cache, writable, "/api/vote", {"node": node, "score": "meh"}, same).status == 400
    assert post(cache, writable, "/api/forget", {"node": node}, same).status == 200
    assert cache.backend.node(bytes.fromhex(node)) is None


def test_the_page_embeds_the_token_only_when_writes_are_allowed():
    assert b'"token": null' in web.static("/", web.Settings("proxy")).body
    writable = web.Settings("proxy", writes=True)
    page = web.static("/", writable)
    assert writable.token.encode() in page.body and "script-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("host,allowed", [("127.0.0.1:8765", True), ("localhost:8765", True), ("[::1]:8765", True),
                                          ("evil.example:8765", False), ("127.0.0.1:9999", False), (None, False)])
def test_only_the_servers_own_loopback_host_is_answered(host, allowed):
    assert web.host_allowed(host, 8765) is allowed


# -- the addon: butter.local/ and the request list --------------------------------------------------------

async def test_butter_local_serves_the_page_to_loopback_clients_only(butter):
    addon, _ = butter
    page = await send(addon, local_flow("GET", "/"))
    assert page.response.status_code == 200 and b"<svg" in page.response.content
    api = await send(addon, local_flow("GET", "/api/overview"))
    assert api.response.status_code == 200 and "namespaces" in json.loads(api.response.content)
    outside = local_flow("GET", "/api/overview")
    outside.client_conn = connection.Client(peername=("192.168.1.20", 5555), sockname=("0.0.0.0", 8080))
    refused = await send(addon, outside)
    assert refused.response.status_code == 403


async def test_butter_local_writes_need_the_option_and_the_token(butter):
    addon, tctx = butter
    await send(addon, llm_flow(), completion("hello"))
    node = (await send(addon, llm_flow())).response.headers["butter-node"]
    body = json.dumps({"node": node, "score": "bad"}).encode()
    refused = await send(addon, local_flow("POST", "/api/vote", body))
    assert refused.response.status_code == 403 and "butter_ui_writes" in refused.response.text
    tctx.configure(addon, butter_ui_writes=True)
    no_token = await send(addon, local_flow("POST", "/api/vote", body))
    assert no_token.response.status_code == 403
    with_token = local_flow("POST", "/api/vote", body)
    with_token.request.headers[web.TOKEN_HEADER] = addon.web_token
    assert (await send(addon, with_token)).response.status_code == 200
    assert (await send(addon, llm_flow(), completion("better"))).response.headers["butter-cache"] == "miss"


async def test_every_llm_request_lands_in_the_recent_list_with_where_a_miss_left_the_tree(butter):
    addon, _ = butter
    await send(addon, llm_flow(), completion("hello"))
    hit = await send(addon, llm_flow())
    addon.response(hit)  # mitmproxy runs the response hook for served replies too
    await asyncio.sleep(0.7)  # the list is written in a batch, off the event loop
    addon._drain_future().result()
    rows = webview.recent(addon.cache.backend)["requests"]
    assert [r["status"] for r in rows] == ["hit", "miss"]
    assert rows[0]["node"] == hit.response.headers["butter-node"]
    assert rows[1]["matched"] == -1 and rows[1]["detail"]
    assert all(r["api"] and r["model"] == "gpt-4o-mini" for r in rows)
    assert "sk-unit" not in json.dumps(rows)


def test_one_answer_stops_unfolding_at_the_card_budget_but_still_reaches_a_revealed_node(cache, monkeypatch):
    record_orders(cache, [str(i) for i in range(20)])
    root = bytes.fromhex(webview.overview(cache.backend)["namespaces"][0]["workflows"][0]["id"])
    monkeypatch.setattr(webview, "MAX_CARDS", 6)

    def cards(card: dict) -> list[dict]:
        return [card] + [c for k in card["children"] for c in cards(k)]

    drawn = cards(webview.subtree(cache.backend, root, depth=12, limit=50))
    assert len(drawn) == 6 and drawn[1]["children_total"] == 20
    target = next(n for n in cache.backend.iter_nodes() if n.content.get("role") == "user"
                  and n.node_id.hex() not in {c["id"] for c in drawn})
    revealed = cards(webview.subtree(cache.backend, root, depth=12, limit=50, reveal=[target.node_id]))
    assert target.node_id.hex() in {c["id"] for c in revealed}
