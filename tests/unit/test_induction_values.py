"""Induction: one value seen in several forms, and steps a later reply proves.

A value is often written whole in one place and in pieces in another (a file
name the user writes without its extension; a name the user writes whole and
a form takes as first and last name), and a value the first tool call does
not use (the customer's name) is still a value when the final answer says
it. These tests build runs through the real OpenAI Chat adapter.
"""
from __future__ import annotations

import json

from butter.addon.formats.base import WireRequest
from butter.addon.formats.openai_chat import FORMAT
from butter.store import Cache, Conversation, Hit, Miss
from butter.store.induction import Observation, Proposal, Rejected, propose, propose_prefix
from butter.store.templates import render_reply
from tests.unit.test_induction import bindings_for as walk
from butter.store.trust import TrustRules

# These tests are about what induction learns and how lookups find it: templates
# are served on induction's word (trust has its own tests, tests/unit/test_trust.py).
ON_INDUCTIONS_WORD = TrustRules(verify=False)

SYSTEM = "You are the back-office agent. Use the tools."
TOOLS = [{"type": "function", "function": {"name": name, "description": name, "parameters": {"type": "object"}}}
         for name in ("read_file", "fill_form", "get_order", "refund", "find_user", "get_user", "search_flights",
                      "book_flight")]

# A step: ("call", tool name, arguments, tool result) or ("say", text).
Step = tuple


def run(user: str, script: list[Step], system: str = SYSTEM) -> list[tuple[Conversation, dict]]:
    """Every request of one run as the adapter keys it, with the model's reply."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    out = []
    for n, step in enumerate(script):
        body = json.dumps({"model": "gpt-4o-mini", "messages": messages, "tools": TOOLS}).encode()
        conversation = FORMAT.parse_request(WireRequest("POST", "/v1/chat/completions", {}, {}, body)).conversation
        if step[0] == "call":
            _, name, arguments, result = step
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{n}", "type": "function",
                "function": {"name": name, "arguments": json.dumps(arguments)}}]}
        else:
            message = {"role": "assistant", "content": step[1]}
        answer = {"id": f"chatcmpl-{n}", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [{
            "index": 0, "finish_reason": "tool_calls" if step[0] == "call" else "stop", "message": message}]}
        out.append((conversation, FORMAT.reply_from_body(json.dumps(answer).encode(), False)))
        messages.append({k: v for k, v in message.items() if v is not None})
        if step[0] == "call":
            result = step[3] if isinstance(step[3], str) else json.dumps(step[3])  # a str is the tool's text as is
            messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": result})
    return out


def observations(runs: list[list[tuple[Conversation, dict]]], step: int) -> list[Observation]:
    return [Observation(f"run{n}-{step}".encode(), r[step][0].messages, r[step][1]) for n, r in enumerate(runs)]


def reads(stem: str, words: int) -> list[tuple[Conversation, dict]]:
    return run(f"Count the words in {stem} please.", [
        ("call", "read_file", {"file_name": f"{stem}.txt"}, {"words": words}),
        ("say", f"{stem}.txt has {words} words."),
    ])


def signup(first: str, last: str, phone: str) -> list[tuple[Conversation, dict]]:
    return run(f"Sign up {first} {last}, phone +44 {phone}.", [
        ("call", "fill_form", {"first_name": first, "last_name": last, "phone": f"+44 {phone}"}, {"ok": True}),
        ("say", f"Signed up {first}."),
    ])


def refund(order_id: str, name: str, amount: float) -> list[tuple[Conversation, dict]]:
    return run(f"Please refund order {order_id} for {name}.", [
        ("call", "get_order", {"order_id": order_id}, {"order_id": order_id, "amount": amount, "status": "paid"}),
        ("call", "refund", {"order_id": order_id, "amount": amount}, {"status": "refunded"}),
        ("say", f"Refunded {amount} to {name} for order {order_id}."),
    ])


def arguments(reply: dict) -> dict:
    return json.loads(reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])


# -- a value whole in a JSON field and in pieces in the text -------------------------------------

def test_a_file_name_the_user_writes_without_its_extension_is_one_value_with_the_tool_argument():
    proposal = propose(observations([reads("lumen_raven", 40), reads("ember_fox", 12)], 0))
    assert isinstance(proposal, Proposal), proposal
    new = reads("quiet_owl", 7)[0]
    bound = walk(proposal, new[0].messages)
    assert bound is not None and list(bound.values()) == ["quiet_owl"]
    assert arguments(render_reply(proposal.reply, bound)) == {"file_name": "quiet_owl.txt"}


def test_a_later_step_binds_the_file_argument_to_the_users_words_so_another_file_misses():
    proposal = propose(observations([reads("lumen_raven", 40), reads("ember_fox", 12)], 1))
    assert isinstance(proposal, Proposal), proposal
    ok = reads("quiet_owl", 7)[1][0].messages
    assert walk(proposal, ok) is not None
    # The model read another file than the user named: the history is not this workflow's.
    other = run("Count the words in quiet_owl please.", [
        ("call", "read_file", {"file_name": "loud_owl.txt"}, {"words": 7}), ("say", "")])[1][0].messages
    assert walk(proposal, other) is None


def test_a_name_written_whole_by_the_user_splits_into_first_and_last_name_fields():
    proposal = propose(observations([signup("Ana", "Ruiz", "7235 839884"), signup("Bo", "Chen", "7674 204138")], 0))
    assert isinstance(proposal, Proposal), proposal
    assert {"first_name", "last_name"} <= set(proposal.slots)
    new = signup("Maria", "Lopez", "7001 100200")[0]
    bound = walk(proposal, new[0].messages)
    assert bound is not None and bound["first_name"] == "Maria" and bound["last_name"] == "Lopez"
    assert arguments(render_reply(proposal.reply, bound)) == {
        "first_name": "Maria", "last_name": "Lopez", "phone": "+44 7001 100200"}


def test_a_split_name_never_guesses_where_a_longer_name_divides():
    # Taught by two-word names, "{{first_name}} {{last_name}}" cannot know
    # whether "Maria de la Cruz" is Maria + "de la Cruz" or "Maria de la" +
    # Cruz: the parts match single words only, so such a request misses.
    proposal = propose(observations([signup("Ana", "Ruiz", "7235 839884"), signup("Bo", "Chen", "7674 204138")], 0))
    assert proposal.slots["first_name"] == proposal.slots["last_name"] == "word"
    assert walk(proposal, signup("Maria", "de la Cruz", "7001 100200")[0][0].messages) is None


def test_the_models_own_text_is_bound_to_values_already_seen_not_given_slots_of_its_own():
    # At the last step the assistant's "Signed up Ana." is a message; "Ana" is
    # the first_name value, so an assistant message naming someone else misses.
    proposal = propose(observations([signup("Ana", "Ruiz", "7235 839884"), signup("Bo", "Chen", "7674 204138")], 1))
    assert isinstance(proposal, Proposal), proposal
    messages = list(signup("Maria", "Lopez", "7001 100200")[1][0].messages)
    assert walk(proposal, tuple(messages)) is not None


# -- a value that only a later reply proves ---------------------------------------------------------

ANA = refund("1234", "Ana Ruiz", 42.5)
BO = refund("9876", "Bo Chen", 17.25)


def test_a_name_unused_by_the_first_call_is_refused_at_the_first_step_on_its_own():
    result = propose(observations([ANA, BO], 0))
    assert isinstance(result, Rejected) and "never reaches" in result.reason


def test_the_final_answer_proves_the_name_is_a_value_so_the_first_step_is_answered_too():
    deep = propose(observations([ANA, BO], 2))
    assert isinstance(deep, Proposal), deep
    first = propose_prefix(deep, observations([ANA, BO], 0))
    assert isinstance(first, Proposal), first
    assert first.nodes == deep.nodes[:len(first.nodes)]  # the same template nodes: the reply attaches to them
    cy = refund("5555", "Cy Diaz", 99.9)[0]
    bound = walk(first, cy[0].messages)
    assert arguments(render_reply(first.reply, bound)) == {"order_id": "5555"}


def test_an_earlier_reply_that_substitution_does_not_explain_is_not_derived():
    deep = propose(observations([ANA, BO], 2))
    odd = refund("9876", "Bo Chen", 17.25)
    # Bo's first call asked for another order than the user named.
    conversation, reply = odd[0]
    body = json.loads(json.dumps(reply))
    message = body["choices"][0]["message"]
    message["tool_calls"][0]["function"]["arguments"] = json.dumps({"order_id": "1111"})
    prefix = observations([ANA, BO], 0)
    prefix[1] = Observation(prefix[1].key, prefix[1].messages, body)
    assert isinstance(propose_prefix(deep, prefix), Rejected)


def record(cache: Cache, steps: list[tuple[Conversation, dict]]) -> None:
    for conversation, reply in steps:
        cache.record("ns", conversation, reply)
        cache.induce("ns", conversation)


def test_after_two_runs_every_step_of_a_third_is_served_including_the_first(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    record(cache, ANA)
    record(cache, BO)
    for conversation, reply in refund("5555", "Cy Diaz", 99.9):
        hit = cache.lookup("ns", conversation)
        assert isinstance(hit, Hit), hit
        assert render_reply(hit.reply, hit.bindings)["choices"] == reply["choices"]
    cache.close()


def test_a_changed_instruction_still_misses_at_the_first_step_after_derivation(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    record(cache, ANA)
    record(cache, BO)
    cancel = run("Please cancel order 5555 for Cy Diaz.", [("say", "")])[0][0]
    assert isinstance(cache.lookup("ns", cancel), Miss)
    cache.close()


def test_deriving_earlier_replies_again_adds_no_evidence(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    record(cache, ANA)
    record(cache, BO)
    first = cache.lookup("ns", refund("5555", "Cy Diaz", 99.9)[0][0])
    assert isinstance(first, Hit)
    before = [r.count for r in cache.backend.replies(first.node_id)]
    outcome = cache.induce("ns", BO[2][0])  # an induction over the same runs again
    assert outcome.skipped  # already observed
    assert [r.count for r in cache.backend.replies(first.node_id)] == before == [2]
    cache.close()
