"""Four suspected ways a wrong answer could be served with verification on (issue 9's review):
freed decision inputs met in a combination never verified, place names joined by "/" or ":"
taken for machine names, a cassette import bringing back a demoted template, and a declared
recording overwriting a learned template's trust."""
from __future__ import annotations

import io

from butter.store import Cache, Hit, Miss
from butter.store import cassette, portable, trust, trust_ledger
from butter.store.trust import DEMOTED, TRUSTED, TrustRules, judge, learned_entry
from tests.unit.test_trust import RULES, UNKEPT, answer, ask, rewrite, served_text, teach, teach_and_promote


# -- 1. two freed decision inputs in a combination no agreement covered --------------------------

def approval(amount: str, limit: str) -> str:
    return f"Approve a payment of {amount} EUR? The account's limit is {limit} EUR."


def freed_amount_and_limit(cache: Cache) -> None:
    """`Approve … {{v1}} … {{v2}}` -> "approved", every run and verification under the limit."""
    teach(cache, (approval("10", "100"), "approved"), (approval("20", "200"), "approved"))
    for amount, limit in (("400", "1000"), ("30", "300"), ("40", "400")):
        pending = cache.lookup("ns", ask(approval(amount, limit)))
        assert isinstance(pending, Miss) and pending.reason == "verify", pending
        trust_ledger.conclude(cache.backend, pending.verify, answer("approved"), cache.trust)


def test_freed_inputs_in_a_combination_never_verified_are_served_and_re_checked_like_any_new_value(tmp_path):
    # The limit documented in docs/trust.md, with butter_verify_ranges turned off: amount 400
    # and limit 100 were each seen with "approved", never together (400 > 100). Freed inputs
    # serve a new tuple on their own evidence; what catches it is the sampled re-check of
    # "new-inputs" hits.
    cache = Cache(tmp_path / "db", trust=UNKEPT)
    freed_amount_and_limit(cache)
    result = cache.lookup("ns", ask(approval("400", "100")))
    assert isinstance(result, Hit) and served_text(result) == "approved"
    assert result.trust == "new-inputs", "a never-seen combination must be a sampled kind of hit"


def test_with_ranges_kept_two_freed_numbers_compared_as_never_before_are_verified(tmp_path):
    # butter_verify_ranges is the rule for numbers a decision compares: amount 400 and limit
    # 100 lie each within its range, but the amount was never above the limit.
    cache = Cache(tmp_path / "db", trust=TrustRules(promote_after=2, free_inputs_after=3, keep_to_ranges=True))
    freed_amount_and_limit(cache)
    assert isinstance(cache.lookup("ns", ask(approval("35", "700"))), Hit), "amount below the limit: served"
    result = cache.lookup("ns", ask(approval("400", "100")))
    assert isinstance(result, Miss) and result.reason == "verify", served_text(result)
    assert "v1 > v2" in result.detail
    outcome = trust_ledger.conclude(cache.backend, result.verify, answer("declined"), cache.trust)
    assert outcome.event == "demoted"


def test_an_agreement_with_two_numbers_compared_the_other_way_serves_that_order_next():
    rules = TrustRules(promote_after=2, free_inputs_after=3, keep_to_ranges=True)
    runs = [{"v1": a, "v2": b} for a, b in (("10", "100"), ("20", "200"), ("400", "1000"), ("30", "300"))]
    entry = {**learned_entry({"v1", "v2"}, set(), runs, 1.0), "state": TRUSTED, "inputs_free": True}
    assert judge(entry, {"v1": "300", "v2": "150"}, rules).action == "verify"
    unkept = TrustRules(free_inputs_after=3, keep_to_ranges=False)
    assert judge(entry, {"v1": "300", "v2": "150"}, unkept).action == "serve", \
        "without ranges kept, no order is kept either"
    entry, _ = trust.after_verification(entry, {"v1": "200", "v2": "100"}, True, rules, "", 2.0)
    assert judge(entry, {"v1": "300", "v2": "150"}, rules) == trust.SERVE_NEW_INPUTS


# -- 2. names joined by "/" or ":" ---------------------------------------------------------------

def test_a_place_joined_by_a_slash_or_a_colon_is_prose_the_model_may_rewrite_not_a_machine_name(tmp_path):
    cache = Cache(tmp_path / "db", trust=RULES)
    teach_and_promote(cache, rewrite)
    # search_location(query="Milan, Italy") is what a model writes for the user's "Milan/Italy".
    for city in ("Milan/Italy", "Paris:France", "Paris: France", "Rome/IT", "milan/italy", "Milan\\Italy",
                 "Sao Paulo/Brazil"):
        result = cache.lookup("ns", ask(f"What is the weather in {city}?"))
        assert isinstance(result, Miss) and result.verify is not None, (city, result)
        assert result.verify.trust == "rewritable", (city, result.detail)
    pending = cache.lookup("ns", ask("What is the weather in Milan/Italy?"))
    outcome = trust_ledger.conclude(cache.backend, pending.verify, rewrite("Milan, Italy"), RULES)
    assert outcome.event == "rewritten", "the model's own spelling, not a wrong template"
    for name in ("docs/q3", "localhost:8080", "src/main.py", "/home/ann", "C:/Users/me.txt", "C:\\Users\\ann\\q3.txt",
                 "john_doe", "v1.2"):
        assert trust.kept_as_given(name), name


# -- 3. a cassette import after live traffic demoted a template ----------------------------------

def demoted_prime_template(cache: Cache) -> Hit:
    teach(cache, ("Is 7 prime?", "yes"), ("Is 13 prime?", "yes"))
    pending = cache.lookup("ns", ask("Is 8 prime?"))
    assert trust_ledger.conclude(cache.backend, pending.verify, answer("no"), cache.trust).event == "demoted"
    return pending.verify


def import_text(cache: Cache, text: str) -> None:
    header, records = portable.read_records(io.StringIO(text))
    portable.import_records(cache.backend, header, records)


def test_a_cassette_recorded_before_a_demotion_does_not_bring_the_template_back(tmp_path):
    before = Cache(tmp_path / "cassette-db", trust=RULES)
    teach(before, ("Is 7 prime?", "yes"), ("Is 13 prime?", "yes"))
    for n in (17, 19, 23):  # trusted, its input freed: the cassette says "serve any n"
        pending = before.lookup("ns", ask(f"Is {n} prime?"))
        trust_ledger.conclude(before.backend, pending.verify, answer("yes"), before.trust)
    text = cassette.cassette_text(before.backend, "primes")
    assert isinstance(before.lookup("ns", ask("Is 9 prime?")), Hit), "the cassette's template serves new values"

    live = Cache(tmp_path / "live-db", trust=RULES)
    demoted = demoted_prime_template(live)
    import_text(live, text)
    entry = trust_ledger.read(live.backend, demoted.node_id, demoted.reply_id)
    assert entry["state"] == DEMOTED
    result = live.lookup("ns", ask("Is 9 prime?"))
    assert not isinstance(result, Hit), served_text(result)
    # Learned again from more runs (the next misses), it stays demoted.
    teach(live, ("Is 37 prime?", "yes"), ("Is 41 prime?", "yes"))
    assert trust_ledger.read(live.backend, demoted.node_id, demoted.reply_id)["state"] == DEMOTED
    assert not isinstance(live.lookup("ns", ask("Is 9 prime?")), Hit)


def test_a_demotion_kept_in_a_cassette_survives_import_and_learning_again(tmp_path):
    # A cassette's trust entries carry no clock (since=0): imported where the template's
    # node already stands (created later than 0), learning it again must not start it over.
    recorded = Cache(tmp_path / "cassette-db", trust=RULES)
    demoted = demoted_prime_template(recorded)
    text = cassette.cassette_text(recorded.backend, "primes")
    assert trust_ledger.read(recorded.backend, demoted.node_id, demoted.reply_id)["state"] == DEMOTED

    live = Cache(tmp_path / "live-db", trust=RULES)
    teach(live, ("Is 4 prime?", "no"), ("Is 6 prime?", "no"))  # the same template node, another reply
    assert live.backend.node(demoted.node_id).created > 0
    import_text(live, text)
    teach(live, ("Is 37 prime?", "yes"), ("Is 41 prime?", "yes"))
    entry = trust_ledger.read(live.backend, demoted.node_id, demoted.reply_id)
    assert entry["state"] == DEMOTED, entry


def test_a_demotion_brought_by_an_export_survives_learning_again_where_the_node_is_newer(tmp_path):
    from butter.store.portable import write_export
    recorded = Cache(tmp_path / "export-db", trust=RULES)
    demoted = demoted_prime_template(recorded)
    out = io.StringIO()
    write_export(recorded.backend, out)
    live = Cache(tmp_path / "live-db", trust=RULES)
    teach(live, ("Is 4 prime?", "no"), ("Is 6 prime?", "no"))  # the node stands here, created after the demotion
    assert live.backend.node(demoted.node_id).created > trust_ledger.read(recorded.backend, demoted.node_id,
                                                                         demoted.reply_id)["since"]
    import_text(live, out.getvalue())
    teach(live, ("Is 37 prime?", "yes"), ("Is 41 prime?", "yes"))
    assert trust_ledger.read(live.backend, demoted.node_id, demoted.reply_id)["state"] == DEMOTED


# -- 4. a declared recording and a learned template's trust --------------------------------------

def test_a_request_recorded_with_butter_bindings_leaves_a_demoted_learned_template_demoted(tmp_path):
    # note_declared replaces the entry at its key whole, but a declared template node is
    # marked as declared in its content: even with the learned slot's very name, its node
    # (and so its key) is never a learned template's.
    cache = Cache(tmp_path / "db", trust=RULES)
    demoted = demoted_prime_template(cache)
    declared = cache.record_bound("ns", ask("Is 11 prime?"), answer("yes"), {"v1": "11"})
    assert declared != demoted.node_id
    entry = trust_ledger.read(cache.backend, demoted.node_id, demoted.reply_id)
    assert entry["state"] == DEMOTED and entry["source"] == "learned", entry
