"""Trust in learned templates (store/trust.py, store/trust_ledger.py, addon/verification.py):
probation, promotion on verified agreements, demotion on one disagreement, decision-input
slots, persistence, and the prime look-alike served wrong without verification."""
from __future__ import annotations

import json
import re

import pytest
from mitmproxy import http
from mitmproxy.test import tflow, tutils

from butter.addon import verification
from butter.store import Cache, Conversation, Hit, Miss
from butter.store import trust, trust_ledger
from butter.store.templates import VARYING
from butter.store.trust import DEMOTED, PROBATION, TRUSTED, TrustRules, after_verification, judge, learned_entry
from tests.unit.exchange import send

RULES = TrustRules(promote_after=2, free_inputs_after=3)
CONTEXT = {"api": "openai-chat", "model": "m"}


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def answer(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def ask(text: str) -> Conversation:
    return Conversation(CONTEXT, (user(text),))


def teach(cache: Cache, *runs: tuple[str, str]) -> None:
    for question, reply in runs:
        cache.record("ns", ask(question), answer(reply))
        cache.induce("ns", ask(question))


def served_text(result) -> str:
    from butter.store.templates import render_reply
    return render_reply(result.reply, result.bindings)["choices"][0]["message"]["content"]


# -- the hole, and verification closing it ---------------------------------------------------------

def test_without_verification_a_number_that_decides_the_answer_is_served_the_wrong_answer(tmp_path):
    cache = Cache(tmp_path / "db", trust=TrustRules(verify=False))
    teach(cache, ("Is 7 prime?", "yes"), ("Is 13 prime?", "yes"))
    wrong = cache.lookup("ns", ask("Is 8 prime?"))
    assert isinstance(wrong, Hit) and served_text(wrong) == "yes", "the hole verification closes is not there"


def test_with_verification_the_prime_look_alike_goes_to_the_provider(tmp_path):
    cache = Cache(tmp_path / "db")
    teach(cache, ("Is 7 prime?", "yes"), ("Is 13 prime?", "yes"))
    result = cache.lookup("ns", ask("Is 8 prime?"))
    assert isinstance(result, Miss) and result.reason == "verify" and result.verify is not None
    assert "decision input" in result.detail
    # The provider says "no": the template is demoted, and is not served for any new value.
    outcome = trust_ledger.conclude(cache.backend, result.verify, answer("no"), cache.trust)
    assert (outcome.agreed, outcome.event) == (False, "demoted") and "'no'" in outcome.why
    assert not isinstance(cache.lookup("ns", ask("Is 9 prime?")), Hit)
    assert isinstance(cache.lookup("ns", ask("Is 7 prime?")), Hit), "the recorded run is still served"


def test_a_number_that_decides_is_still_verified_after_the_template_is_promoted(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach(cache, ("Is 7 prime?", "yes"), ("Is 13 prime?", "yes"))
    for n in (17, 19):  # two primes agree: trusted, but n never reaches "yes"
        pending = cache.lookup("ns", ask(f"Is {n} prime?"))
        trust_ledger.conclude(cache.backend, pending.verify, answer("yes"), cache.trust)
    assert isinstance(cache.lookup("ns", ask("Is 17 prime?")), Hit), "a verified value is served"
    still = cache.lookup("ns", ask("Is 8 prime?"))
    assert isinstance(still, Miss) and still.reason == "verify" and "decision input" in still.detail


# -- state transitions (pure) ----------------------------------------------------------------------

def entry_for(inputs: tuple[str, ...] = (), runs=({"city": "Paris"}, {"city": "Berlin"})) -> dict:
    names = {"city", *inputs}
    return learned_entry(names, {"city"}, [dict(r, **{i: f"{r['city']}-{i}" for i in inputs}) for r in runs], 1.0)


def test_probation_is_promoted_by_agreements_on_values_not_seen_before():
    entry = entry_for()
    assert judge(entry, {"city": "Rome"}, RULES).action == "verify"
    assert judge(entry, {"city": "Paris"}, RULES).action == "serve", "a recorded run's values are known"
    entry, event = after_verification(entry, {"city": "Rome"}, True, RULES, "", 2.0)
    assert (event, entry["state"], entry["agreements"]) == ("agreed", PROBATION, 1)
    entry, event = after_verification(entry, {"city": "Rome"}, True, RULES, "", 3.0)
    assert (event, entry["agreements"]) == ("agreed again", 1), "the same values twice are one agreement"
    entry, event = after_verification(entry, {"city": "Madrid"}, True, RULES, "", 4.0)
    assert (event, entry["state"]) == ("promoted", TRUSTED)
    assert judge(entry, {"city": "Oslo"}, RULES) == trust.SERVE_TRUSTED


def test_one_disagreement_demotes_from_probation_and_from_trusted():
    entry, event = after_verification(entry_for(), {"city": "Milan"}, False, RULES, "query: Milano", 2.0)
    assert (event, entry["state"], entry["why"]) == ("demoted", DEMOTED, "query: Milano")
    assert judge(entry, {"city": "Oslo"}, RULES).action == "refuse"
    trusted = {**entry_for(), "state": TRUSTED}
    entry, event = after_verification(trusted, {"city": "Milan"}, False, RULES, "a re-check", 2.0)
    assert entry["state"] == DEMOTED
    assert after_verification(entry, {"city": "Rome"}, True, RULES, "", 3.0)[1] == "already demoted"


def test_butter_min_observations_counts_verified_agreements_not_the_runs_that_taught_it():
    rules = TrustRules(promote_after=2, min_observations=3)
    entry = entry_for()  # two runs taught it: not one agreement yet
    for i, city in enumerate(("Rome", "Madrid", "Oslo")):
        assert entry["state"] == PROBATION
        entry, _ = after_verification(entry, {"city": city}, True, rules, "", float(i))
    assert entry["state"] == TRUSTED and entry["agreements"] == 3


def test_decision_inputs_are_served_only_for_seen_values_until_enough_distinct_values_agree():
    entry = {**entry_for(inputs=("balance",)), "state": TRUSTED, "agreements": 2}
    seen = {"city": "Oslo", "balance": "Paris-balance"}  # a recorded run's balance, another city
    assert judge(entry, seen, RULES) == trust.SERVE_TRUSTED
    fresh = judge(entry, {"city": "Oslo", "balance": "5000"}, RULES)
    assert fresh.action == "verify" and "balance" in fresh.why
    for i in range(RULES.free_inputs_after):
        assert not entry["inputs_free"]
        entry, event = after_verification(entry, {"city": f"c{i}", "balance": str(i)}, True, RULES, "", float(i))
    assert event == "decision inputs freed" and entry["inputs_free"]
    freed = judge(entry, {"city": "Oslo", "balance": "5000"}, RULES)
    assert (freed.action, freed.kind) == ("serve", "new-inputs"), "new values of freed inputs are sampled"


RANGES = TrustRules(promote_after=2, free_inputs_after=3, keep_to_ranges=True)
UNKEPT = TrustRules(promote_after=2, free_inputs_after=3, keep_to_ranges=False)  # butter_verify_ranges=false


def freed_balance_entry(balances=("20", "35"), verified=("3", "50", "95")) -> dict:
    """A template whose decision input `balance` was freed by agreements on `verified`."""
    entry = {**learned_entry({"account", "balance"}, {"account"},
                             [{"account": f"A{b}", "balance": b} for b in balances], 1.0), "state": TRUSTED}
    for i, value in enumerate(verified):
        entry, event = after_verification(entry, {"account": f"V{i}", "balance": value}, True, RANGES, "", float(i))
    assert entry["inputs_free"], event
    return entry


def test_with_ranges_kept_a_freed_number_input_is_served_between_the_verified_values_and_verified_beyond_them():
    entry = freed_balance_entry()  # balances 3 to 95 all got this reply ("too low")
    inside = judge(entry, {"account": "X", "balance": "61.5"}, RANGES)
    assert (inside.action, inside.kind) == ("serve", "new-inputs")
    for beyond in ("5000", "2", "-40", "1,000", "1e3", "lots"):
        verdict = judge(entry, {"account": "X", "balance": beyond}, RANGES)
        assert verdict.action == "verify" and "beyond the values verified" in verdict.why, beyond
    unkept = judge(entry, {"account": "X", "balance": "5000"}, UNKEPT)
    assert (unkept.action, unkept.kind) == ("serve", "new-inputs")
    # The provider agreed for 5000: the range now reaches it, and 4000 is served.
    entry, _ = after_verification(entry, {"account": "Y", "balance": "5000"}, True, RANGES, "", 9.0)
    assert judge(entry, {"account": "X", "balance": "4000"}, RANGES).action == "serve"
    # 50, 95 and 5000 each agreed beyond the values before them: the side above is open now.
    assert entry["extrapolated"]["balance"] == [1, 3]
    assert judge(entry, {"account": "X", "balance": "99999"}, RANGES).action == "serve"
    assert judge(entry, {"account": "X", "balance": "1"}, RANGES).action == "verify"


def test_a_freed_date_input_is_verified_outside_the_dates_seen_and_mixed_values_get_no_range():
    entry = freed_balance_entry(("2026-11-04", "2026-11-30"), ("2026-11-10", "2026-11-12", "2026-11-20"))
    assert judge(entry, {"account": "X", "balance": "2026-11-15"}, RANGES).action == "serve"
    assert judge(entry, {"account": "X", "balance": "2026-06-15"}, RANGES).action == "verify"
    assert judge(entry, {"account": "X", "balance": "15"}, RANGES).action == "verify", "another kind than seen"
    words = freed_balance_entry(("low", "lower"), ("3", "4", "5"))  # not all ordered: no range to keep to
    assert judge(words, {"account": "X", "balance": "5000"}, RANGES).action == "serve"


def test_a_number_its_api_names_an_identifier_is_looked_up_not_compared_so_it_has_no_range_to_keep_to():
    def freed(name: str) -> dict:
        entry = {**learned_entry({"account", name}, {"account"},
                                 [{"account": f"A{v}", name: v} for v in ("20417", "35120")], 1.0), "state": TRUSTED}
        for i, value in enumerate(("30001", "50112", "41234")):
            entry, _ = after_verification(entry, {"account": f"V{i}", name: value}, True, RANGES, "", float(i))
        assert entry["inputs_free"]
        return entry
    for name in ("order_id", "orderId", "zip", "postcode_2", "phone"):
        served = judge(freed(name), {"account": "X", name: "99999"}, RANGES)
        assert (served.action, served.kind) == ("serve", "new-inputs"), (name, "sampled like any new input")
    for name in ("amount", "paid", "valid", "number", "guest_number", "max_bid"):
        assert judge(freed(name), {"account": "X", name: "99999"}, RANGES).action == "verify", name
    assert judge(freed("order_id"), {"account": "X", "order_id": "99999"}, RULES).action == "serve"


def test_a_field_that_only_grows_earns_its_side_of_the_range_after_enough_agreements_beyond_it():
    # A timestamp in a tool result that the next reply never shows: every new run's is the largest yet.
    entry = {**learned_entry({"id", "stamp"}, {"id"}, [{"id": "a", "stamp": "1700000000"},
                                                       {"id": "b", "stamp": "1700000100"}], 1.0), "state": TRUSTED}
    for i in range(RANGES.free_inputs_after):
        stamp = str(1700000200 + 100 * i)
        if entry["inputs_free"]:
            assert judge(entry, {"id": "x", "stamp": stamp}, RANGES).action == "verify"
        entry, _ = after_verification(entry, {"id": f"c{i}", "stamp": stamp}, True, RANGES, "", float(i))
    assert entry["extrapolated"] == {"stamp": [0, RANGES.free_inputs_after]}
    newer = judge(entry, {"id": "x", "stamp": "1800000000"}, RANGES)
    assert (newer.action, newer.kind) == ("serve", "new-inputs"), "the side above earned its evidence"
    older = judge(entry, {"id": "x", "stamp": "1600000000"}, RANGES)
    assert older.action == "verify", "the side below did not"


def test_with_ranges_kept_the_balance_look_alike_is_verified_even_after_its_input_was_freed(tmp_path):
    cache = Cache(tmp_path / "db", trust=RANGES)
    teach(cache, ("Can account A1 with balance 20 pay invoice 100?", "Declined."),
          ("Can account B2 with balance 35 pay invoice 100?", "Declined."))
    for i, balance in enumerate(("3", "60", "95", "41", "77")):  # agreeing runs: promoted, then freed
        pending = cache.lookup("ns", ask(f"Can account C{i} with balance {balance} pay invoice 100?"))
        if isinstance(pending, Miss):
            trust_ledger.conclude(cache.backend, pending.verify, answer("Declined."), cache.trust)
    inside = cache.lookup("ns", ask("Can account D9 with balance 50 pay invoice 100?"))
    assert isinstance(inside, Hit) and served_text(inside) == "Declined."
    beyond = cache.lookup("ns", ask("Can account E7 with balance 5000 pay invoice 100?"))
    assert isinstance(beyond, Miss) and beyond.reason == "verify" and "beyond" in beyond.detail
    cache.close()
    other = Cache(tmp_path / "db", trust=UNKEPT)  # ranges not kept: served (and sampled)
    try:
        assert isinstance(other.lookup("ns", ask("Can account E7 with balance 5000 pay invoice 100?")), Hit)
        other.set_trust(RANGES)  # trust entries prepared without their ranges are not reused
        assert not isinstance(other.lookup("ns", ask("Can account E7 with balance 5000 pay invoice 100?")), Hit)
    finally:
        other.close()


def test_the_proxy_keeps_to_ranges_unless_butter_verify_ranges_is_turned_off(tmp_path):
    from mitmproxy.test import taddons

    from butter.addon.cache_addon import Butter
    addon = Butter()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=str(tmp_path / "db"))
        assert addon.cache.trust.keep_to_ranges is True
        tctx.configure(addon, butter_verify_ranges=False)
        assert addon.cache.trust.keep_to_ranges is False
        addon.done()


def test_a_decision_input_is_never_freed_while_the_template_is_on_probation():
    rules = TrustRules(promote_after=5, free_inputs_after=2)
    entry = entry_for(inputs=("n",))
    for i in range(3):
        entry, _ = after_verification(entry, {"city": f"c{i}", "n": str(i)}, True, rules, "", float(i))
    assert entry["state"] == PROBATION and not entry["inputs_free"]


def test_learning_the_same_template_again_keeps_its_state_and_a_forgotten_one_starts_over():
    demoted = {**entry_for(), "state": DEMOTED, "since": 5.0}
    again = trust.merge_learned(demoted, entry_for(runs=({"city": "Rome"}, {"city": "Oslo"})), node_created=4.0)
    assert again["state"] == DEMOTED and len(again["seen"]) == 4
    relearned = trust.merge_learned(demoted, entry_for(), node_created=6.0)
    assert relearned["state"] == PROBATION


def test_without_verification_learned_templates_serve_but_demoted_ones_never_do():
    off = TrustRules(verify=False)
    assert judge(None, {"city": "Rome"}, off).action == "serve"
    assert judge(entry_for(inputs=("n",)), {"city": "Rome", "n": "8"}, off).action == "serve"
    assert judge({**entry_for(), "state": DEMOTED}, {"city": "Rome"}, off).action == "refuse"


# -- the database: shared by processes, kept across restarts ---------------------------------------

def rewrite(city: str) -> dict:
    return {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "search_location", "arguments": json.dumps({"query": city})}}]}}]}


def test_trust_persists_across_reopen_and_is_seen_by_another_cache_on_the_same_database(tmp_path):
    db = tmp_path / "db"
    cache = Cache(db, trust=RULES)
    teach(cache, *((f"What is the weather in {city}?", f"It is sunny in {city}.") for city in ("Paris", "Berlin")))
    other = Cache(db, trust=RULES)  # another proxy process on the same database
    # The reply states the city in its text (a decision input): three agreements free it.
    for city in ("Rome", "Madrid", "Vienna"):
        pending = cache.lookup("ns", ask(f"What is the weather in {city}?"))
        assert pending.reason == "verify"
        assert trust_ledger.conclude(other.backend, pending.verify, answer(f"It is sunny in {city}."), RULES).agreed
    cache.close()
    other.close()
    reopened = Cache(db, trust=RULES)
    hit = reopened.lookup("ns", ask("What is the weather in Oslo?"))
    assert isinstance(hit, Hit) and hit.trust == "new-inputs"  # trusted, its decision input freed
    # A sampled re-check of a trusted template disagrees: demoted, in the database.
    trust_ledger.conclude(reopened.backend, hit, answer("It is raining in Oslo."), RULES)
    reopened.close()
    again = Cache(db, trust=RULES)
    demoted = again.lookup("ns", ask("What is the weather in Lisbon?"))
    assert isinstance(demoted, Miss) and demoted.reason != "verify"
    entry = trust_ledger.read(again.backend, hit.node_id, hit.reply_id)
    assert entry["state"] == DEMOTED and "raining" in entry["why"]
    assert all(r.bad for r in again.backend.replies(hit.node_id)), "a demoted reply is never chosen again"


# -- values the model writes its own way in a tool call --------------------------------------------

def teach_and_promote(cache: Cache, reply_for, taught=("Paris", "Berlin"), verified=("Rome", "Madrid")) -> None:
    for city in taught:
        cache.record("ns", ask(f"What is the weather in {city}?"), reply_for(city))
        cache.induce("ns", ask(f"What is the weather in {city}?"))
    for city in verified:
        pending = cache.lookup("ns", ask(f"What is the weather in {city}?"))
        assert pending.reason == "verify", pending
        assert trust_ledger.conclude(cache.backend, pending.verify, reply_for(city), cache.trust).agreed


def test_a_city_written_into_a_tool_call_is_served_only_for_cities_the_model_copied_verbatim(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_and_promote(cache, rewrite)
    for city in ("Paris", "Rome"):  # recorded, or verified: the model copies them
        hit = cache.lookup("ns", ask(f"What is the weather in {city}?"))
        assert isinstance(hit, Hit), city
    # Promoted, but two verbatim cities say nothing about a third one's spelling.
    new = cache.lookup("ns", ask("What is the weather in Oslo?"))
    assert isinstance(new, Miss) and new.reason == "verify" and new.verify.trust == "rewritable"
    assert "copied verbatim" in new.detail
    entry = trust_ledger.read(cache.backend, new.verify.node_id, new.verify.reply_id)
    assert entry["state"] == TRUSTED and len(entry["rewritable"]) == 1
    assert "served only for values the model copied verbatim" in trust.describe(entry, RULES)


def test_a_rewritten_city_is_noted_and_never_served_while_the_template_stays_for_the_others(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_and_promote(cache, rewrite)
    pending = cache.lookup("ns", ask("What is the weather in Milan?"))
    outcome = trust_ledger.conclude(cache.backend, pending.verify, rewrite("Milano"), RULES)
    assert (outcome.agreed, outcome.event) == (False, "rewritten")
    assert outcome.entry["state"] == TRUSTED and list(outcome.entry["rewritten"].values()) == [["Milan"]]
    again = cache.lookup("ns", ask("What is the weather in Milan?"))
    assert isinstance(again, Miss) and again.reason == "verify", "a rewritten value is never served"
    assert isinstance(cache.lookup("ns", ask("What is the weather in Rome?")), Hit)


def test_a_disagreement_beyond_the_new_value_s_argument_demotes_the_template(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_and_promote(cache, rewrite)
    pending = cache.lookup("ns", ask("What is the weather in Milan?"))
    other_tool = rewrite("Milan")
    other_tool["choices"][0]["message"]["tool_calls"][0]["function"]["name"] = "get_weather"
    assert trust_ledger.conclude(cache.backend, pending.verify, other_tool, RULES).event == "demoted"
    # And a seen city written differently now is the model changing its mind: demoted too.
    cache2 = Cache(tmp_path / "db2", trust=RULES)
    teach_and_promote(cache2, rewrite)
    hit = cache2.lookup("ns", ask("What is the weather in Rome?"))
    assert trust_ledger.conclude(cache2.backend, hit, rewrite("Roma"), RULES).event == "demoted"


def lookup_order(order: str) -> dict:
    return {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "get_order", "arguments": json.dumps({"order_id": order})}}]}}]}


def test_ids_in_a_tool_call_are_not_rewritable_and_are_served_once_promoted(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for order in ("ORD-A1", "ORD-B2"):
        cache.record("ns", ask(f"Where is order {order}?"), lookup_order(order))
        cache.induce("ns", ask(f"Where is order {order}?"))
    for order in ("ORD-C3", "ORD-D4"):
        pending = cache.lookup("ns", ask(f"Where is order {order}?"))
        assert pending.verify.trust != "rewritable"
        assert trust_ledger.conclude(cache.backend, pending.verify, lookup_order(order), RULES).agreed
    hit = cache.lookup("ns", ask("Where is order ORD-E5?"))
    assert isinstance(hit, Hit) and hit.trust == "trusted"


def test_a_number_in_a_tool_call_is_not_rewritable_and_is_served_once_its_own_values_free_it(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for order in ("ORD-1001", "ORD-2002"):
        cache.record("ns", ask(f"Where is order {order}?"), lookup_order(order))
        cache.induce("ns", ask(f"Where is order {order}?"))
    for order in ("ORD-3003", "ORD-4004", "ORD-5005"):  # free_inputs_after=3
        pending = cache.lookup("ns", ask(f"Where is order {order}?"))
        assert pending.reason == "verify" and pending.verify.trust != "rewritable", pending
        assert trust_ledger.conclude(cache.backend, pending.verify, lookup_order(order), RULES).agreed
    hit = cache.lookup("ns", ask("Where is order ORD-6006?"))
    assert isinstance(hit, Hit) and hit.trust == "new-inputs"


def test_rewrite_explains_only_differences_inside_the_argument_that_held_the_value():
    bindings = {"city": "Milan"}
    assert trust.rewrite_explains(rewrite("Milan"), rewrite("Milano"), bindings, ["city"])
    assert not trust.rewrite_explains(rewrite("Milan"), rewrite("Milan"), bindings, ["city"]), "no difference"
    assert not trust.rewrite_explains(answer("Sunny in Milan"), answer("Rain in Milan"), bindings, ["city"]), \
        "prose that differs is an answer that differs"
    extra = rewrite("Milano")
    extra["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = json.dumps({"query": "Milano", "n": 2})
    assert not trust.rewrite_explains(rewrite("Milan"), extra, bindings, ["city"]), "a new argument is a new call"
    rome = {"city": "Rome"}
    assert trust.rewrite_explains(rewrite("Rome, Italy"), rewrite("Roma, Italy"), rome, ["city"])
    assert not trust.rewrite_explains(rewrite("Rome, Italy"), rewrite("Rome, France"), rome, ["city"]), \
        "the words around the value changed: the template is wrong, not the spelling"


def test_a_declared_template_is_trusted_at_once(tmp_path):
    cache = Cache(tmp_path / "db")
    cache.record_bound("ns", ask("What is the weather in Paris?"), rewrite("Paris"), {"city": "Paris"})
    hit = cache.lookup("ns", ask("What is the weather in Milan?"), {"city": "Milan"})
    assert isinstance(hit, Hit) and hit.trust == "declared"


def test_an_exact_recording_is_never_judged(tmp_path):
    cache = Cache(tmp_path / "db")
    cache.record("ns", ask("Is 8 prime?"), answer("no"))
    hit = cache.lookup("ns", ask("Is 8 prime?"))
    assert isinstance(hit, Hit) and not hit.templated and hit.trust == ""


# -- the addon: the header, and a probation hit forwarded as a verification -----------------------

@pytest.mark.parametrize("value,allowed", [(None, True), ("on", True), ("OFF", False), ("false", False)])
def test_the_butter_verify_header_is_read_and_removed(value, allowed):
    headers = {} if value is None else {"butter-verify": value}
    assert verification.take(headers) is allowed and "butter-verify" not in headers


def test_an_invalid_butter_verify_header_is_an_error():
    with pytest.raises(verification.HeaderError):
        verification.take({"butter-verify": "sometimes"})


def chat(question: str, **headers: str):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    fields = {"content-type": "application/json", "authorization": "Bearer sk-1", **headers}
    request = tutils.treq(method=b"POST", host="api.openai.com", port=443, scheme=b"https",
                          path=b"/v1/chat/completions", content=json.dumps(body).encode(),
                          headers=http.Headers([(k.encode(), v.encode()) for k, v in fields.items()]))
    return tflow.tflow(req=request)


def openai_answer(text: str) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


async def test_a_probation_template_forwards_the_request_and_counts_the_providers_agreement(butter):
    addon, tctx = butter
    tctx.configure(addon, butter_induction=True)
    for n in ("7", "13"):
        await send(addon, chat(f"Is {n} prime? Answer {n}."), openai_answer(f"{n}: yes"))
    addon.inducer.submit(lambda: None).result(timeout=30)
    flow = await send(addon, chat("Is 17 prime? Answer 17."), openai_answer("17: yes"))
    assert flow.response.headers["butter-cache"] == "verify" and "butter-template" in flow.response.headers
    node = bytes.fromhex(flow.response.headers["butter-template"])
    (entry,) = trust_ledger.at_node(addon.cache.backend, node).values()
    assert entry["agreements"] == 1 and entry["state"] == PROBATION
    opted_out = await send(addon, chat("Is 19 prime? Answer 19.", **{"butter-verify": "off"}), openai_answer("19: yes"))
    assert opted_out.response.headers["butter-cache"] == "miss" and "butter-verify" not in opted_out.request.headers
    (entry,) = trust_ledger.at_node(addon.cache.backend, node).values()
    assert entry["agreements"] == 1, "an opted-out request counted as a verification"


# -- the CLI: which templates are on probation, trusted or demoted, and why ------------------------

def parsed(question: str) -> Conversation:
    from butter.addon.formats.base import WireRequest
    from butter.addon.formats.openai_chat import FORMAT
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": question}]}).encode()
    conversation = FORMAT.parse_request(WireRequest("POST", "/v1/chat/completions", {}, {}, body)).conversation
    # Keyed by the server, as the proxy and `butter explain` key it.
    return Conversation({**conversation.context, "upstream": "https://api.openai.com:443"}, conversation.messages)


def test_tree_show_and_explain_say_probation_promotion_and_demotion(tmp_path, capsys):
    from butter.cli.main import main

    db = tmp_path / "db"
    cache = Cache(db)
    for n in ("7", "13"):
        cache.record("ns:x", parsed(f"Is {n} prime?"), answer("yes"))
        cache.induce("ns:x", parsed(f"Is {n} prime?"))
    pending = cache.lookup("ns:x", parsed("Is 17 prime?"))
    trust_ledger.conclude(cache.backend, pending.verify, answer("yes"), cache.trust)
    cache.close()
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "Is 8 prime?"}]}))

    assert main(["--db", str(db), "tree"]) == 0
    assert "probation 1/2" in capsys.readouterr().out
    assert main(["--db", str(db), "explain", str(request), "--namespace", "x"]) == 0
    text = capsys.readouterr().out
    assert "VERIFY" in text and "decision input(s) v1" in text and "trust     probation (1 of 2" in text
    assert main(["--db", str(db), "show", pending.verify.node_id.hex()[:8], "--json"]) == 0
    [shown] = json.loads(capsys.readouterr().out)["replies"]
    assert shown["trust"]["state"] == PROBATION and shown["trust"]["entry"]["agreements"] == 1

    cache = Cache(db)
    trust_ledger.conclude(cache.backend, cache.lookup("ns:x", parsed("Is 8 prime?")).verify, answer("no"), cache.trust)
    cache.close()
    assert main(["--db", str(db), "show", pending.verify.node_id.hex()[:8]]) == 0
    assert re.search(r"trust\s+demoted .*template 'yes', provider 'no' \(with v1='8'\)", capsys.readouterr().out)
    assert main(["--db", str(db), "tree"]) == 0
    assert "demoted" in capsys.readouterr().out
    request.write_text(json.dumps({"model": "m", "messages": [{"role": "user", "content": "Is 21 prime?"}]}))
    assert main(["--db", str(db), "explain", str(request), "--namespace", "x"]) == 0
    text = capsys.readouterr().out
    assert "MISS" in text and "trust     demoted" in text and "provider 'no'" in text.split("trust", 1)[1]


def test_which_slots_are_rewritable_prose_only_the_user_wrote_not_data_a_tool_returned():
    from butter.store.templates import json_marker, text_marker
    reply = {"choices": [{"message": {"tool_calls": [{"function": {"name": "refund", "arguments": json_marker(
        {"customer": text_marker("{{customer}}"), "city": text_marker("{{city}}"), "order": text_marker("{{order}}"),
         "day": text_marker("{{day}}")})}}]}}]}
    shapes = {"customer": "text", "city": "text", "order": "identifier", "day": "date"}
    messages = [{"message": {"role": "user", "content": text_marker("Refund {{order}} in {{city}} on {{day}}")}},
                {"message": {"role": "tool", "content": json_marker({"customer": text_marker("{{customer}}")})}}]
    from butter.store.templates import slots_in_data
    # The customer came from a tool result (data, passed on); the order is an id; the city
    # and the date only the user's words held.
    assert trust.rewritable_slots(shapes, reply, slots_in_data(messages)) == {"city", "day"}
    assert trust.kept_as_given("2027-03-14") and not trust.kept_as_given("14/03/2027")
    entry = {**learned_entry({"city", "day"}, {"city", "day"}, [{"city": "Graz", "day": "2027-01-02"}], 1.0,
                             {"city", "day"}), "state": TRUSTED}
    assert judge(entry, {"city": "Graz", "day": "2027-05-06"}, RULES).action == "serve", "an ISO date is served"
    assert judge(entry, {"city": "Graz", "day": "05/06/2027"}, RULES).action == "verify"


def test_file_names_handles_and_paths_are_passed_on_as_given_and_served_for_new_values():
    entry = {**learned_entry({"file"}, {"file"}, [{"file": "a.txt"}], 1.0, {"file"}), "state": TRUSTED}
    for literal in ("report.txt", "john_doe", "docs/q3"):
        assert judge(entry, {"file": literal}, RULES).action == "serve", literal
    for prose in ("Milan", "New York", "St."):
        assert judge(entry, {"file": prose}, RULES).action == "verify", prose


def test_evidence_frees_a_rewritable_slot_only_when_asked_and_the_first_rewrite_stops_it_for_good():
    cities = [{"city": c} for c in ("Porto", "Lyon", "Graz")]
    entry = {**learned_entry({"city"}, {"city"}, cities, 1.0, {"city"}), "state": TRUSTED}
    assert judge(entry, {"city": "Oslo"}, RULES).action == "verify", "never freed by default"
    loose = TrustRules(promote_after=2, free_inputs_after=3, free_rewritable_after=3)
    assert judge(entry, {"city": "Oslo"}, loose) == trust.SERVE_NEW_INPUTS, "three verbatim: freed, re-checked"
    assert "freed" in trust.describe(entry, loose)
    # A re-check finds the model writing "Milano": noted, and the slot is never freed again.
    entry, event = after_verification(entry, {"city": "Milan"}, False, loose, "query: Milano", 2.0, ("city",))
    assert event == "rewritten" and entry["state"] == TRUSTED
    for more in ("Turku", "Ghent", "Bergen", "Cork"):
        entry, _ = after_verification(entry, {"city": more}, True, loose, "", 3.0)
    assert judge(entry, {"city": "Oslo"}, loose).action == "verify"
    assert judge(entry, {"city": "Cork"}, loose).action == "serve", "a value seen verbatim still is"


def test_a_street_whose_words_were_copied_verbatim_is_served_with_new_numbers_and_nothing_else_is():
    seen = [{"street": s} for s in ("12 Market Square", "Bergen 37410", "Flat 3, 9 Mill Lane")]
    entry = {**learned_entry({"street"}, {"street"}, seen, 1.0, {"street"}), "state": TRUSTED}
    for new in ("72 Market Square", "Bergen 50211", "Flat 12, 140 Mill Lane"):
        assert judge(entry, {"street": new}, RULES) == trust.SERVE_NEW_INPUTS, (new, "its words seen: re-checked")
    for other in ("72 Market Sq", "Oslo 37410", "72nd Market Square", "Market Square", "12 Market Square 5"):
        assert judge(entry, {"street": other}, RULES).action == "verify", other
    assert judge({**entry, "state": PROBATION}, {"street": "72 Market Square"}, RULES).action == "verify"
    assert "served with new numbers in the words seen" in trust.describe(entry, RULES)
    # The model wrote "Bergen, Norway 50211" for one run: that form is seen verbatim no longer.
    entry, event = after_verification(entry, {"street": "Bergen 50211"}, False, RULES, "address: Bergen, Norway",
                                      2.0, ("street",))
    assert event == "rewritten"
    assert judge(entry, {"street": "Bergen 80000"}, RULES).action == "verify"
    assert judge(entry, {"street": "72 Market Square"}, RULES) == trust.SERVE_NEW_INPUTS
    assert trust.word_form("72nd St, A4 loc_9 3.5") == "72nd St, A4 loc_9 \u2116.\u2116", "digits inside words stay"


# -- a value the user quoted: meant as typed, so evidence may free it -------------------------------

def quoting(city: str) -> str:
    return f"What is the weather in '{city}'?"


def verified_cities(cache: Cache, question, cities) -> None:
    """Each city's request is verified (the template would answer) and the provider agrees."""
    for city in cities:
        pending = cache.lookup("ns", ask(question(city)))
        assert isinstance(pending, Miss) and pending.reason == "verify", (city, pending)
        assert trust_ledger.conclude(cache.backend, pending.verify, rewrite(city), cache.trust).agreed


def taught_cities(tmp_path, question, name="db") -> Cache:
    cache = Cache(tmp_path / name, trust=RULES)
    for city in ("Paris", "Berlin"):
        cache.record("ns", ask(question(city)), rewrite(city))
        cache.induce("ns", ask(question(city)))
    return cache


def test_a_quoted_city_is_served_after_five_cities_copied_verbatim_and_an_unquoted_one_never_is(tmp_path):
    assert RULES.free_quoted_after == 5 and RULES.free_rewritable_after == 0, "the defaults this test is about"
    cache = taught_cities(tmp_path, quoting)
    verified_cities(cache, quoting, ("Rome", "Madrid", "Vienna"))  # promoted after two; five copied verbatim
    hit = cache.lookup("ns", ask(quoting("Oslo")))
    assert isinstance(hit, Hit) and hit.trust == "new-inputs", "freed, and re-checked at the sampled rate"
    entry = trust_ledger.read(cache.backend, hit.node_id, hit.reply_id)
    assert entry["quoted"] == entry["rewritable"] and "quoted by the user" in trust.describe(entry, RULES)
    assert "freed" in trust.describe(entry, RULES)
    # The same five cities asked without quotes: the model may know Oslo by another name.
    plain = taught_cities(tmp_path, lambda city: f"What is the weather in {city}?", "plain")
    verified_cities(plain, lambda city: f"What is the weather in {city}?", ("Rome", "Madrid", "Vienna"))
    new = plain.lookup("ns", ask("What is the weather in Oslo?"))
    assert isinstance(new, Miss) and new.verify.trust == "rewritable"


def test_four_quoted_copies_are_not_enough_and_one_rewrite_stops_the_freeing_for_good(tmp_path):
    cache = taught_cities(tmp_path, quoting)
    verified_cities(cache, quoting, ("Rome", "Madrid"))
    # Four values copied verbatim: one short.
    pending = cache.lookup("ns", ask(quoting("Milan")))
    assert isinstance(pending, Miss) and pending.verify.trust == "rewritable"
    # The provider writes "Milano" though the user quoted 'Milan': noted, the template stays.
    outcome = trust_ledger.conclude(cache.backend, pending.verify, rewrite("Milano"), cache.trust)
    assert outcome.event == "rewritten" and outcome.entry["state"] == TRUSTED
    verified_cities(cache, quoting, ("Vienna", "Lyon", "Graz"))  # seven verbatim now
    again = cache.lookup("ns", ask(quoting("Oslo")))
    assert isinstance(again, Miss) and again.verify.trust == "rewritable", "a slot the model rewrote once stays verified"
    assert isinstance(cache.lookup("ns", ask(quoting("Lyon"))), Hit), "a value seen verbatim is still served"


def test_quoted_slots_are_those_the_user_s_words_hold_only_inside_quotes():
    from butter.store.templates import text_marker

    def said(text: str, role: str = "user") -> dict:
        return {"message": {"role": role, "content": text_marker(text)}}
    names = ["a", "b", "c", "d", "e", "f"]
    messages = [said("Move '{{a}}' and the user's \"{{b}}.pdf\" to \u2018{{c}}\u2019, then tell {{d}} "
                     "about `{{e}}` and '{{e}}'; also '{{f}}' and {{f}}")]
    assert trust.quoted_slots(names, messages) == {"a", "b", "c", "e"}, "d bare; f once bare"
    assert trust.quoted_slots(["a"], [said("Find {{a}}"), said("'{{a}}'", "assistant")]) == set(), \
        "the model's own quotes are not the user's"
    assert trust.quoted_slots(["a"], [said("It's {{a}}'s turn")]) == set(), "apostrophes quote nothing"
    assert trust.quoted_slots(["a"], [said("Name it 'Report {{a}} final'")]) == {"a"}, "constant words inside"
    assert trust.quoted_slots(["a"], [said("use '{{a}}'", "system"), said("then {{a}}")]) == set()


def test_a_slot_learned_again_from_unquoted_words_is_no_longer_quoted():
    fresh = {**learned_entry({"city"}, {"city"}, [{"city": "Porto"}], 1.0, {"city"}, quoted={"city"}), "state": TRUSTED}
    assert fresh["quoted"] == ["city"]
    again = trust.merge_learned(fresh, learned_entry({"city"}, {"city"}, [{"city": "Lyon"}], 2.0, {"city"}))
    assert "quoted" not in again
    assert trust.merge_learned(fresh, learned_entry({"city"}, {"city"}, [], 2.0, {"city"}, quoted={"city"}))["quoted"] \
        == ["city"]


def promoted_as_an_older_butter_wrote_it(tmp_path) -> tuple[Cache, Hit]:
    """A promoted city template whose trust entry has no word of rewritable slots; and a pending hit of it."""
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_and_promote(cache, rewrite)
    pending = cache.lookup("ns", ask("What is the weather in Oslo?"))
    key = trust.trust_key(pending.verify.node_id, pending.verify.reply_id)
    cache.backend.update_aux(trust.TABLE, key, lambda e: {k: v for k, v in e.items()
                                                         if k not in ("rewritable", "verbatim", "rewritten")},
                             bump_templates=True)
    return cache, pending


def test_a_template_trusted_before_rewritable_slots_existed_is_judged_by_the_rule_now(tmp_path):
    cache, pending = promoted_as_an_older_butter_wrote_it(tmp_path)
    assert "rewritable" not in trust_ledger.read(cache.backend, pending.verify.node_id, pending.verify.reply_id)
    still = cache.lookup("ns", ask("What is the weather in Oslo?"))
    assert isinstance(still, Miss) and still.verify.trust == "rewritable", "a new city is verified, as now"
    assert isinstance(cache.lookup("ns", ask("What is the weather in Rome?")), Hit), "a verified city is served"


# -- a file name around a slot: induction keeps the constant extension out of the slot -------------

def open_file(name: str) -> dict:
    return {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "cat", "arguments": json.dumps({"file_name": name})}}]}}]}


def teach_files(cache: Cache, question, taught=("Umber", "Amber"), verified=("Violet", "Harbor")) -> None:
    """Two runs teach `cat(file_name="{{v1}}.docx")`; two verified stems promote it."""
    for stem in taught:
        cache.record("ns", ask(question(stem)), open_file(f"{stem}.docx"))
        cache.induce("ns", ask(question(stem)))
    for stem in verified:
        pending = cache.lookup("ns", ask(question(stem)))
        assert isinstance(pending, Miss) and pending.reason == "verify", pending
        assert trust_ledger.conclude(cache.backend, pending.verify, open_file(f"{stem}.docx"), cache.trust).agreed


def typed(stem: str) -> str:
    return f"Show me what is in '{stem}.docx', please."


def test_a_file_name_the_user_typed_whole_is_served_for_new_values_though_its_slot_is_only_the_stem(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_files(cache, typed)
    # The slot holds "Delta" (prose-shaped), but the call copies the user's 'Delta.docx',
    # a name the tool reads literally: passed on as given, like a whole-value file name.
    hit = cache.lookup("ns", ask(typed("Delta")))
    assert isinstance(hit, Hit) and hit.bindings == {"v1": "Delta"}, hit
    entry = trust_ledger.read(cache.backend, hit.node_id, hit.reply_id)
    assert entry["rewritable"] == ["v1"] and entry["whole"] == {"v1": ["{{v1}}.docx"]}
    assert "names typed whole: {{v1}}.docx" in trust.describe(entry, RULES)
    # Not a name once the value has a space: the model may write that one its own way.
    spaced = cache.lookup("ns", ask(typed("Delta Force")))
    assert isinstance(spaced, Miss) and spaced.reason == "verify" and spaced.verify.trust == "rewritable"
    # Served as given, so a provider writing it otherwise proves the template wrong: demoted, not "rewritten".
    assert trust_ledger.conclude(cache.backend, hit, open_file("delta.docx"), RULES).event == "demoted"


def test_a_file_name_the_model_made_from_the_user_s_words_is_still_verified_for_new_values(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_files(cache, lambda stem: f"Show me the {stem} document, please.")
    # The user never typed 'Delta.docx': the model composed it, and may compose another spelling.
    new = cache.lookup("ns", ask("Show me the Delta document, please."))
    assert isinstance(new, Miss) and new.reason == "verify" and new.verify.trust == "rewritable"
    assert isinstance(cache.lookup("ns", ask("Show me the Violet document, please.")), Hit), "a verified stem is"


def test_typed_whole_needs_every_call_text_of_the_slot_in_the_conversation_and_merging_keeps_only_agreement():
    from butter.store.templates import json_marker, text_marker
    reply = {"choices": [{"message": {"tool_calls": [{"function": {"name": "cp", "arguments": json_marker(
        {"source": text_marker("{{v1}}.txt"), "destination": text_marker("{{dir}}"),
         "target": text_marker("{{v1}}_copy.txt")})}}]}}]}
    said = [{"message": {"role": "user", "content": text_marker("Copy '{{v1}}.txt' to {{dir}} as '{{v1}}_copy.txt'")}}]
    assert trust.typed_whole(reply, {"v1", "dir"}, said) == {"v1": ["{{v1}}.txt", "{{v1}}_copy.txt"]}, \
        "a bare slot is the value itself: nothing to add"
    half = [{"message": {"role": "user", "content": text_marker("Copy '{{v1}}.txt' to {{dir}} as a copy")}}]
    assert trust.typed_whole(reply, {"v1", "dir"}, half) == {}, "one call text the model composed: none"
    longer = [{"message": {"role": "user", "content": text_marker("Copy '{{v1}}.txt' to {{dir}} as '{{v1}}_copy.txt2'")}}]
    assert trust.typed_whole(reply, {"v1", "dir"}, longer) == {}, "a call text inside a longer name is not typed whole"
    model_said = half + [{"message": {"role": "assistant", "content": text_marker("Copying to '{{v1}}_copy.txt'")}}]
    assert trust.typed_whole(reply, {"v1", "dir"}, model_said) == {}, "the model's own words are not the user's"
    entry = {**learned_entry({"v1", "dir"}, {"v1", "dir"}, [{"v1": "a", "dir": "b"}], 1.0, {"v1", "dir"},
                             trust.typed_whole(reply, {"v1", "dir"}, said)), "state": TRUSTED}
    assert judge(entry, {"v1": "Delta", "dir": "b"}, RULES).action == "serve"
    assert judge(entry, {"v1": "Delta", "dir": "Oslo"}, RULES).action == "verify", "the bare prose slot still is"
    # Learned again from runs that no longer hold the name whole: the exemption goes.
    again = trust.merge_learned(entry, learned_entry({"v1", "dir"}, {"v1", "dir"}, [], 2.0, {"v1", "dir"}, {}))
    assert "whole" not in again and judge(again, {"v1": "Delta", "dir": "b"}, RULES).action == "verify"


# -- data a tool returned as plain text -------------------------------------------------------------

def owner_run(name: str) -> tuple[Conversation, dict]:
    """The user asks to e-mail an order's owner; `get_owner` answers in plain text (no JSON)."""
    call = {"id": "call_1", "type": "function", "function": {"name": "get_owner", "arguments": "{}"}}
    messages = (user("E-mail the owner of my last order that it shipped."),
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": f"The owner is {name}."})
    reply = {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
        {"id": "call_2", "type": "function", "function": {"name": "send_email",
                                                          "arguments": json.dumps({"to_name": name})}}]}}]}
    return Conversation(CONTEXT, messages), reply


def test_a_name_a_tool_returned_in_plain_text_is_passed_on_as_given_not_rewritable(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for name in ("Maria Lopez", "Ken Ito"):
        conversation, reply = owner_run(name)
        cache.record("ns", conversation, reply)
        cache.induce("ns", conversation)
    for name in ("Ada Byron", "Lin Wu"):
        conversation, reply = owner_run(name)
        pending = cache.lookup("ns", conversation)
        assert isinstance(pending, Miss) and pending.verify is not None, pending
        assert trust_ledger.conclude(cache.backend, pending.verify, reply, RULES).agreed
    # The model copies what the tool said, as it would a JSON field: a new owner is served.
    hit = cache.lookup("ns", owner_run("Olu Ade")[0])
    assert isinstance(hit, Hit), hit
    assert trust_ledger.read(cache.backend, hit.node_id, hit.reply_id)["rewritable"] == []


# -- one answer, every template that matched ---------------------------------------------------------

def test_a_verification_counts_for_every_template_that_matches_the_request_not_only_the_first_met(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    # Two runs whose values coincide teach a narrow template (`{{v1}} to {{v1}}`), two others
    # the broad one (`{{v1}} to {{v2}}`): a request with equal values matches both.
    for a, b in (("1111", "1111"), ("2222", "2222"), ("4411", "5522"), ("6633", "7744")):
        cache.record("ns", ask(f"Copy {a} to {b} now"), answer(f"Copied {a} to {b}."))
        cache.induce("ns", ask(f"Copy {a} to {b} now"))
    for n in ("3333", "8888", "9999"):  # three: the reply states the values in its text (decision inputs)
        pending = cache.lookup("ns", ask(f"Copy {n} to {n} now"))
        assert isinstance(pending, Miss) and pending.reason == "verify" and len(pending.verify.also) == 1
        outcome = trust_ledger.conclude(cache.backend, pending.verify, answer(f"Copied {n} to {n}."), RULES)
        assert outcome.agreed and outcome.also == (outcome.event,)
    # Both were promoted by the same answers, whichever the walk met first (an order of
    # node ids): the broad one now serves values the narrow one cannot.
    hit = cache.lookup("ns", ask("Copy 1234 to 5678 now"))
    assert isinstance(hit, Hit) and served_text(hit) == "Copied 1234 to 5678.", hit
    entries = [trust_ledger.read(cache.backend, h.node_id, h.reply_id) for h in (pending.verify, *pending.verify.also)]
    assert [e["state"] for e in entries] == [TRUSTED, TRUSTED]


def test_an_answer_that_contradicts_another_matching_template_demotes_that_one_too(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for a, b in (("1111", "1111"), ("2222", "2222"), ("4411", "5522"), ("6633", "7744")):
        cache.record("ns", ask(f"Copy {a} to {b} now"), answer(f"Copied {a} to {b}." if a != b else "Nothing to copy."))
        cache.induce("ns", ask(f"Copy {a} to {b} now"))
    pending = cache.lookup("ns", ask("Copy 3333 to 3333 now"))
    assert isinstance(pending, Miss) and len(pending.verify.also) == 1
    outcome = trust_ledger.conclude(cache.backend, pending.verify, answer("Nothing to copy."), RULES)
    # One of the two says "Nothing to copy.", the other "Copied 3333 to 3333.": that one is demoted.
    assert sorted([outcome.event, *outcome.also]) == ["agreed", "demoted"]


# -- holes found by review: each decision input freed by agreements on its own values -------------

def test_a_decision_input_that_never_varied_is_not_freed_by_agreements_that_varied_another(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach(cache, ("Is 7 prime? Ticket 101.", "yes"), ("Is 13 prime? Ticket 102.", "yes"))
    # Every verification asks about 7 again, each with a new ticket: distinct tuples, one number.
    for ticket in range(103, 103 + RULES.free_inputs_after):
        pending = cache.lookup("ns", ask(f"Is 7 prime? Ticket {ticket}."))
        assert isinstance(pending, Miss) and pending.reason == "verify", pending
        trust_ledger.conclude(cache.backend, pending.verify, answer("yes"), cache.trust)
    assert isinstance(cache.lookup("ns", ask("Is 7 prime? Ticket 999.")), Hit), "the ticket's values are freed"
    # Nothing was ever verified about 8: "yes" would be served wrong.
    result = cache.lookup("ns", ask("Is 8 prime? Ticket 200."))
    assert isinstance(result, Miss) and result.reason == "verify", served_text(result)
    assert "decision input(s) v1" in result.detail


def test_an_abbreviation_with_dots_is_prose_the_model_may_spell_out_not_a_name_a_tool_reads(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_and_promote(cache, rewrite)
    # The user's "L.A." looked like a machine name (letters joined by a dot) and was served
    # as given, but a model calls search_location(query="Los Angeles") for it.
    for city in ("L.A.", "D.C", "St.Petersburg"):
        result = cache.lookup("ns", ask(f"What is the weather in {city}?"))
        assert isinstance(result, Miss) and result.verify.trust == "rewritable", (city, result)
    pending = cache.lookup("ns", ask("What is the weather in L.A.?"))
    outcome = trust_ledger.conclude(cache.backend, pending.verify, rewrite("Los Angeles"), RULES)
    assert outcome.event == "rewritten", "the model's own spelling, not a wrong template"
    for name in ("report.txt", "john.doe", "v1.2", "Q3.pdf"):
        assert trust.kept_as_given(name), name


def test_after_a_demotion_the_answer_learned_at_the_same_template_node_does_not_serve_new_values(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach(cache, ("Is 7 prime?", "yes"), ("Is 13 prime?", "yes"))

    def verify(n: int, truth: str) -> str:
        pending = cache.lookup("ns", ask(f"Is {n} prime?"))
        assert isinstance(pending, Miss), (n, served_text(pending))
        event = trust_ledger.conclude(cache.backend, pending.verify, answer(truth), cache.trust).event \
            if pending.verify is not None else pending.reason
        teach(cache, (f"Is {n} prime?", truth))  # recorded like any miss, and learned from
        return event

    assert verify(17, "yes") == "agreed" and verify(8, "no") == "demoted"
    # Odd composites teach `Is {{v1}} prime?` -> "no" at the very node whose "yes" was demoted,
    # and agree with it until its decision input is freed.
    events = [verify(n, "no") for n in (9, 15, 21, 25)]
    assert events[-1] == "decision inputs freed", events
    # The node's own history says v1 decides the answer: 11 is not served "no".
    result = cache.lookup("ns", ask("Is 11 prime?"))
    assert isinstance(result, Miss) and result.reason == "verify", served_text(result)
    assert "another answer is recorded at this template node" in result.detail
    assert isinstance(cache.lookup("ns", ask("Is 21 prime?")), Hit), "a recorded run still is"


def test_an_older_entry_judged_first_with_a_number_still_verifies_a_new_city_next(tmp_path):
    cache, _ = promoted_as_an_older_butter_wrote_it(tmp_path)
    # A zip code is passed on as given: served. Which slots are prose came from its shape,
    # and that judgement must not stand for the next request's value.
    assert isinstance(cache.lookup("ns", ask("What is the weather in 10115?")), Hit)
    again = cache.lookup("ns", ask("What is the weather in Oslo?"))
    assert isinstance(again, Miss) and again.verify.trust == "rewritable", again


def test_a_reply_marked_bad_for_this_very_request_is_not_served_again_through_a_template(tmp_path):
    from butter.store import admin
    cache = Cache(tmp_path / "db", trust=RULES)
    teach(cache, ("Is 7 prime?", "yes"), ("Is 13 prime?", "yes"))
    for n in (17, 21):  # the provider gets 21 wrong, and the verification agrees with it
        pending = cache.lookup("ns", ask(f"Is {n} prime?"))
        assert trust_ledger.conclude(cache.backend, pending.verify, answer("yes"), cache.trust).agreed
        cache.record("ns", ask(f"Is {n} prime?"), answer("yes"))
    exact = cache.lookup("ns", ask("Is 21 prime?"))
    assert isinstance(exact, Hit) and not exact.templated
    admin.vote(cache.backend, exact.node_id, "bad")  # a person says "yes" is wrong for 21
    result = cache.lookup("ns", ask("Is 21 prime?"))
    assert isinstance(result, Miss), f"the answer marked bad was served through the template: {served_text(result)}"
    assert result.reason == "no-reply" and "marked bad" in result.detail


# -- a value the reply states in its text may decide it ("Yes, 7 is prime") -------------------------

def test_a_number_the_reply_states_is_a_decision_input_so_promotion_does_not_serve_a_non_prime(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach(cache, ("Is 7 prime?", "Yes, 7 is prime."), ("Is 13 prime?", "Yes, 13 is prime."))
    for n in (17, 19):  # two primes agree: promoted, as before
        pending = cache.lookup("ns", ask(f"Is {n} prime?"))
        assert trust_ledger.conclude(cache.backend, pending.verify, answer(f"Yes, {n} is prime."), RULES).agreed
    entry = trust_ledger.read(cache.backend, pending.verify.node_id, pending.verify.reply_id)
    assert entry["state"] == TRUSTED and entry["stated"] == entry["inputs"] == entry["slots"]
    assert f"the reply states {entry['stated'][0]}" in trust.describe(entry, RULES)
    assert isinstance(cache.lookup("ns", ask("Is 17 prime?")), Hit), "a verified value is served"
    # The number shows in the reply, yet the rest of the text is a verdict on it.
    result = cache.lookup("ns", ask("Is 8 prime?"))
    assert isinstance(result, Miss) and result.reason == "verify", served_text(result)
    assert "states them in its own text" in result.detail
    outcome = trust_ledger.conclude(cache.backend, result.verify, answer("No, 8 is not prime."), RULES)
    assert outcome.event == "demoted"
    assert not isinstance(cache.lookup("ns", ask("Is 23 prime?")), Hit)


def test_a_stated_value_is_freed_by_its_own_agreements_and_a_value_only_passed_to_a_tool_is_not_an_input(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    def greet(name: str) -> Conversation:
        return ask(f"Please write a one-line welcome for our new colleague {name}.")

    for name in ("Ana", "Bo"):
        cache.record("ns", greet(name), answer(f"Welcome to the team, {name}!"))
        cache.induce("ns", greet(name))
    for name in ("Cy", "Di", "Ed"):  # free_inputs_after=3: three new values agree
        pending = cache.lookup("ns", greet(name))
        assert isinstance(pending, Miss) and pending.reason == "verify", pending
        trust_ledger.conclude(cache.backend, pending.verify, answer(f"Welcome to the team, {name}!"), RULES)
    hit = cache.lookup("ns", greet("Flo"))
    assert isinstance(hit, Hit) and served_text(hit) == "Welcome to the team, Flo!" and hit.trust == "new-inputs"
    # An id the reply only writes into a tool call's arguments is passed on: no decision input.
    from butter.store.templates import slots_stated
    call = {"choices": [{"message": {"content": {"$butter": "text", "t": "Looking up {{v2}}."}, "tool_calls": [
        {"function": {"name": "get_order", "arguments": {"$butter": "json", "value": {
            "order_id": {"$butter": "text", "t": "{{v1}}"}}}}}]}}]}
    assert slots_stated(call) == {"v2"}


# -- what a template lets vary unbound (list items, optional fields) may decide too --------------------

def orders_checked(orders: list[dict]) -> Conversation:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "list_orders", "arguments": "{}"}}]}
    return Conversation(CONTEXT, (user("Does any of my orders need attention?"), call,
                                  {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"orders": orders})}))


def orders_verdict(orders: list[dict]) -> dict:
    bad = [o for o in orders if o["status"] not in ("delivered", "shipped", "packed")]
    return answer(f"Yes, order {bad[0]['id']} was {bad[0]['status']}." if bad else "No, every order is on track.")


def test_a_status_inside_a_list_item_decides_so_unbound_item_values_are_verified_not_served_as_seen(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for orders in ([{"id": "A1", "status": "delivered"}, {"id": "A2", "status": "shipped"}],
                   [{"id": "B1", "status": "shipped"}, {"id": "B2", "status": "packed"}, {"id": "B3", "status": "shipped"}]):
        cache.record("ns", orders_checked(orders), orders_verdict(orders))
        cache.induce("ns", orders_checked(orders))
    # Two orders, as a recorded run had: the list's length is a value seen with the reply, but
    # the items' ids and statuses bind nothing. One of them is a status never seen.
    odd = [{"id": "Z1", "status": "delivered"}, {"id": "Z2", "status": "cancelled"}]
    result = cache.lookup("ns", orders_checked(odd))
    assert isinstance(result, Miss) and result.reason == "verify", served_text(result)
    assert f"decision input(s) orders_count, {VARYING}" in result.detail
    assert trust_ledger.conclude(cache.backend, result.verify, orders_verdict(odd), RULES).event == "demoted"


def orders(*items: str) -> list[dict]:
    """Orders from "ID:status" strings."""
    return [{"id": i, "status": status} for i, status in (item.split(":") for item in items)]


def trusted_list_checker(cache: Cache) -> None:
    """Two recorded lists, then three more with new ids that agree: RULES free the inputs."""
    for listed in (orders("A1:delivered", "A2:shipped"), orders("B1:shipped", "B2:packed", "B3:shipped")):
        cache.record("ns", orders_checked(listed), orders_verdict(listed))
        cache.induce("ns", orders_checked(listed))
    for listed in (orders("C1:shipped", "C2:delivered"), orders("D1:packed", "D2:shipped", "D3:delivered"),
                   orders("E1:delivered", "E2:shipped")):
        pending = cache.lookup("ns", orders_checked(listed))
        assert isinstance(pending, Miss) and pending.reason == "verify", pending
        assert trust_ledger.conclude(cache.backend, pending.verify, orders_verdict(listed), RULES).agreed
    entry = trust_ledger.read(cache.backend, pending.verify.node_id, pending.verify.reply_id)
    assert entry["state"] == TRUSTED and entry["inputs_free"], entry


def test_once_freed_list_items_are_judged_field_by_field_so_new_ids_are_served_and_a_new_status_is_verified(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    trusted_list_checker(cache)
    # Ids new every run: free. Statuses and their combination seen with the reply.
    hit = cache.lookup("ns", orders_checked(orders("F1:delivered", "F2:shipped")))
    assert isinstance(hit, Hit) and hit.trust == "new-inputs", hit
    assert served_text(hit) == "No, every order is on track."
    # Five lists, each new as a whole, agreed; none had a lost order. The status field took its
    # values from three that repeat: a fourth is not vouched for by them.
    lost = orders("G1:delivered", "G2:lost")
    result = cache.lookup("ns", orders_checked(lost))
    assert isinstance(result, Miss) and result.reason == "verify", served_text(result)
    assert f"{VARYING} (status)" in result.detail
    assert trust_ledger.conclude(cache.backend, result.verify, orders_verdict(lost), RULES).event == "demoted"


def test_runs_whose_unbound_values_an_older_butter_fingerprinted_are_no_evidence_for_any_field():
    rules = TrustRules(promote_after=2, free_inputs_after=3)
    entry = learned_entry(["v1", VARYING], set(), [], 0.0)
    entry.update(state=TRUSTED, inputs_free=True, input_agreements=9,
                 seen_inputs=[["a", f"varying-{n:020x}"] for n in range(9)], input_values={VARYING: 9, "v1": 9})
    from butter.store.templates import varying_text
    now = {"v1": "a", VARYING: varying_text({"status": ["shipped"]})}
    verdict = judge(entry, now, rules)
    assert verdict.action == "verify" and f"{VARYING} (status)" in verdict.why, verdict


# -- a number passed into a tool call may decide which call ------------------------------------------

def pay(amount: str) -> dict:
    """Up to 1000 the model pays; above, it asks for approval: the amount shows in both calls."""
    tool = "send_payment" if float(amount) <= 1000 else "request_approval"
    return {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": tool, "arguments": json.dumps({"amount": json.loads(amount)})}}]}}]}


def test_a_number_passed_into_a_call_is_a_decision_input_so_promotion_does_not_serve_the_call_above_a_limit(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for amount in ("40", "75"):
        cache.record("ns", ask(f"Pay {amount} EUR to Bob."), pay(amount))
        cache.induce("ns", ask(f"Pay {amount} EUR to Bob."))
    for amount in ("120", "300"):  # two small payments agree: promoted
        pending = cache.lookup("ns", ask(f"Pay {amount} EUR to Bob."))
        assert trust_ledger.conclude(cache.backend, pending.verify, pay(amount), RULES).agreed
    entry = trust_ledger.read(cache.backend, pending.verify.node_id, pending.verify.reply_id)
    assert entry["state"] == TRUSTED and entry["carried"] == entry["inputs"] == entry["slots"]
    assert f"the reply passes {entry['carried'][0]} into a tool call" in trust.describe(entry, RULES)
    assert isinstance(cache.lookup("ns", ask("Pay 120 EUR to Bob.")), Hit), "a verified value is served"
    # The amount reaches the call, and still decides which call it is.
    result = cache.lookup("ns", ask("Pay 5000 EUR to Bob."))
    assert isinstance(result, Miss) and result.reason == "verify", result
    assert "passes a number or date into a tool call" in result.detail
    outcome = trust_ledger.conclude(cache.backend, result.verify, pay("5000"), RULES)
    assert outcome.event == "demoted" and "request_approval" in outcome.why
    assert not isinstance(cache.lookup("ns", ask("Pay 60 EUR to Bob.")), Hit)


def as_an_older_butter_wrote_it(cache: Cache, pending: Miss, unknown_key: str) -> None:
    """The pending verification's template entry made trusted with no decision inputs, and without
    `unknown_key` (a field an older butter did not write)."""
    key = trust.trust_key(pending.verify.node_id, pending.verify.reply_id)
    cache.backend.update_aux(trust.TABLE, key, lambda e: {
        **{k: v for k, v in e.items() if k != unknown_key}, "state": TRUSTED, "inputs": [], "seen_inputs": [],
        "inputs_free": True, "agreements": 2}, bump_templates=True)


def test_an_entry_from_before_carried_numbers_were_inputs_verifies_a_new_amount(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for amount in ("40", "75"):
        cache.record("ns", ask(f"Pay {amount} EUR to Bob."), pay(amount))
        cache.induce("ns", ask(f"Pay {amount} EUR to Bob."))
    # As the butter before this rule wrote it: trusted, its slot free (it reaches the reply).
    as_an_older_butter_wrote_it(cache, cache.lookup("ns", ask("Pay 90 EUR to Bob.")), "carried")
    result = cache.lookup("ns", ask("Pay 5000 EUR to Bob."))
    assert isinstance(result, Miss) and result.reason == "verify" and "decision input" in result.detail
    assert isinstance(cache.lookup("ns", ask("Pay 75 EUR to Bob.")), Hit), "a recorded run's value is still served"
    assert trust_ledger.conclude(cache.backend, result.verify, pay("5000"), RULES).event == "demoted"


def test_an_entry_from_before_stated_values_were_inputs_verifies_a_new_value_and_serves_seen_ones(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach(cache, ("Is 7 prime?", "Yes, 7 is prime."), ("Is 13 prime?", "Yes, 13 is prime."))
    pending = cache.lookup("ns", ask("Is 17 prime?"))
    # As an older butter wrote it: trusted, no inputs, no word of stated slots.
    as_an_older_butter_wrote_it(cache, pending, "stated")
    result = cache.lookup("ns", ask("Is 8 prime?"))
    assert isinstance(result, Miss) and result.reason == "verify" and "decision input" in result.detail
    assert isinstance(cache.lookup("ns", ask("Is 13 prime?")), Hit), "a recorded run's value is still served"
    # The verification writes the entry as the rule is now: the slot is one of its inputs.
    trust_ledger.conclude(cache.backend, result.verify, answer("Yes, 8 is prime."), RULES)  # a provider's slip
    entry = trust_ledger.read(cache.backend, pending.verify.node_id, pending.verify.reply_id)
    assert entry["stated"] == entry["inputs"] == entry["slots"] and not entry["inputs_free"]


# -- a disagreement a decision input explains: that value becomes a branch -------------------------

def order_looked_up(order: str, status: str) -> Conversation:
    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_order", "arguments": json.dumps({"order_id": order})}}]}
    return Conversation(CONTEXT, (user(f"Cancel order {order}."), call, {"role": "tool", "tool_call_id": "c1",
                                                                        "content": json.dumps({"status": status})}))


def next_call(order: str, status: str) -> dict:
    """An order not yet shipped is cancelled; a shipped one gets a return."""
    tool = "create_return" if status == "shipped" else "cancel_order"
    return {"choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "tool_calls": [
        {"id": "c2", "type": "function", "function": {"name": tool, "arguments": json.dumps({"order_id": order})}}]}}]}


def run_through(cache: Cache, order: str, status: str) -> Hit | Miss:
    """What a proxy does with one request: look it up; a verification is concluded with the
    provider's answer, and every request that went to the provider is recorded and learned from."""
    conversation, reply = order_looked_up(order, status), next_call(order, status)
    found = cache.lookup("ns", conversation)
    if isinstance(found, Miss):
        if found.reason == "verify":
            trust_ledger.conclude(cache.backend, found.verify, reply, cache.trust)
        cache.record("ns", conversation, reply)
        cache.induce("ns", conversation)
    return found


def test_a_status_that_demoted_a_template_becomes_a_branch_learned_anew_from_runs_that_share_it(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    for order, status in (("1001", "pending"), ("1002", "processing")):
        run_through(cache, order, status)
    for order, status in (("1003", "on_hold"), ("1004", "new")):  # two agreements: promoted
        assert run_through(cache, order, status).reason == "verify"
    shipped = run_through(cache, "1005", "shipped")
    assert shipped.reason == "verify", "a status never seen with the reply is verified"
    demoted = trust_ledger.read(cache.backend, shipped.verify.node_id, shipped.verify.reply_id)
    assert demoted["state"] == DEMOTED and demoted["decided_by"] == ["status"], "the order id is looked up, not deciding"
    assert "decided by status: runs that share a value of it are learned as a branch" in trust.describe(demoted, RULES)
    # The status decides: the template that let it vary is never served again, but runs that
    # share a status are a branch of their own, learned (status literal) and verified anew.
    first = run_through(cache, "1006", "pending")
    assert isinstance(first, Miss) and first.reason != "verify", "no branch yet: one pending run since"
    branch = run_through(cache, "1007", "processing")
    assert branch.reason != "verify", "processing: its own branch, one run since"
    again = run_through(cache, "1008", "pending")
    assert again.reason == "verify" and again.verify.node_id != shipped.verify.node_id, again
    entry = trust_ledger.read(cache.backend, again.verify.node_id, again.verify.reply_id)
    assert entry["state"] == PROBATION and "status" not in entry["slots"], entry["slots"]
    assert run_through(cache, "1009", "pending").reason == "verify"  # the second agreement: promoted
    assert trust_ledger.read(cache.backend, again.verify.node_id, again.verify.reply_id)["state"] == TRUSTED
    # A shipped order never meets the pending branch: it is another literal.
    assert not isinstance(cache.lookup("ns", order_looked_up("1010", "shipped")), Hit)
    # The order id is still a decision input (a number passed into the call) until freed: verified, not refused.
    later = cache.lookup("ns", order_looked_up("1011", "pending"))
    assert isinstance(later, Hit) or later.reason == "verify", later


def test_a_judgement_remembered_for_a_request_sent_again_follows_the_trust_it_was_made_by(tmp_path):
    cache = Cache(tmp_path / "db", trust=RANGES)
    teach(cache, ("Can account A1 with balance 20 pay invoice 100?", "Declined."),
          ("Can account B2 with balance 35 pay invoice 100?", "Declined."))
    again = ask("Can account C3 with balance 50 pay invoice 100?")
    try:
        pending = [cache.lookup("ns", again) for _ in range(3)]  # judged once, then remembered
        assert all(isinstance(p, Miss) and p.reason == "verify" for p in pending)
        trust_ledger.conclude(cache.backend, pending[-1].verify, answer("Declined."), cache.trust)
        # The agreement is a trust write: these values are now seen with the reply.
        assert isinstance(cache.lookup("ns", again), Hit)
    finally:
        cache.close()
