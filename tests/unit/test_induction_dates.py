"""Induction: a reply's date that is the conversation's date moved by some days.

"Today is 2026-12-03." and "What's the weather in Porto tomorrow?" lead to
`get_forecast(date="2026-12-04")`: the reply's date is in no message, so no
slot holds it. When every recorded run's reply date is one ISO date slot
plus the same number of days, the reply writes `{{today +1d}}`; anything
less clear (other offsets, two slots that would both do, the date spelled
somewhere in the conversation, a date that is no ISO date) stays exact.
These tests build runs through the real OpenAI Chat adapter.
"""
from __future__ import annotations

import json

from butter.store import Cache, Hit
from butter.store.induction import Proposal, Rejected, propose
from butter.store.templates import parse_text, render_reply
from tests.unit.test_induction import bindings_for as walk
from tests.unit.test_induction_values import ON_INDUCTIONS_WORD, arguments, observations, record, run


def system(today: str) -> str:
    return f"You are a weather assistant. Today is {today}. Use the tools."


def forecast(today: str, city: str, day: str, tmax: float = 11.5):
    """A weather run: the forecast call for `day`, then the answer quoting its result."""
    return run(f"What's the weather in {city} tomorrow?", [
        ("call", "get_forecast", {"city": city, "date": day}, {"date": day, "tmax": tmax}),
        ("say", f"On {day} in {city}: up to {tmax} °C."),
    ], system=system(today))


def date_argument(proposal: Proposal) -> tuple:
    """The slot part of the reply template's `date` argument."""
    value = proposal.reply["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]["value"]["date"]
    assert value["$butter"] == "dates", value  # a kind of its own: an older butter refuses to render it
    parts = parse_text(value["t"])
    assert len(parts) == 3 and parts[0] == parts[2] == "", value
    return parts[1]


# A month end (11-30 -> 12-01) and an ordinary day: one offset, +1.
PORTO = forecast("2026-11-30", "Porto", "2026-12-01")
LYON = forecast("2026-12-03", "Lyon", "2026-12-04", 7.0)


def test_a_reply_date_one_day_after_today_in_two_runs_is_learned_as_an_offset_across_a_month_end():
    proposal = propose(observations([PORTO, LYON], 0))
    assert isinstance(proposal, Proposal), proposal
    today, days = date_argument(proposal)
    assert days == 1 and proposal.slots[today] == "date"
    graz = forecast("2027-02-28", "Graz", "2027-03-01")[0]
    bound = walk(proposal, graz[0].messages)
    assert bound is not None and bound[today] == "2027-02-28"
    assert arguments(render_reply(proposal.reply, bound)) == {"city": "Graz", "date": "2027-03-01"}


def test_a_learned_offset_renders_across_a_year_end():
    proposal = propose(observations([PORTO, LYON], 0))
    bound = walk(proposal, forecast("2026-12-31", "Turku", "2027-01-01")[0][0].messages)
    assert arguments(render_reply(proposal.reply, bound))["date"] == "2027-01-01"


def test_runs_whose_reply_dates_are_different_offsets_from_today_teach_no_template():
    in_two_days = forecast("2026-12-03", "Lyon", "2026-12-05")
    result = propose(observations([PORTO, in_two_days], 0))
    assert isinstance(result, Rejected), result
    assert "does not explain" in result.reason


def test_an_offset_is_not_learned_from_a_date_that_is_not_iso():
    # "12/03/2026" may be read month-first or day-first: no days are counted from it.
    def us(today: str, city: str, day: str):
        return run(f"What's the weather in {city} tomorrow?",
                   [("call", "get_forecast", {"city": city, "date": day}, {})], system=system(today))

    result = propose(observations([us("11/30/2026", "Porto", "2026-12-01"), us("12/03/2026", "Lyon", "2026-12-04")], 0))
    assert isinstance(result, Rejected), result


def booking(today: str, arrive: str, city: str, day: str):
    return run(f"I arrive in {city} on {arrive}. Book a tour for the day after.", [
        ("call", "book_tour", {"city": city, "date": day}, {"ok": True})], system=system(today))


def test_two_date_slots_that_explain_the_reply_date_equally_well_teach_no_offset():
    # Arrival is two days after today in both runs: "today + 3" and "arrival + 1"
    # give the same dates, and which one the model counted from is unknown.
    a = booking("2026-11-30", "2026-12-02", "Porto", "2026-12-03")
    b = booking("2026-12-10", "2026-12-12", "Lyon", "2026-12-13")
    result = propose(observations([a, b], 0))
    assert isinstance(result, Rejected), result


def test_when_only_one_date_slot_explains_the_reply_date_the_offset_is_taken_from_it():
    a = booking("2026-11-30", "2026-12-02", "Porto", "2026-12-03")
    b = booking("2026-12-10", "2026-12-20", "Lyon", "2026-12-21")
    proposal = propose(observations([a, b], 0))
    assert isinstance(proposal, Proposal), proposal
    slot, days = date_argument(proposal)
    assert days == 1 and proposal.bindings[0][slot] == "2026-12-02"


def choose_slot(today: str, city: str, offered: list[str], day: str):
    return run(f"Book the next free slot after tomorrow in {city}.", [
        ("call", "list_slots", {"city": city}, {"slots": [{"day": d} for d in offered]}),
        ("call", "book_slot", {"city": city, "day": day}, {"ok": True})], system=system(today))


def test_a_reply_date_the_conversation_spells_is_not_taken_for_an_offset():
    # The booked day is today + 2 in both runs, but it is also the second
    # slot a tool listed: the model may have copied it from there. Lists of
    # other lengths leave that item free (no slot), so nothing explains the
    # date but the offset, and the offset is refused.
    a = choose_slot("2026-11-30", "Porto", ["2026-12-01", "2026-12-02", "2026-12-05"], "2026-12-02")
    b = choose_slot("2026-12-03", "Lyon", ["2026-12-04", "2026-12-05"], "2026-12-05")
    result = propose(observations([a, b], 1))
    assert isinstance(result, Rejected), result


def test_a_stored_offset_template_serves_every_step_of_a_run_on_another_day(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)
    record(cache, PORTO)
    record(cache, LYON)
    for conversation, reply in forecast("2026-12-31", "Bergen", "2027-01-01", 3.5):
        hit = cache.lookup("ns", conversation)
        assert isinstance(hit, Hit), hit
        assert render_reply(hit.reply, hit.bindings)["choices"] == reply["choices"]
        assert json.loads(json.dumps(hit.reply)) == hit.reply  # plain JSON in the tree
    cache.close()
