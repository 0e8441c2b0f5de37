"""Templates: slot shapes, matching, explanations, rendering, declared bindings."""
from __future__ import annotations

import json

import pytest

from butter.store import Cache, Conversation, Hit, Miss
from butter.store.templates import (ABSENT, COMPACT, LENGTH, VARYING, RenderError, any_marker, bind_message, bind_reply,
                             common_shape,
                             explain_mismatch, json_marker, keys_marker, list_marker, match_message, match_stored,
                             number_marker, opt_marker,
                             parse_text, placeholder, render_reply, render_text, shape_of, slots_in,
                             template_content, text_marker, varying_elements, varying_text)

TRICKY = 'Zoë "Z" O\'Brien \\ 東京 \u2028 {{not_a_slot}}'


def user(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def tool(text: str) -> dict:
    return {"role": "tool", "tool_call_ref": "call#0", "content": [{"type": "text", "text": text}]}


ORDER_TEMPLATE = template_content(user(text_marker("Please refund order {{order_id}}.")), {"order_id": "number"})


@pytest.mark.parametrize("value,shape", [
    ("1234", "number"), ("-17.5", "number"), ("2024-05-01", "date"), ("2024-05-01T10:31:00Z", "date"),
    ("ana@example.com", "email"), ("ORD-1234", "identifier"), ("3f2a9c1e-0b1d-4c55-9a1e-2b7d5c3e8f10", "identifier"),
    ("refund", "text"), ("Ana Ruiz", "text"),
])
def test_a_value_has_the_most_specific_shape_it_fits(value, shape):
    assert shape_of(value) == shape


def test_the_common_shape_of_mixed_values_is_the_most_specific_all_fit():
    assert common_shape(["1234", "9876"]) == "number"
    assert common_shape(["1234", "ORD-9"]) == "identifier"
    assert common_shape(["1234", "refund"]) == "text"


def test_a_text_template_binds_the_slot_of_a_matching_message():
    assert match_message(ORDER_TEMPLATE, user("Please refund order 5555."), {}) == {"order_id": "5555"}


def test_a_slot_matches_only_values_of_its_shape():
    assert match_message(ORDER_TEMPLATE, user("Please refund order all-of-them."), {}) is None
    assert "not a number" in explain_mismatch(ORDER_TEMPLATE, user("Please refund order all-of-them."), {})


def test_a_changed_literal_does_not_match_and_the_explanation_names_it():
    assert match_message(ORDER_TEMPLATE, user("Please cancel order 5555."), {}) is None
    assert "literal 'Please refund order '" in explain_mismatch(ORDER_TEMPLATE, user("Please cancel order 5555."), {})


def test_a_name_bound_twice_must_agree():
    twice = template_content(user(text_marker("Move {{id}} to {{id}}.")), {"id": "number"})
    assert match_message(twice, user("Move 7 to 7."), {}) == {"id": "7"}
    assert match_message(twice, user("Move 7 to 8."), {}) is None
    assert match_message(ORDER_TEMPLATE, user("Please refund order 5555."), {"order_id": "1234"}) is None
    assert "earlier" in explain_mismatch(ORDER_TEMPLATE, user("Please refund order 5555."), {"order_id": "1234"})


def test_matching_backtracks_when_the_first_split_fails():
    t = template_content(user(text_marker("{{a}}.{{b}}.")), {"a": "text", "b": "number"})
    # Ending `a` at the first "." leaves b = "y.5", not a number: the matcher backs up to a = "x.y".
    assert match_message(t, user("x.y.5."), {}) == {"a": "x.y", "b": "5"}


def test_json_content_matches_field_by_field_and_constant_fields_stay_literal():
    t = template_content(tool(json_marker({"order_id": text_marker("{{order_id}}"), "amount": number_marker("amount"),
                                           "status": "paid"})), {"order_id": "number", "amount": "number"})
    concrete = tool(json.dumps({"status": "paid", "amount": 17.0, "order_id": "9876"}, indent=2))
    assert match_message(t, concrete, {}) == {"order_id": "9876", "amount": "17.0"}
    refunded = tool(json.dumps({"order_id": "9876", "amount": 17.0, "status": "refunded"}))
    assert match_message(t, refunded, {}) is None
    assert "status: literal 'paid'" in explain_mismatch(t, refunded, {})
    extra = tool(json.dumps({"order_id": "9876", "amount": 17.0, "status": "paid", "note": "x"}))
    assert match_message(t, extra, {}) is None


def test_a_number_slot_takes_json_numbers_only_never_strings_or_booleans():
    t = template_content(tool(json_marker({"amount": number_marker("amount")})), {"amount": "number"})
    assert match_message(t, tool('{"amount": 5}'), {}) == {"amount": "5"}
    assert match_message(t, tool('{"amount": "5"}'), {}) is None
    assert match_message(t, tool('{"amount": true}'), {}) is None


def test_literals_compare_by_type_not_loose_equality():
    t = template_content({"role": "user", "flag": True, "content": text_marker("{{x}}")}, {"x": "text"})
    assert match_message(t, {"role": "user", "flag": 1, "content": "a"}, {}) is None


def test_double_braces_are_escaped_in_template_text():
    assert parse_text("a {{{{b}} {{c}}") == ["a {{b}} ", ("c",), ""]
    t = template_content(user(text_marker("say {{{{x}} to {{name}}")), {"name": "text"})
    assert match_message(t, user("say {{x}} to Ana"), {}) == {"name": "Ana"}


def test_rendering_fills_text_numbers_and_json_arguments():
    reply = {"choices": [{"message": {
        "content": text_marker("Refunded {{amount}} for order {{order_id}} ({{customer}})."),
        "tool_calls": [{"function": {"name": "refund", "arguments": json_marker(
            {"order_id": text_marker("{{order_id}}"), "amount": number_marker("amount")}, (", ", ": ", True))}}]}}]}
    out = render_reply(reply, {"amount": "99.9", "order_id": "5555", "customer": "Cy Diaz"})
    message = out["choices"][0]["message"]
    assert message["content"] == "Refunded 99.9 for order 5555 (Cy Diaz)."
    assert message["tool_calls"][0]["function"]["arguments"] == '{"order_id": "5555", "amount": 99.9}'


def test_a_value_with_quotes_backslashes_and_unicode_renders_into_valid_json():
    reply = {"arguments": json_marker({"name": text_marker("Dear {{name}}"), "n": 1}, COMPACT)}
    out = render_reply(reply, {"name": TRICKY})
    assert json.loads(out["arguments"]) == {"name": "Dear " + TRICKY, "n": 1}


def test_rendering_without_a_value_or_with_a_non_number_refuses():
    with pytest.raises(RenderError):
        render_reply(text_marker("Hello {{name}}"), {})
    with pytest.raises(RenderError):
        render_reply({"amount": number_marker("amount")}, {"amount": "lots"})


def test_a_date_offset_renders_the_slots_date_moved_across_month_and_year_ends():
    reply = {"arguments": json_marker({"date": text_marker("{{today +1d}}")}, COMPACT),
             "content": text_marker("From {{today -1d}} to {{today +31d}}, not {{{{today +1d}}.")}
    out = render_reply(reply, {"today": "2026-12-31"})
    assert json.loads(out["arguments"]) == {"date": "2027-01-01"}
    assert out["content"] == "From 2026-12-30 to 2027-01-31, not {{today +1d}}."
    assert render_text("{{d +1d}}", {"d": "2028-02-28"}) == "2028-02-29"  # a leap day
    assert parse_text("{{today +1d}} {{today}}") == ["", ("today", 1), " ", ("today",), ""]
    assert placeholder("today", -3) == "{{today -3d}}" and placeholder("today") == "{{today}}"
    assert slots_in(reply) == {"today"}  # the slot reaches the reply
    # A kind of its own, so a butter that predates offsets refuses it instead of serving "{{today +1d}}".
    assert text_marker("{{today +1d}}")["$butter"] == "dates" and text_marker("{{today}}")["$butter"] == "text"


def test_a_date_offset_refuses_a_value_that_is_no_iso_date_and_offsets_past_a_year():
    for value in ("12/03/2026", "2026-12-03T10:00:00Z", "2026-02-30", "tomorrow"):
        with pytest.raises(RenderError):
            render_text("{{today +1d}}", {"today": value})
    with pytest.raises(RenderError):
        render_text("{{today +400d}}", {"today": "2026-12-03"})
    assert render_text("{{today -366d}}", {"today": "2026-12-03"}) == "2025-12-02"


def test_a_message_template_with_a_date_offset_matches_nothing():
    t = template_content(user(text_marker("Book the tour on {{today +1d}}.")), {"today": "date"})
    assert match_message(t, user("Book the tour on 2026-12-04."), {}) is None
    assert match_message(t, user("Book the tour on 2026-12-04."), {"today": "2026-12-03"}) is None
    assert "only in replies" in explain_mismatch(t, user("Book the tour on 2026-12-04."), {})


def test_declared_bindings_replace_whole_occurrences_longest_first():
    content = bind_message(user("Order 12 and 123 for Ana Ruiz (Ana)"), {"order": "12", "full": "Ana Ruiz", "first": "Ana"})
    assert content["message"]["content"][0]["text"] == text_marker("Order {{order}} and 123 for {{full}} ({{first}})")
    assert content["slots"] == {"first": "text", "full": "text", "order": "text"}
    assert bind_message(user("nothing declared here"), {"order": "12"}) is None


def test_declared_bindings_template_json_strings_field_by_field_keeping_their_style():
    args = json.dumps({"name": TRICKY, "amount": 42.5})
    reply = bind_reply({"arguments": args}, {"name": TRICKY, "amount": "42.5"})
    assert reply["arguments"]["value"] == {"name": text_marker("{{name}}"), "amount": number_marker("amount")}
    assert render_reply(reply, {"name": TRICKY, "amount": "42.5"}) == {"arguments": args}


# -- through the tree ---------------------------------------------------------------------

CONTEXT = {"api": "test", "model": "m"}


def conv(*messages: dict) -> Conversation:
    return Conversation(CONTEXT, tuple(messages))


def test_exact_children_are_tried_before_templates(tmp_path):
    cache = Cache(tmp_path / "db")
    system = {"role": "system", "content": "be brief"}
    cache.record_bound("ns", conv(system, user("Say hello to Steve")), {"content": "Hello Steve"}, {"name": "Steve"})
    cache.record("ns", conv(system, user("Say hello to Bob")), {"content": "Yo Bob"})
    exact = cache.lookup("ns", conv(system, user("Say hello to Bob")))
    assert isinstance(exact, Hit) and exact.bindings == {} and exact.reply == {"content": "Yo Bob"}
    templated = cache.lookup("ns", conv(system, user("Say hello to Mary Ann")))
    assert isinstance(templated, Hit) and templated.bindings == {"name": "Mary Ann"}
    assert render_reply(templated.reply, templated.bindings) == {"content": "Hello Mary Ann"}
    cache.close()


def test_declared_bindings_at_lookup_must_agree_with_the_message(tmp_path):
    cache = Cache(tmp_path / "db")
    cache.record_bound("ns", conv(user("Say hello to Steve")), {"content": "Hello Steve"}, {"name": "Steve"})
    assert isinstance(cache.lookup("ns", conv(user("Say hello to Ana")), {"name": "Ana"}), Hit)
    assert isinstance(cache.lookup("ns", conv(user("Say hello to Ana")), {"name": "Bo"}), Miss)
    cache.close()


def test_a_miss_names_the_deepest_node_the_first_differing_message_and_the_failed_literal(tmp_path):
    cache = Cache(tmp_path / "db")
    system = {"role": "system", "content": "be brief"}
    cache.record_bound("ns", conv(system, user("Please refund order 1234.")), {"content": "ok 1234"},
                       {"order_id": "1234"})
    miss = cache.lookup("ns", conv(system, user("Please cancel order 1234.")))
    assert isinstance(miss, Miss)
    assert miss.matched == 1 and miss.deepest == miss.path[-1] and miss.template is not None
    assert "literal 'Please refund order '" in miss.template_failure
    cache.close()


def test_content_that_spells_the_marker_key_is_never_templated():
    sneaky = {"role": "user", "content": {"$butter": "text", "t": "{{x}}"}, "name": "Steve"}
    assert bind_message(sneaky, {"name": "Steve"}) is None
    with pytest.raises(RenderError):
        bind_reply({"content": {"$butter": "number", "slot": "x"}}, {"x": "1"})


# -- structured data that may vary: any, optional fields, lists of any length -----------------

RESULTS = template_content(tool(json_marker({
    "query": text_marker("{{city}}"),
    "results": list_marker([{"id": text_marker("{{first_id}}"), "km": any_marker("number")}],
                           {"id": any_marker("string", "identifier"), "km": any_marker("number"),
                            "note": opt_marker(any_marker("string", "text"))}, 1, "n"),
})), {"city": "text", "first_id": "identifier", "n": "number"})


def results(items: list) -> dict:
    return tool(json.dumps({"query": "Graz", "results": items}))


def bound_slots(bindings: dict) -> dict:
    return {k: v for k, v in bindings.items() if k != VARYING}


def test_a_list_template_binds_its_head_and_length_and_lets_other_items_vary():
    items = [{"id": "G1", "km": 2}, {"id": "X9", "km": 7.5, "note": "far"}, {"id": "Q4", "km": 1}]
    bound = match_message(RESULTS, results(items), {})
    assert bound_slots(bound) == {"city": "Graz", "first_id": "G1", "n": "3"}
    assert slots_in(RESULTS["message"]) == {"city", "first_id", "n"}
    # What varies unbound is fingerprinted (a decision input to trust): the same items give
    # the same fingerprint, another value in an item another one.
    assert match_message(RESULTS, results(items), {})[VARYING] == bound[VARYING]
    other = [items[0], {**items[1], "km": 75}, items[2]]
    assert match_message(RESULTS, results(other), {})[VARYING] != bound[VARYING]


def test_what_varies_unbound_is_noted_per_field_with_absent_fields_and_a_free_length():
    items = [{"id": "G1", "km": 2}, {"id": "X9", "km": 7.5, "note": "far"}, {"id": "Q4", "km": 1}]
    noted = varying_elements(match_message(RESULTS, results(items), {})[VARYING])
    # The head item's id is a slot (not noted); its km and the others' values are, by field.
    assert noted == {"id": {"X9", "Q4"}, "km": {"2", "7.5", "1"}, "note": {"far"}, ABSENT: {"note"}}
    content = template_content(tool(json_marker({"orders": list_marker([], {"status": any_marker("string")}, 0)})), {})
    # No slot binds this list's length: it is noted, beside the items' values.
    listed = match_message(content, tool(json.dumps({"orders": [{"status": "shipped"}] * 3})), {})
    assert varying_elements(listed[VARYING]) == {"status": {"shipped"}, "orders" + LENGTH: {"3"}}


def test_unbound_values_are_kept_short_as_they_are_stored_with_every_verified_run():
    long = "x" * 500
    fields = {"note": [long], "id": [f"id{n}" for n in range(40)], "status": ["shipped"]}
    text = varying_text(fields)
    elements = varying_elements(text)
    assert long not in text and len(next(iter(elements["note"]))) < 40, "a long value is noted by a hash"
    assert len(elements["id"]) == 1, "a field with many values in one walk is one hash of them all"
    assert elements["status"] == {"shipped"}
    assert varying_text({**fields, "id": [f"id{n}" for n in range(41)]}) != text
    many = varying_text({f"field{n}": [f"value{n}-{k}" for k in range(10)] for n in range(200)})
    assert len(many) <= 1100 and varying_elements(many), "bounded however many fields a walk noted"
    assert varying_elements("varying-0123456789abcdef0123") == {}, "an older butter's hash names no field"


def test_a_list_template_refuses_too_few_items_unknown_fields_and_wrong_kinds():
    assert match_message(RESULTS, results([]), {}) is None
    assert match_message(RESULTS, results([{"id": "G1", "km": 2}, {"id": "X9", "km": 7, "gate": "B"}]), {}) is None
    assert match_message(RESULTS, results([{"id": "G1", "km": 2}, {"id": "X9", "km": "7"}]), {}) is None
    assert match_message(RESULTS, results([{"id": "G1", "km": 2}, {"id": "nine", "km": 7}]), {}) is None
    assert "at least 1 items" in explain_mismatch(RESULTS, results([]), {})


def test_an_optional_field_may_be_absent_but_a_required_one_may_not():
    content = template_content(tool(json_marker({"id": text_marker("{{id}}"), "note": opt_marker(any_marker("string"))})),
                               {"id": "identifier"})
    without, noted = (match_message(content, tool(text), {}) for text in ('{"id": "A1"}', '{"id": "A1", "note": "x\\ny"}'))
    assert bound_slots(without) == bound_slots(noted) == {"id": "A1"}
    assert without[VARYING] != noted[VARYING], "whether the field is there is fingerprinted too"
    assert match_message(content, tool('{"note": "x"}'), {}) is None
    assert match_message(content, tool('{"id": "A1", "note": 3}'), {}) is None


def test_the_compiled_matcher_lookups_use_agrees_with_match_message_on_structured_data():
    optional = template_content(tool(json_marker({"id": text_marker("{{id}}"), "note": opt_marker(any_marker("string"))})),
                                {"id": "identifier"})
    keyed = template_content({"sent": keys_marker([(text_marker("{{user}}"), any_marker("text")),
                                                   ("USR007", any_marker("text"))])}, {"user": "identifier"})
    items = [{"id": "G1", "km": 2}, {"id": "X9", "km": 7.5, "note": "far"}, {"id": "Q4", "km": 1}]
    cases = [(RESULTS, results(items), {}), (RESULTS, results(items), {"city": "Wien"}), (RESULTS, results([]), {}),
             (RESULTS, results([items[0], {"id": "nine", "km": 7}]), {}),
             (optional, tool('{"id": "A1"}'), {}), (optional, tool('{"id": "A1", "note": "x"}'), {}),
             (optional, tool('{"note": "x"}'), {}), (optional, tool('{"id": "A1", "note": 3}'), {}),
             (keyed, {"sent": {"ONYX119": "a", "USR007": "b"}}, {"user": "ONYX119"}),
             (keyed, {"sent": {"ONYX119": "a", "USR007": "b"}}, {}),
             (ORDER_TEMPLATE, user("Please refund order 5555."), {}), (ORDER_TEMPLATE, user("Please refund order 5555."),
                                                                      {"order_id": "1234"}),
             (template_content(user(text_marker("Book the tour on {{today +1d}}.")), {"today": "date"}),
              user("Book the tour on 2026-12-04."), {"today": "2026-12-03"}),
             (template_content({"role": "user", "n": 1, "content": "a"}, {}), {"role": "user", "n": 1.0, "content": "a"}, {}),
             (template_content({"role": "user", "n": 1, "content": "a"}, {}), {"role": "user", "n": True, "content": "a"}, {})]
    for content, message, bindings in cases:
        want = match_message(content, message, bindings)
        assert match_stored(content, message, bindings) == want, (content, message, bindings)
    assert sum(match_message(*case) is not None for case in cases) >= 6


@pytest.mark.parametrize("text,shapes,value,bindings", [
    ("{{a}}.{{b}}.", {"a": "text", "b": "number"}, "x.y.5.", {}),  # the first split's b is no number
    ("{{a}}.{{b}}.", {"a": "text", "b": "number"}, "x.y.5.", {"a": "x.y"}),  # bound already
    ("Move {{a}} to {{b}} to {{c}}.", {"a": "text", "b": "text", "c": "word"}, "Move 1 to to 2 to to 3 to 4.", {}),
    ("{{a}}{{b}} and {{c}}", {"a": "number", "b": "text", "c": "text"}, "12ab and cd and ef", {}),
    ("{{a}} {{b}} {{c}}!", {"a": "text", "b": "text", "c": "word"}, " ".join(["w"] * 300) + "!", {}),  # many ends
    ("{{a}} {{b}} {{c}}!", {"a": "text", "b": "text", "c": "text"}, " ".join(["w"] * 300) + "?", {}),
    ("{{a}}\n{{b}}", {"a": "text", "b": "text"}, "one\ntwo\nthree", {}),  # text holds no newline
    ("{{a}} {{a}}.", {"a": "text"}, "x y x y.", {}),  # a name twice
])
def test_the_compiled_split_of_a_text_into_slots_is_the_one_the_search_finds(text, shapes, value, bindings):
    content = template_content(user(text_marker(text)), shapes)
    assert match_stored(content, user(value), bindings) == match_message(content, user(value), bindings)
