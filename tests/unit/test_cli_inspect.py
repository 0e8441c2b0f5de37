"""store/inspect.py and the read commands (stats, tree, show, explain) over
temporary databases, in process."""
from __future__ import annotations

import json

import pytest

from butter.cli.main import main
from butter.store import Cache, Conversation
from butter.store.inspect import (diff_lines, first_difference, load_index, node_summary, stats_rows, summarise,
                           summarise_context, tokens_of)

# As the proxy keys a request to api.openai.com (the server explain assumes by default).
CONTEXT = {"api": "openai-chat", "model": "m", "params": {}, "headers": {}, "upstream": "https://api.openai.com:443"}


def user(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def reply(text: str, tokens: int = 10) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"total_tokens": tokens}}


@pytest.mark.parametrize("message,expected", [
    ({"role": "user", "content": [{"type": "text", "text": "Please   refund\norder 1234."}]},
     'user: "Please refund order 1234."'),
    ({"role": "assistant", "tool_calls": [{"type": "function", "ref": "call#0",
                                           "function": {"name": "get_order", "arguments": {"order_id": "1234"}}}]},
     "assistant: → get_order(order_id=1234)"),
    ({"role": "tool", "tool_call_ref": "call#0", "content": [{"type": "text", "text": '{"ok": true}'}]},
     'tool[call#0]: "{"ok": true}"'),
    ({"role": "assistant", "content": [{"type": "tool_use", "name": "search", "input": {"q": "x"}}]},  # Anthropic
     "assistant: → search(q=x)"),
    ({"role": "model", "parts": [{"text": "hi"}, {"functionCall": {"name": "lookup", "args": {"id": 3}}}]},  # Gemini
     'model: "hi" → lookup(id=3)'),
    ({"type": "function_call", "call": "call#0", "name": "get_order", "arguments": {"order_id": "1234"}},  # Responses
     "function_call[call#0]: → get_order(order_id=1234)"),
    ({"type": "function_call_output", "call": "call#0", "output": '{"amount": 42.5}'},
     'function_call_output[call#0]: "{"amount": 42.5}"'),
])
def test_messages_of_every_format_summarise_to_role_words_and_tool_names(message, expected):
    assert summarise(message) == expected


def test_tokens_are_read_from_each_providers_usage_shape():
    assert tokens_of({"usage": {"total_tokens": 62}}) == 62
    assert tokens_of({"usage": {"input_tokens": 5, "output_tokens": 7}}) == 12
    assert tokens_of({"usageMetadata": {"totalTokenCount": 9}}) == 9
    assert tokens_of({"prompt_eval_count": 3, "eval_count": 4}) == 7
    assert tokens_of({"choices": []}) == 0


def test_a_difference_inside_a_json_tool_result_is_named_by_its_field():
    old = {"role": "tool", "content": [{"type": "text", "text": '{"amount": 42.5, "id": "1"}'}]}
    new = {"role": "tool", "content": [{"type": "text", "text": '{"id": "1", "amount": 43.5}'}]}
    assert first_difference(old, new) == "content[0].text{}.amount"
    diff = diff_lines(old, new)
    assert '-        "amount": 42.5,' in diff and '+        "amount": 43.5,' in diff


@pytest.fixture
def db(tmp_path):
    cache = Cache(tmp_path / "db")
    cache.record("ns:a", Conversation(CONTEXT, (user("hi"),)), reply("hello", 10))
    cache.record("ns:a", Conversation(CONTEXT, (user("bye"),)), reply("see you", 20))
    cache.record("ns:b", Conversation({**CONTEXT, "model": "n"}, (user("hi"),)), reply("yo", 5))
    hit = cache.lookup("ns:a", Conversation(CONTEXT, (user("hi"),)))
    cache.backend.add_hits({hit.node_id: 3})
    cache.record_bound("ns:a", Conversation(CONTEXT, (user("Please refund order 1234."),)), reply("Refunded 1234"),
                       {"order_id": "1234"})
    cache.close()
    return tmp_path / "db"


def test_stats_rows_group_by_namespace_and_model_and_count_tokens_saved(db):
    cache = Cache(db)
    try:
        rows = stats_rows(load_index(cache.backend))
    finally:
        cache.close()
    a = next(r for r in rows if r["namespace"] == "ns:a")
    b = next(r for r in rows if r["namespace"] == "ns:b")
    assert (a["roots"], a["nodes"], a["templates"], a["replies"], a["hits"], a["tokens_saved"]) == (1, 4, 1, 3, 3, 30)
    assert (b["model"], b["nodes"], b["hits"]) == ("n", 2, 0)


def test_tree_marks_templates_with_their_slots(db, capsys):
    assert main(["--db", str(db), "tree", "--namespace", "ns:a"]) == 0
    text = capsys.readouterr().out
    assert 'user: "Please refund order {{order_id}}."  slots: order_id' in text and "template" in text
    assert 'user: "hi"' in text and "hits 3" in text and "ns:b" not in text


def test_show_json_has_the_path_replies_and_stats(db, capsys):
    main(["--db", str(db), "tree", "--json", "--namespace", "ns:a", "--match", "hi"])
    node = json.loads(capsys.readouterr().out)["roots"][0]["children"][0]
    assert main(["--db", str(db), "show", node["id"][:6], "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["namespace"] == "ns:a" and data["path"][0]["content"] == user("hi")
    assert data["replies"][0]["reply"] == reply("hello", 10) and data["stats"] == {
        "hits": 3, "last_hit": data["stats"]["last_hit"], "tokens_saved": 30}


def test_explain_names_the_template_literal_that_failed(db, tmp_path, capsys):
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "Please cancel order 1234."}]}))
    assert main(["--db", str(db), "explain", str(request), "--namespace", "a", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hit"] is False and data["matched"] == 0
    [template] = data["templates"]
    assert "literal 'Please refund order '" in template["failed"] and template["slots"] == ["order_id"]

    request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "Please refund order 77."}]}))
    assert main(["--db", str(db), "explain", str(request), "--namespace", "a"]) == 0
    text = capsys.readouterr().out
    assert "HIT" in text and "bindings  order_id=77" in text


def test_explain_says_when_a_reply_lacks_the_observations_the_proxy_asks_for(db, tmp_path, capsys):
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
    assert main(["--db", str(db), "explain", str(request), "--namespace", "a", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hit"] is True
    assert main(["--db", str(db), "explain", str(request), "--namespace", "a", "--min-observations", "2",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["hit"], data["reason"]) == (False, "no-reply")
    assert data["replies"][0]["why"] == "seen 1 time(s), needs 2"


def test_explain_of_a_request_butter_cannot_parse_says_it_would_pass_through(db, tmp_path, capsys):
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"model": "m", "messages": "not a list"}))
    assert main(["--db", str(db), "explain", str(request), "--path", "/v1/chat/completions"]) == 1
    assert "pass it through" in capsys.readouterr().err


def test_node_summary_of_a_root_names_api_model_and_tools(db):
    cache = Cache(db)
    try:
        roots = load_index(cache.backend).roots()
    finally:
        cache.close()
    assert node_summary(roots[0]).startswith("openai-chat  m")


def test_explain_follows_a_responses_previous_response_id_as_the_proxy_does(tmp_path, capsys):
    from butter.addon.formats.base import WireRequest
    from butter.addon.formats.openai_responses import FORMAT as RESPONSES

    from butter.addon.exchange import with_upstream

    def parse(body: dict):  # as the proxy parses a request to api.openai.com
        parsed = RESPONSES.parse_request(WireRequest("POST", "/v1/responses", {}, {}, json.dumps(body).encode()))
        return with_upstream(parsed, CONTEXT["upstream"])

    base = {"model": "gpt-4.1-mini"}
    first_input = [{"role": "user", "content": "Please refund order 1234."}]
    first_reply = {"id": "resp_first", "object": "response", "status": "completed", "model": "gpt-4.1-mini",
                   "output": [{"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                               "content": [{"type": "output_text", "text": "Which amount?", "annotations": []}]}]}
    follow_input = [{"role": "user", "content": "All of it."}]
    cache = Cache(tmp_path / "db")
    try:
        first = parse({**base, "input": first_input})
        canonical = RESPONSES.reply_from_body(json.dumps(first_reply).encode(), False)
        cache.record("ns:shop", first.conversation, canonical)
        RESPONSES.remember(first, canonical, cache.state_table(RESPONSES.name, "ns:shop", CONTEXT["upstream"]))
        # The stateless request the follow-up stands for, recorded with its answer.
        whole = RESPONSES.expand(parse({**base, "previous_response_id": "resp_first", "input": follow_input}),
                                 cache.state_table(RESPONSES.name, "ns:shop", CONTEXT["upstream"]))
        cache.record("ns:shop", whole.conversation, canonical)
    finally:
        cache.close()
    request = tmp_path / "r.json"
    request.write_text(json.dumps({**base, "previous_response_id": "resp_first", "input": follow_input}))
    assert main(["--db", str(tmp_path / "db"), "explain", str(request), "--namespace", "shop", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hit"] is True
    request.write_text(json.dumps({**base, "previous_response_id": "resp_unknown", "input": follow_input}))
    assert main(["--db", str(tmp_path / "db"), "explain", str(request), "--namespace", "shop", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hit"] is False and "resp_unknown" in data["not_expanded"]


@pytest.mark.parametrize("context,expected", [
    ({"api": "gemini", "model": "gemini-2.0-flash", "params": {"tools": [
        {"functionDeclarations": [{"name": "get_order"}, {"name": "refund"}]}, {"googleSearch": {}}]}},
     "gemini  gemini-2.0-flash  tools: get_order, refund, googleSearch"),
    ({"api": "openai-responses", "model": "gpt-4o", "params": {"tools": [
        {"type": "function", "name": "get_order"}, {"type": "web_search"}]}},
     "openai-responses  gpt-4o  tools: get_order, web_search"),
])
def test_root_summaries_name_every_tool(context, expected):
    assert summarise_context(context) == expected
