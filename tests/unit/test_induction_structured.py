"""Induction over real-shaped tool results: a tool result that is one bare
value, JSON lists whose length differs between runs, and optional fields.

Runs are built through the real OpenAI Chat adapter (`run` in
test_induction_values). What may vary binds nothing unless a later step uses
it; what a reply depends on must still be explained by substitution.
"""
from __future__ import annotations

import json

from butter.store import Cache, Hit, Miss, trust, trust_ledger
from butter.store.trust import TrustRules
from butter.store.induction import Observation, Proposal, Rejected, propose
from butter.store.templates import render_reply
from tests.unit.test_induction import ON_INDUCTIONS_WORD
from tests.unit.test_induction import bindings_for as walk
from tests.unit.test_induction_values import arguments, observations, run

# What induction learns and how lookups find it; serving waits for verified
# agreements (store/trust.py), tested on its own and end to end.


def learned(tmp_path, runs: list, trust=ON_INDUCTIONS_WORD) -> Cache:
    """A store that recorded every request of these runs, each miss learned from in order."""
    cache = Cache(tmp_path / "db", trust=trust)
    for r in runs:
        for conversation, reply in r:
            cache.record("ns", conversation, reply)
            cache.induce("ns", conversation)
    return cache


# -- a bare value as a whole tool result ------------------------------------------------------

def account(email: str, user_id: str, balance: int) -> list:
    return run(f"What is the balance of the account of {email}?", [
        ("call", "find_user", {"email": email}, user_id),  # the tool answers with the bare id
        ("call", "get_user", {"user_id": user_id}, {"user_id": user_id, "balance": balance}),
        ("say", f"The balance is {balance}."),
    ])


RUNS = [account("ana@example.com", "ana_ruiz_1234", 120), account("bo@example.com", "bo_chen_9876", 75)]
THIRD = account("cy@example.com", "sofia_rossi_8776", 5000)


def test_a_tool_result_that_is_one_bare_id_is_a_value_the_next_call_binds():
    result = propose(observations(RUNS, 1))
    assert isinstance(result, Proposal), result
    bound = walk(result, THIRD[1][0].messages)
    assert bound is not None and "sofia_rossi_8776" in bound.values()
    assert arguments(render_reply(result.reply, bound)) == {"user_id": "sofia_rossi_8776"}


def assert_every_step_served(cache: Cache, run_steps: list) -> None:
    """Each request of a run is a hit whose rendered reply is the run's own."""
    for step, (conversation, reply) in enumerate(run_steps):
        found = cache.lookup("ns", conversation)
        assert isinstance(found, Hit), (step, found)
        assert render_reply(found.reply, found.bindings) == reply
    cache.close()


def test_every_step_after_a_bare_id_result_is_served_after_two_runs(tmp_path):
    assert_every_step_served(learned(tmp_path, RUNS), THIRD)


def test_a_bare_word_tool_result_is_still_never_a_value():
    # "approved" / "declined" is a status that decides the next step, not data.
    def decide(user_id: str, verdict: str) -> list:
        return run(f"Check the loan of {user_id}.", [
            ("call", "get_user", {"user_id": user_id}, verdict),
            ("say", f"Loan for {user_id} checked."),
        ])
    result = propose(observations([decide("u_1001", "approved"), decide("u_2002", "declined")], 1))
    assert isinstance(result, Rejected) and "share no words" in result.reason


# -- lists of varying length, optional fields ------------------------------------------------------

def flight(number: str, price: int, **extra) -> dict:
    return {"flight": number, "price": price, "status": "scheduled", **extra}


def search(city: str, flights: list[dict], final: str | None = None) -> list:
    return run(f"Find flights to {city}.", [
        ("call", "search_flights", {"to": city}, {"to": city, "results": flights}),
        ("say", final or f"I found flights to {city}."),
    ])


SEARCHES = [search("Porto", [flight("TP101", 80), flight("FR22", 45, note="night")]),
            search("Lyon", [flight("AF7", 120)])]


def test_lists_that_differ_in_length_with_optional_fields_make_one_template():
    result = propose(observations(SEARCHES, 1))
    assert isinstance(result, Proposal), result
    longer = search("Graz", [flight("OS1", 99), flight("OS3", 60), flight("LH9", 210, note="via Munich")])
    bound = walk(result, longer[1][0].messages)
    assert bound is not None and bound.get("to") == "Graz"
    # The length is a value too (a number that may decide, for whatever judges the template).
    assert bound["results_count"] == "3" and result.slots["results_count"] == "number"
    assert render_reply(result.reply, bound)["choices"][0]["message"]["content"] == "I found flights to Graz."


def test_a_list_template_does_not_match_an_empty_list_a_new_field_or_a_changed_constant():
    result = propose(observations(SEARCHES, 1))
    assert isinstance(result, Proposal), result
    for other in (search("Graz", []),  # no results: another branch
                  search("Graz", [flight("OS1", 99, gate="B4")]),  # a field no run had
                  search("Graz", [flight("OS1", 99) | {"status": "cancelled"}])):  # a constant that decides
        assert walk(result, other[1][0].messages) is None


def test_a_reply_that_uses_the_first_list_item_binds_it():
    def book(city: str, flights: list[dict]) -> list:
        return run(f"Book the first flight to {city}.", [
            ("call", "search_flights", {"to": city}, {"results": flights}),
            ("call", "book_flight", {"flight": flights[0]["flight"]}, {"ok": True}),
        ])
    runs = [book("Porto", [flight("TP101", 80), flight("FR22", 45)]), book("Lyon", [flight("AF7", 120)])]
    result = propose(observations(runs, 1))
    assert isinstance(result, Proposal), result
    third = book("Graz", [flight("OS1", 99), flight("OS3", 60), flight("LH9", 210)])
    bound = walk(result, third[1][0].messages)
    assert arguments(render_reply(result.reply, bound)) == {"flight": "OS1"}


def test_a_reply_that_uses_an_optional_field_is_not_explained():
    runs = [search("Porto", [flight("TP101", 80, note="night")], "Note: night."),
            search("Lyon", [flight("AF7", 120)], "No notes.")]
    assert isinstance(propose(observations(runs, 1)), Rejected)


def test_a_whole_tool_result_varying_outside_json_still_needs_words():
    # Two different prose outputs of a tool are not one value.
    def note(city: str, text: str) -> list:
        return run(f"Any news for {city}?", [("call", "search_flights", {"to": city}, text), ("say", "Done.")])
    result = propose(observations([note("Porto", "All flights on time"), note("Lyon", "Strike tomorrow, expect delays")], 1))
    assert isinstance(result, Rejected)


def test_varying_lists_are_served_end_to_end_in_the_store(tmp_path):
    cache = learned(tmp_path, SEARCHES)
    third = search("Graz", [flight("OS1", 99), flight("OS3", 60, note="red-eye"), flight("LH9", 210)])
    found = cache.lookup("ns", third[1][0])
    assert isinstance(found, Hit), found
    assert render_reply(found.reply, found.bindings) == third[1][1]
    assert isinstance(cache.lookup("ns", search("Graz", [])[1][0]), Miss)
    cache.close()


def test_a_run_a_learned_template_already_answers_is_evidence_not_a_new_template(tmp_path):
    # With verification on, a request a template on probation would answer
    # goes to the provider and is recorded. When the answer agrees, learning a
    # new template from it would put a new node on probation and lose the
    # agreements the first one earned.
    cache = learned(tmp_path, SEARCHES, TrustRules())
    templates = sum(1 for n in cache.backend.iter_nodes() if n.kind == "template")
    agreeing = search("Graz", [flight("OS1", 99), flight("OS3", 60)])[1]
    cache.record("ns", *agreeing)
    assert cache.induce("ns", agreeing[0]).skipped == "a learned template already gives this reply"
    assert sum(1 for n in cache.backend.iter_nodes() if n.kind == "template") == templates
    # An answer the template does not give is a miss like any other.
    other = search("Bern", [flight("LX1", 70)], "Only one flight to Bern.")[1]
    cache.record("ns", *other)
    assert cache.induce("ns", other[0]).skipped == ""
    cache.close()


def test_a_servable_template_answers_though_another_one_on_probation_matches_first(tmp_path):
    # Broader induction leaves several templates at one node (a narrow one,
    # a broader one learned from more runs). One still on probation must not
    # hide one that may serve: the walk looks on.
    # Verification on: learned templates start on probation. One value seen once frees a field the
    # template lets vary (the flight numbers; the status, "scheduled" in every run, stays as seen).
    cache = learned(tmp_path, SEARCHES, TrustRules(free_inputs_after=1))
    third = search("Graz", [flight("OS1", 99), flight("OS3", 60)])[1]
    cache.record_bound("ns", third[0], third[1], {"to": "Graz"})  # a second template the next request fits
    fourth = search("Bern", [flight("OS1", 99), flight("OS3", 60)])[1][0]
    replies = [(node, rid) for node, by_reply in trust_ledger.everything(cache.backend).items() for rid in by_reply
               if cache.backend.node(node).depth == len(fourth.messages)]
    assert len(replies) == 2
    for trusted in replies:  # each order: one of them is the first the walk tries
        for node, rid in replies:
            state = "trusted" if (node, rid) == trusted else "probation"
            # As trust_ledger writes it: with the template generation bumped, so lookups read it anew;
            # each decision input (the reply states the flights in its text) freed by its own evidence.
            cache.backend.update_aux(trust.TABLE, trust.trust_key(node, rid), lambda e, state=state: {
                **e, "source": "learned", "state": state, "inputs_free": True,
                "input_values": {n: 1 << 30 for n in e.get("inputs") or ()}}, bump_templates=True)
        hit = cache.lookup("ns", fourth)
        assert isinstance(hit, Hit) and hit.node_id == trusted[0], hit.detail
    cache.close()


# -- an object keyed by values: the messages each user sent, keyed by user id ----------------------

def sent_by(user_id: str, words: int, others: tuple[str, ...] = ("USR007", "USR008")) -> list:
    """The run logs in as `user_id`; the tool's answer is keyed by user ids, its own first."""
    sent = {user_id: ["Hey Sarah, ready?"], **{other: ["See you soon."] for other in others}}
    return run(f"Log in as {user_id} and show me every message I sent.", [
        ("call", "get_user", {"user_id": user_id}, {"ok": True}),
        ("call", "read_file", {"file_name": "sent"}, {"messages": sent, "words": words}),
        ("say", f"You sent {words} words."),
    ])


KEYED = [sent_by("ONYX119", 12), sent_by("WILLOW235", 30)]


def test_an_object_keyed_by_a_value_bound_earlier_is_one_template_whose_key_is_that_slot(tmp_path):
    from butter.store.inspect import unmark
    result = propose(observations(KEYED, 2))
    assert isinstance(result, Proposal), result
    shown = json.dumps(unmark(result.nodes[-1][1]["message"]))
    assert '{\\"{{user_id}}\\": [\\"Hey Sarah, ready?\\"]' in shown, shown
    assert_every_step_served(learned(tmp_path, KEYED), sent_by("DELTA487", 7))


def test_an_object_keyed_by_values_matches_only_its_own_keys():
    result = propose(observations(KEYED, 2))
    # Another user's messages under the run's key, an extra key, or a key missing: each misses.
    for other in (sent_by("DELTA487", 7, ("USR007", "USR009")), sent_by("DELTA487", 7, ("USR007", "USR008", "USR009")),
                  sent_by("DELTA487", 7, ("USR007",))):
        assert walk(result, other[2][0].messages) is None
    swapped = sent_by("DELTA487", 7)[2][0].messages
    text = json.dumps(swapped).replace("DELTA487\\\": [", "KELP100\\\": [")
    assert walk(result, json.loads(text)) is None, "the key is the user the run logged in as, or no match"


def test_a_slot_key_that_is_also_a_literal_key_never_leaves_another_field_unchecked():
    from butter.store.templates import any_marker, keys_marker, match_message, text_marker
    template = {"message": {"sent": keys_marker([(text_marker("{{user}}"), any_marker("text")),
                                                 ("USR007", any_marker("text"))])}, "slots": {"user": "identifier"}}
    assert match_message(template, {"sent": {"ONYX119": "a", "USR007": "b"}}, {"user": "ONYX119"}) is not None
    # Logged in as USR007: both fields name one key, and "X" would go unchecked.
    assert match_message(template, {"sent": {"USR007": "a", "X": "b"}}, {"user": "USR007"}) is None
    assert match_message(template, {"sent": {"ONYX119": "a", "USR007": "b"}}, {}) is None, "a key is never bound"
    # Free values under a slot's key are noted under the key as written, whoever the run's user.
    from butter.store.templates import VARYING, varying_elements
    noted = [varying_elements(match_message(template, {"sent": {user: "a", "USR007": "b"}}, {"user": user})[VARYING])
             for user in ("ONYX119", "DELTA487")]
    assert noted[0] == noted[1] == {"{{user}}": frozenset({"a"}), "USR007": frozenset({"b"})}, noted


def test_keys_that_are_no_value_seen_earlier_stay_optional_fields():
    # Keyed by ids that appear nowhere before: which field is which would be a guess.
    runs = [run(f"Show me the sent messages of order {n}.", [
        ("call", "read_file", {"file_name": "sent"}, {"messages": {key: ["hi"]}, "words": n}),
        ("say", f"You sent {n} words.")]) for n, key in ((12, "ONYX119"), (30, "WILLOW235"))]
    result = propose(observations(runs, 1))
    assert isinstance(result, Proposal), result
    assert '"keys"' not in json.dumps(result.nodes)
    assert walk(result, run("Show me the sent messages of order 7.", [
        ("call", "read_file", {"file_name": "sent"}, {"messages": {"DELTA487": ["hi"]}, "words": 7}),
        ("say", "x")])[1][0].messages) is None


def test_butter_show_writes_item_templates_and_optional_fields_readably():
    from butter.store.inspect import unmark
    result = propose(observations(SEARCHES, 1))
    shown = unmark(result.nodes[-1][1]["message"])["content"][0]["text"]
    assert '"results": [{"flight": "<any identifier>"' in shown
    assert '"note?": "<any text>"}, "..."]' in shown


def test_a_bare_id_in_an_anthropic_tool_result_block_is_a_value_too():
    def step(email: str, user_id: str) -> Observation:
        messages = ({"role": "user", "content": [{"type": "text", "text": f"Look up {email} please."}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "ref": "toolu#0", "name": "find",
                                                       "input": {"email": email}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_ref": "toolu#0",
                                                  "content": [{"type": "text", "text": user_id}]}]})
        reply = {"role": "assistant", "content": [{"type": "tool_use", "name": "get_user", "input": {"user_id": user_id}}],
                 "stop_reason": "tool_use"}
        return Observation(email.encode(), messages, reply)
    result = propose([step("ana@example.com", "ana_ruiz_1234"), step("bo@example.com", "bo_chen_9876")])
    assert isinstance(result, Proposal), result
    # The same text in the user's own turn is prose: a whole text there is never a value.
    user_turns = [Observation(b"u1", ({"role": "user", "content": [{"type": "text", "text": "ana_ruiz_1234"}]},), {"content": "ok"}),
                  Observation(b"u2", ({"role": "user", "content": [{"type": "text", "text": "bo_chen_9876"}]},), {"content": "ok"})]
    assert isinstance(propose(user_turns), Rejected)
