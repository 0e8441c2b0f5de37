"""Trust earned from live traffic, through a real mitmdump, the openai SDK and a
fake model that decides by value (tests/fakes/value_model.py).

Two recorded runs teach a template by syntax; whether a third run's values
give the same answer is a question only the provider can settle. So a
learned template is first verified (the request goes to the provider, the
client gets the provider's answer, butter compares), promoted after
agreements on new values, demoted on one disagreement."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import openai
import pytest

from tests.e2e.harness import ROOT, Proxy
from tests.fakes import value_model



@pytest.fixture
def value_model_provider(provider):
    provider.handler = value_model.handler
    return provider


def client(api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)


def ask(sdk: openai.OpenAI, messages: list[dict], stream: bool = False) -> tuple[dict, dict]:
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages,
                                                        tools=value_model.TOOLS, stream=stream)
    if stream:
        content, calls = "", {}
        for chunk in raw.parse():
            for choice in chunk.choices:
                content += choice.delta.content or ""
                for tc in choice.delta.tool_calls or []:
                    entry = calls.setdefault(tc.index, {"id": tc.id, "function": {"name": "", "arguments": ""}})
                    entry["function"]["name"] += tc.function.name or ""
                    entry["function"]["arguments"] += tc.function.arguments or ""
        message = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = [dict(calls[i], type="function") for i in sorted(calls)]
    else:
        message = raw.parse().choices[0].message.model_dump(exclude_none=True)
    return message, dict(raw.headers)


def conversation(content: str) -> list[dict]:
    return [{"role": "system", "content": value_model.SYSTEM}, {"role": "user", "content": content}]


def prime(sdk, n: int, stream: bool = False) -> tuple[str, str]:
    message, headers = ask(sdk, conversation(f"Is {n} prime?"), stream)
    return message["content"], headers["butter-cache"]


def weather(sdk, city: str) -> tuple[str, dict]:
    message, headers = ask(sdk, conversation(f"What is the weather in {city}?"))
    return json.loads(message["tool_calls"][0]["function"]["arguments"])["query"], headers


def pay(sdk, invoice: str, balance: float) -> dict:
    messages, calls, cache = conversation(f"Please pay invoice {invoice}."), [], []
    for _ in range(4):
        message, headers = ask(sdk, messages)
        cache.append(headers["butter-cache"])
        messages.append(message)
        if not message.get("tool_calls"):
            return {"answer": message["content"], "calls": calls, "cache": cache}
        for tc in message["tool_calls"]:
            name = tc["function"]["name"]
            calls.append(name)
            result = {"invoice": invoice, "balance": balance} if name == "get_balance" else {"paid": True}
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": json.dumps(result)})
    raise AssertionError("the agent did not finish")


def check_orders(sdk, orders: list[dict]) -> dict:
    messages = conversation("Does any order need attention?")
    cache = []
    for _ in range(3):
        message, headers = ask(sdk, messages)
        cache.append(headers["butter-cache"])
        messages.append(message)
        if not message.get("tool_calls"):
            return {"answer": message["content"], "cache": cache}
        for tc in message["tool_calls"]:
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": json.dumps({"orders": orders})})
    raise AssertionError("the agent did not finish")


def cancel(sdk, order: str, status: str) -> dict:
    """The agent cancels an order: get_order, then the call the status decides, then "Done."."""
    messages, calls, cache, templates = conversation(f"Cancel order {order}."), [], [], []
    for _ in range(4):
        message, headers = ask(sdk, messages)
        cache.append(headers["butter-cache"])
        templates.append(headers.get("butter-template", ""))
        messages.append(message)
        if not message.get("tool_calls"):
            return {"calls": calls, "cache": cache, "templates": templates}
        for tc in message["tool_calls"]:
            calls.append(tc["function"]["name"])
            result = {"status": status} if tc["function"]["name"] == "get_order" else {"ok": True}
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": json.dumps(result)})
    raise AssertionError("the agent did not finish")


def settle(proxy: Proxy, api_key: str) -> None:
    """Wait (not a timing assertion) until every recorded miss so far has been learned from:
    induction works in order, so one more miss under its own model name is learned from last."""
    model = f"settle-{uuid.uuid4().hex[:12]}"
    client(api_key).chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}])
    wait_for(proxy, f"butter: induction openai-chat {model}:")


def wait_for(proxy: Proxy, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 60
    while proxy.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{proxy.log_text()[-3000:]}"
        time.sleep(0.05)


class Verifications:
    """Waits until the proxy has concluded N more verifications (their log lines)."""

    LINE = "butter: verified openai-chat gpt-4o-mini:"

    def __init__(self, proxy: Proxy):
        self.proxy, self.start = proxy, proxy.log_text().count(self.LINE)

    def wait(self, n: int) -> list[str]:
        wait_for(self.proxy, self.LINE, self.start + n)
        return [line for line in self.proxy.log_text().splitlines() if self.LINE in line][self.start:]


def butter_show(db: Path, node: str) -> str:
    # `python -m cli.main` from the checkout: this tree's CLI, as the `butter` command runs it.
    done = subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", str(db), "show", node], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


# -- decision inputs: values that decide the answer without appearing in it ---------------------

def test_a_prime_look_alike_is_answered_by_the_provider_never_by_the_template(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    assert prime(sdk, 7) == ("yes", "miss") and prime(sdk, 13, stream=True) == ("yes", "miss")
    settle(shared_proxy, api_key)
    assert "learned a template from 2 runs" in shared_proxy.log_text()
    verified = Verifications(shared_proxy)
    # The template "Is {{n}} prime?" -> "yes" matches 8; butter asks the provider instead.
    assert prime(sdk, 8) == ("no", "verify")
    assert "disagreed" in verified.wait(1)[0]
    assert prime(sdk, 9, stream=True) == ("no", "miss"), "a demoted template answered"
    # 8 and 9 may by now have taught "Is {{n}} prime?" -> "no": on probation, so 11 is verified too.
    answer, cache = prime(sdk, 11)
    assert answer == "yes" and cache in ("miss", "verify")
    assert prime(sdk, 7) == ("yes", "hit"), "the recorded run itself is still served"


def test_a_number_the_answer_states_beside_its_verdict_is_still_verified_after_the_template_is_promoted(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)

    def stated(n: int, stream: bool = False) -> tuple[str, str]:
        message, headers = ask(sdk, conversation(f"Is {n} a prime number?"), stream)
        return message["content"], headers["butter-cache"]

    assert stated(7)[1] == "miss" and stated(13, stream=True)[1] == "miss"
    settle(shared_proxy, api_key)
    verified = Verifications(shared_proxy)
    for n in (17, 19):  # two primes agree: "Yes, {{n}} is a prime number." is promoted
        assert stated(n) == (f"Yes, {n} is a prime number.", "verify")
    assert "(promoted;" in verified.wait(2)[1]
    assert stated(19) == ("Yes, 19 is a prime number.", "hit"), "a verified value is served"
    # 8 reaches the answer, yet the words around it are a verdict on it: the provider answers.
    assert stated(8, stream=True) == ("No, 8 is not a prime number.", "verify")
    assert "disagreed" in verified.wait(3)[2]
    assert stated(23)[1] != "hit", "a demoted template answered"


def test_a_balance_that_decides_the_answer_is_verified_and_the_run_answered_right(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    declined = {"calls": ["get_balance"], "cache": ["miss", "miss"]}
    for invoice, balance in (("4411", 20), ("4412", 35)):
        run = pay(sdk, invoice, balance)
        assert run == dict(declined, answer=f"Declined invoice {invoice}: the balance is too low.")
    settle(shared_proxy, api_key)
    rich = pay(sdk, "4413", 5000)
    assert rich["answer"] == "Paid invoice 4413." and rich["calls"] == ["get_balance", "pay"]
    # Step 1 is a template on probation; step 2's balance never reaches "Declined …": both verified.
    assert rich["cache"] == ["verify", "verify", "miss"]


def test_a_status_inside_a_list_that_decides_is_verified_though_the_list_length_was_seen(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    first = check_orders(sdk, [{"id": "A1", "status": "shipped"}, {"id": "A2", "status": "delivered"}])
    assert first == {"answer": "No, every order is on track.", "cache": ["miss", "miss"]}
    # The same question: its first step (list_orders) is the recorded one.
    second = check_orders(sdk, [{"id": "B1", "status": "packed"}, {"id": "B2", "status": "shipped"},
                                {"id": "B3", "status": "shipped"}])
    assert second == {"answer": "No, every order is on track.", "cache": ["hit", "miss"]}
    settle(shared_proxy, api_key)
    # Two orders, as in a recorded run, but one is lost: the list's items bind nothing and the
    # answer shows none of them, so only their fingerprint (`~varying`) tells this run apart.
    lost = check_orders(sdk, [{"id": "Z1", "status": "delivered"}, {"id": "Z2", "status": "lost"}])
    assert lost == {"answer": "Yes: order Z2 is lost.", "cache": ["hit", "verify"]}


def listed(prefix: str, *statuses: str) -> list[dict]:
    return [{"id": f"{prefix}{n}", "status": status} for n, status in enumerate(statuses, 1)]


def test_once_five_lists_freed_the_checker_a_status_never_seen_in_them_is_still_verified(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    assert check_orders(sdk, listed("A", "shipped", "delivered"))["cache"] == ["miss", "miss"]
    assert check_orders(sdk, listed("B", "packed", "shipped", "shipped"))["cache"] == ["hit", "miss"]
    settle(shared_proxy, api_key)
    verified = Verifications(shared_proxy)
    # Five lists, new ids every time, all on track: they agree, promote and free the inputs
    # (butter_verify_inputs_min). A fingerprint of each whole list would now serve any list.
    for n, statuses in enumerate((("delivered", "shipped"), ("shipped", "packed", "delivered"), ("shipped", "shipped"),
                                  ("packed", "delivered"), ("delivered", "shipped", "packed"))):
        run = check_orders(sdk, listed(f"V{n}", *statuses))
        assert run == {"answer": "No, every order is on track.", "cache": ["hit", "verify"]}, run
    assert "decision inputs freed" in verified.wait(5)[-1]
    # The ids were new in every run: free. The statuses came from three that repeat.
    fresh = check_orders(sdk, listed("F", "delivered", "shipped"))
    assert fresh == {"answer": "No, every order is on track.", "cache": ["hit", "hit"]}
    lost = check_orders(sdk, listed("Z", "shipped", "lost"))
    assert lost == {"answer": "Yes: order Z2 is lost.", "cache": ["hit", "verify"]}


def learn_weather(proxy: Proxy, through, api_key: str) -> tuple[openai.OpenAI, Verifications]:
    """Two recorded cities, learned from: `search_location(query={{city}})` on probation."""
    through(proxy)
    sdk = client(api_key)
    assert [weather(sdk, city)[0] for city in ("Paris", "Berlin")] == ["Paris", "Berlin"]
    settle(proxy, api_key)
    return sdk, Verifications(proxy)


# -- a value the model rewrites ---------------------------------------------------------------

def test_a_city_the_model_rewrites_is_answered_by_the_provider_and_never_served_from_the_template(
        shared_proxy, through, value_model_provider, api_key):
    sdk, verified = learn_weather(shared_proxy, through, api_key)
    query, headers = weather(sdk, "Milan")
    assert (query, headers["butter-cache"]) == ("Milano", "verify"), "the client got the template's verbatim city"
    line = verified.wait(1)[0]
    assert "wrote a value its own way" in line and "stays" in line, line
    shown = butter_show(shared_proxy.db, headers["butter-template"])
    assert "1 rewritten" in shown, shown
    # Milan is never served from the template: the provider's own answer, recorded, is.
    query, headers = weather(sdk, "Milan")
    assert (query, headers["butter-cache"], headers.get("butter-template")) == ("Milano", "hit", None)
    # The template goes on earning trust on the cities the model copies.
    query, headers = weather(sdk, "Rome")
    assert (query, headers["butter-cache"]) == ("Rome", "verify")
    assert "agreed" in verified.wait(2)[-1]


# -- promotion, and what `butter show` says on the way --------------------------------------------

def test_a_template_is_promoted_after_two_agreements_then_serves_the_cities_the_model_copied(
        shared_proxy, through, value_model_provider, api_key):
    sdk, verified = learn_weather(shared_proxy, through, api_key)
    query, headers = weather(sdk, "Rome")
    assert (query, headers["butter-cache"]) == ("Rome", "verify")
    verified.wait(1)
    shown = butter_show(shared_proxy.db, headers["butter-template"])
    assert re.search(r"trust\s+probation \(1 of 2 verified agreements", shown), shown
    assert weather(sdk, "Madrid")[1]["butter-cache"] == "verify"
    assert "(promoted;" in verified.wait(2)[1]
    shown = butter_show(shared_proxy.db, headers["butter-template"])
    assert re.search(r"trust\s+trusted \(2 of 2", shown) and "copied verbatim" in shown, shown
    calls = len(value_model_provider.calls)
    for city in ("Paris", "Rome", "Madrid"):  # recorded or verified: the model copied them verbatim
        query, headers = weather(sdk, city)
        assert (query, headers["butter-cache"]) == (city, "hit")
    assert len(value_model_provider.calls) == calls, "a promoted template still went to the provider"
    # A city never seen: how the model spells it only the provider can say.
    query, headers = weather(sdk, "Oslo")
    assert (query, headers["butter-cache"]) == ("Oslo", "verify")

def first_call(sdk: openai.OpenAI, content: str) -> tuple[dict, dict]:
    """The arguments of the tool call the model answers `content` with, and the response headers."""
    message, headers = ask(sdk, conversation(content))
    return json.loads(message["tool_calls"][0]["function"]["arguments"]), headers


def learned_then_verified(proxy: Proxy, api_key: str, sdk: openai.OpenAI, prompt, field: str,
                          taught: tuple[str, ...], verified_values: tuple[str, ...]) -> None:
    """Runs recorded and learned from, then each later value verified (the provider agreeing), one by one."""
    assert [first_call(sdk, prompt(v))[1]["butter-cache"] for v in taught] == ["miss"] * len(taught)
    settle(proxy, api_key)
    verified = Verifications(proxy)
    for n, value in enumerate(verified_values, 1):
        arguments, headers = first_call(sdk, prompt(value))
        assert (arguments[field], headers["butter-cache"]) == (value, "verify"), value
        verified.wait(n)


def test_a_city_the_user_quoted_is_served_after_five_cities_were_copied_verbatim(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    question = "What is the weather in '{}'?".format
    # Promoted after two agreements; a quoted city never seen is still verified until five were copied.
    learned_then_verified(shared_proxy, api_key, sdk, question, "query", ("Paris", "Berlin"),
                          ("Rome", "Madrid", "Vienna"))
    arguments, headers = first_call(sdk, question("Oslo"))
    assert (arguments["query"], headers["butter-cache"]) == ("Oslo", "hit"), \
        "five cities copied verbatim freed the quoted slot"
    shown = butter_show(shared_proxy.db, headers["butter-node"])
    assert "quoted by the user" in shown and "freed" in shown, shown


def test_an_address_whose_street_and_city_were_copied_verbatim_is_served_with_new_numbers(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    ship = "Ship my order to {}.".format
    learned_then_verified(shared_proxy, api_key, sdk, ship, "address", ("12 Elm Street, Lyon 69001",
                                                                        "8 Mill Lane, Graz 8010"),
                          ("30 Mill Lane, Lyon 69003", "5 Elm Street, Graz 8020"))
    # House numbers and postcodes are data the model copies; the street and the city it was seen copying.
    arguments, headers = first_call(sdk, ship("140 Elm Street, Lyon 69300"))
    assert (arguments["address"], headers["butter-cache"]) == ("140 Elm Street, Lyon 69300", "hit")
    # A city never seen copied: this model writes Warsaw its own way, and only the provider can say so.
    arguments, headers = first_call(sdk, ship("140 Elm Street, Warsaw 00950"))
    assert (arguments["address"], headers["butter-cache"]) == ("140 Elm Street, Warszawa 00950", "verify")


TWEETS = ("Sunrise over the harbour, coffee in hand, ready for the long drive north",
          "Packed the car, charged the phones, and the dog is already asleep in the back",
          "Three hundred miles of coastline ahead and not a single cloud in the sky",
          "Stopped for pancakes at the diner everyone told us about, worth every mile",
          "The ferry was late but the sunset from the deck made up for all of it",
          "Last night on the road, tomorrow the long climb back into the real world")


def test_a_long_text_the_user_quotes_and_the_call_passes_on_is_learned_and_served_with_the_run_s_own_text(
        shared_proxy, through, value_model_provider, api_key):
    # Fourteen-odd words: as prose, far too long to be a value; passed on whole, they are the call's data.
    through(shared_proxy)
    sdk = client(api_key)
    post = "Please post this for me on Twitter: '{}'".format
    # Promoted after two agreements; quoted, so five texts copied verbatim free it.
    learned_then_verified(shared_proxy, api_key, sdk, post, "content", TWEETS[:2], TWEETS[2:5])
    arguments, headers = first_call(sdk, post(TWEETS[5]))
    assert (arguments, headers["butter-cache"]) == ({"content": TWEETS[5]}, "hit"), \
        "the run's own text, served from the template"


def test_a_request_that_opts_out_is_not_used_as_a_verification(
        shared_proxy, through, value_model_provider, api_key):
    sdk, _ = learn_weather(shared_proxy, through, api_key)
    quiet = openai.OpenAI(api_key=api_key, max_retries=0, timeout=20, default_headers={"butter-verify": "off"})
    query, headers = weather(quiet, "Milan")
    assert (query, headers["butter-cache"]) == ("Milano", "miss")
    assert not any("butter-verify" in c.headers for c in value_model_provider.calls)
    # Not a verification, so the template is still on probation: the next city verifies it.
    assert weather(sdk, "Rome")[1]["butter-cache"] == "verify"


# -- sampled re-checks of trusted templates ----------------------------------------------------

def test_a_sampled_recheck_that_disagrees_demotes_a_trusted_template(
        start_proxy, through, value_model_provider, api_key):
    # Decision inputs freed after two verified values (the default is five), and every
    # hit with a new value re-checked: the loosened rule serves "Is 9 prime?" wrong once,
    # and the re-check is what demotes the template.
    proxy = start_proxy(options={"butter_verify_inputs_min": 2, "butter_verify_inputs_sample": 1})
    through(proxy)
    sdk = client(api_key)
    assert [prime(sdk, n)[1] for n in (7, 13)] == ["miss", "miss"]
    settle(proxy, api_key)
    verified = Verifications(proxy)
    assert [prime(sdk, n) for n in (17, 19)] == [("yes", "verify"), ("yes", "verify")]
    assert "decision inputs freed" in verified.wait(2)[1]
    assert prime(sdk, 9) == ("yes", "hit")
    # ...re-asked off the request path, with the client's own headers: the provider says "no".
    recheck = verified.wait(3)[2]
    assert "disagreed" in recheck and "(demoted)" in recheck
    assert value_model_provider.calls[-1].json["messages"][-1]["content"] == "Is 9 prime?"
    assert value_model_provider.calls[-1].headers["authorization"] == f"Bearer {api_key}"
    assert prime(sdk, 23)[1] == "miss", "a demoted template was served"


def test_a_status_that_demoted_a_template_becomes_a_branch_of_its_own_learned_from_later_runs(
        shared_proxy, through, value_model_provider, api_key):
    through(shared_proxy)
    sdk = client(api_key)
    for order, status in (("1001", "pending"), ("1002", "processing")):
        assert cancel(sdk, order, status)["calls"] == ["get_order", "cancel_order"]
    settle(shared_proxy, api_key)
    verified = Verifications(shared_proxy)
    for n, (order, status) in enumerate((("1003", "on_hold"), ("1004", "new")), 1):  # promoted
        run = cancel(sdk, order, status)
        assert run["calls"] == ["get_order", "cancel_order"] and run["cache"][1] == "verify", run
        verified.wait(n)
    shipped = cancel(sdk, "1005", "shipped")
    assert shipped["calls"] == ["get_order", "create_return"] and shipped["cache"][1] == "verify", shipped
    assert "demoted" in verified.wait(3)[-1]
    # The template that let the status vary is dead; a pending order goes to the provider ...
    pending = cancel(sdk, "1006", "pending")
    assert pending["calls"] == ["get_order", "cancel_order"] and pending["cache"][1] == "miss", pending
    settle(shared_proxy, api_key)
    # ... and with the first pending run it is a branch: "status": "pending" literal, on probation.
    branch = cancel(sdk, "1007", "pending")
    assert branch["calls"] == ["get_order", "cancel_order"] and branch["cache"][1] == "verify", branch
    verified.wait(4)
    demoted, learned = shipped["templates"][1], branch["templates"][1]
    assert demoted and learned and learned != demoted, (demoted, learned)
    assert re.search(r"trust\s+demoted .*decided by status", butter_show(shared_proxy.db, demoted))
    assert re.search(r"trust\s+probation \(1 of 2", butter_show(shared_proxy.db, learned))
