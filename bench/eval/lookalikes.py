"""Look-alikes that syntax cannot tell apart: the deciding value is absent from the reply,
or stated in it beside a verdict it decides.

Every flow here is a template a careful induction learns from its recorded
runs (they differ only in values, and their replies agree), and every
look-alike run differs from them in one value only; but that value decides
the answer, and the reply never shows it, or the model writes the value in a
form of its own:

- numbers vs a threshold: a balance against an invoice (the issue's own
  example: declined for 20 and 35, then 5000);
- primes ("Is 7 prime?" "Yes." then "Is 9 prime?");
- dates inside or outside a return window, today fixed in the system prompt;
- an enum status in a JSON tool result that decides the next call
  (`pending`/`processing` cancel, `shipped` opens a return);
- a list whose length decides (several results: ask which; one: take it);
- model-rewritten values (Milan -> "Milano", Warsaw -> "Warszawa",
  Hangzhou -> "Hangzhou, China" in the tool call);
- a number the reply passes into a tool call, which also decides the call
  (up to a limit `send_payment(amount=…)`, above it `request_approval`);
- a status inside a list's items (one order among several cancelled): the
  items' varying fields bind nothing, so only their fingerprint tells;
- the deciding value stated in the reply ("Yes, 7 is a prime number.",
  "a balance of 20.5 EUR is too low"): it reaches the reply, and the words
  around it are still a verdict on it.

Held-out runs keep the recorded answer (other values on the same side of
the decision); look-alikes change it. `probation` runs are live traffic
after the recorded runs: held-out-like and look-alike runs shuffled, as an
agent's real traffic would mix them. Only verification against the
provider (store/trust.py, option butter_verify) can catch these: with it
off, wrong hits are expected here.
"""
from __future__ import annotations

import json
import random
from functools import partial
from typing import Callable

from .script import Run, Turn
from .tool_workflows import call, say, tool
from .workloads import Flow, Workload

SYSTEM = "You are a careful assistant. Use the tools when you need data. Answer briefly."
TODAY_SYSTEM = ("You are the returns desk of an online shop. Today is 2026-12-03. Returns are accepted within 30 "
                "days of delivery. Use the tools. Answer in one sentence.")
TOOLS = (
    tool("get_balance", "An account's balance", account="string"),
    tool("get_order", "An order by id", order_id="string"),
    tool("cancel_order", "Cancel an order that has not shipped", order_id="string"),
    tool("create_return", "Open a return for a shipped order", order_id="string"),
    tool("search_restaurants", "Restaurants near a postcode", cuisine="string", postcode="string"),
    tool("get_restaurant", "A restaurant's details", restaurant_id="string"),
    tool("search_location", "Find a place by name", query="string"),
    tool("get_weather", "Current weather at a place id", location_id="string"),
    tool("list_orders", "The user's open orders"),
    tool("send_payment", "Pay a payee (up to 1000.00 EUR)", amount="number", payee="string"),
    tool("request_approval", "Ask a manager to approve a payment above 1000.00 EUR", amount="number",
         payee="string"),
)
CUISINES = ["thai", "italian", "mexican", "korean", "lebanese", "ethiopian", "greek", "peruvian"]


def _account(r: random.Random) -> str:
    return f"ACC-{r.randint(100000, 999999)}"


def _order(r: random.Random) -> str:
    return f"{r.randint(100000, 999999)}"


# -- each set: (make(r, same_answer: bool) -> turns) ---------------------------------------------

def balance(r: random.Random, same: bool, stated: bool = False) -> list[Turn]:
    """`stated`: the answer quotes the balance beside its verdict (and the question differs,
    so the two sets never share a tree path)."""
    account = _account(r)
    value = round(r.uniform(3, 95), 2) if same else round(r.uniform(150, 9000), 2)
    result = {"account": account, "balance": value, "currency": "EUR"}
    if stated:
        question = f"What is the balance of account {account}, and does it cover an invoice of 100.00 EUR?"
        answer = (f"No, a balance of {value} EUR is too low to pay the 100.00 EUR invoice." if value < 100
                  else f"Yes, a balance of {value} EUR covers the 100.00 EUR invoice.")
    else:
        question = f"Can account {account} pay an invoice of 100.00 EUR?"
        answer = ("No, the balance is too low to pay the 100.00 EUR invoice." if value < 100
                  else "Yes, the balance covers the 100.00 EUR invoice.")
    return [Turn(question, TOOLS, (call("get_balance", {"account": account}, result), say(answer)))]


PRIMES = [p for p in range(11, 400) if all(p % d for d in range(2, int(p ** 0.5) + 1))]
COMPOSITES = [n for n in range(11, 400) if n % 2 and n not in PRIMES]


def prime(r: random.Random, same: bool) -> list[Turn]:
    n = r.choice(PRIMES if same else COMPOSITES)
    return [Turn(f"Is {n} a prime number? Answer yes or no.", TOOLS, (say("Yes." if n in PRIMES else "No."),))]


def prime_stated(r: random.Random, same: bool) -> list[Turn]:
    """The verdict in a sentence that repeats the number: the value reaches the reply, and the
    rest of the reply is still decided by it."""
    n = r.choice(PRIMES if same else COMPOSITES)
    answer = f"Yes, {n} is a prime number." if n in PRIMES else f"No, {n} is not a prime number."
    return [Turn(f"Is {n} a prime number?", TOOLS, (say(answer),))]


def return_window(r: random.Random, same: bool) -> list[Turn]:
    order = _order(r)
    day = r.randint(4, 30) if same else r.randint(1, 28)
    delivered = f"2026-11-{day:02d}" if same else f"2026-{r.randint(6, 10):02d}-{day:02d}"
    result = {"order_id": order, "delivered_on": delivered, "total": round(r.uniform(10, 400), 2)}
    answer = (f"Yes, order {order} can still be returned." if same
              else f"No, the 30-day return window for order {order} has closed.")
    return [Turn(f"Can I still return order {order}?", TOOLS, (call("get_order", {"order_id": order}, result),
                                                               say(answer)))]


def cancel_status(r: random.Random, same: bool, status: str | None = None) -> list[Turn]:
    order = _order(r)
    status = status or r.choice(["pending", "processing"] if same else ["shipped", "delivered"])
    result = {"order_id": order, "status": status, "items": r.randint(1, 5)}
    if status in ("pending", "processing"):
        steps = (call("get_order", {"order_id": order}, result),
                 call("cancel_order", {"order_id": order}, {"order_id": order, "cancelled": True}),
                 say(f"Order {order} is cancelled."))
    else:
        steps = (call("get_order", {"order_id": order}, result),
                 call("create_return", {"order_id": order}, {"order_id": order, "return_id": f"RT-{r.randint(1000, 9999)}"}),
                 say(f"Order {order} had already shipped, so I opened a return instead."))
    return [Turn(f"Please cancel order {order}.", TOOLS, steps)]


def list_length(r: random.Random, same: bool) -> list[Turn]:
    cuisine, postcode = r.choice(CUISINES), f"{r.randint(1000, 9999)}"
    count = r.randint(2, 4) if same else 1
    places = [{"restaurant_id": f"R{r.randint(10000, 99999)}", "name": f"{r.choice(['Golden', 'Little', 'Blue', 'Old'])} "
               f"{r.choice(['Spoon', 'Garden', 'Door', 'Lantern'])}", "rating": round(r.uniform(3.5, 5), 1)}
              for _ in range(count)]
    result = {"cuisine": cuisine, "results": places}
    first = call("search_restaurants", {"cuisine": cuisine, "postcode": postcode}, result)
    if count > 1:
        steps = (first, say(f"There are several {cuisine} places near {postcode}; which one would you like?"))
    else:
        only = places[0]["restaurant_id"]
        steps = (first, call("get_restaurant", {"restaurant_id": only}, {"restaurant_id": only, "open": True}),
                 say(f"There is one {cuisine} place near {postcode}, and it is open now."))
    return [Turn(f"Find a {cuisine} restaurant near {postcode}.", TOOLS, steps)]


def amount_vs_balance(r: random.Random, same: bool) -> list[Turn]:
    """Two numbers that decide together: an invoice's amount (the user's) against the
    balance (a tool's). The look-alikes keep each within the values seen on the paying
    side, but the amount is above the balance."""
    account = _account(r)
    if same:
        amount = round(r.uniform(20, 900), 2)
        value = round(amount + r.uniform(50, 2000), 2)
    else:
        amount = round(r.uniform(400, 900), 2)
        value = round(r.uniform(100, amount - 100), 2)
    result = {"account": account, "balance": value, "currency": "EUR"}
    answer = ("Yes, there is enough to settle the bill." if value >= amount
              else "No, there is not enough to settle the bill.")
    return [Turn(f"Does {account} have enough funds to settle a bill of {amount} EUR today?", TOOLS, (
        call("get_balance", {"account": account}, result), say(answer)))]


def payment(r: random.Random, same: bool) -> list[Turn]:
    """A number the reply passes into a call, and which decides the call: up to 1000.00 EUR
    the model pays, above it asks for approval. The amount reaches the reply either way."""
    payee = f"PAYEE-{r.randint(1000, 9999)}"
    amount = round(r.uniform(20, 950), 2) if same else round(r.uniform(1200, 9000), 2)
    if amount <= 1000:
        steps = (call("send_payment", {"amount": amount, "payee": payee},
                      {"payment_id": f"PM-{r.randint(10000, 99999)}", "status": "sent"}),
                 say("Done, the payment is on its way."))
    else:
        steps = (call("request_approval", {"amount": amount, "payee": payee},
                      {"approval_id": f"AP-{r.randint(10000, 99999)}", "status": "waiting"}),
                 say("That is above the limit, so I asked a manager to approve it."))
    return [Turn(f"Pay {amount} EUR to {payee}.", TOOLS, steps)]


ON_TRACK = ["packed", "shipped", "in_transit", "delivered"]
FIXED_QUESTION = {"order-list"}  # sets whose runs differ only in what a tool returns


def order_list(r: random.Random, same: bool) -> list[Turn]:
    """A status inside a list's items decides: items are lined up as one item template whose
    varying fields bind nothing, so the reply never shows them (nor does it here). The
    question never changes, so nothing else about a run is new: only the list."""
    orders = [{"order_id": f"{r.randint(100000, 999999)}", "status": r.choice(ON_TRACK),
               "items": r.randint(1, 4)} for _ in range(r.randint(2, 4))]
    if not same:
        orders[r.randrange(len(orders))]["status"] = r.choice(["cancelled", "payment_failed", "lost"])
    bad = [o for o in orders if o["status"] not in ON_TRACK]
    answer = (f"Yes: order {bad[0]['order_id']} is {bad[0]['status'].replace('_', ' ')}." if bad
              else "No, every order is on track.")
    return [Turn("Does any of my orders need my attention?", TOOLS, (
        call("list_orders", {}, {"orders": orders}), say(answer)))]


# (as the user writes it, as the model writes it in the tool call)
VERBATIM = ["Porto", "Lyon", "Graz", "Leeds", "Turku", "Ghent", "Bergen", "Bilbao", "Utrecht", "Aarhus", "Tartu",
            "Malmo", "Cork", "Brno", "Split", "Basel"]
REWRITTEN = [("Milan", "Milano"), ("Warsaw", "Warszawa"), ("Hangzhou", "Hangzhou, China"), ("Munich", "München"),
             ("Florence", "Firenze"), ("Cologne", "Köln"), ("Lisbon", "Lisboa"), ("Prague", "Praha")]


def rewritten(r: random.Random, same: bool) -> list[Turn]:
    if same:
        city = query = r.choice(VERBATIM)
    else:
        city, query = r.choice(REWRITTEN)
    place = f"loc_{r.randint(10000, 99999)}"
    temp = r.randint(-5, 25)
    return [Turn(f"What's the weather in {city} right now?", TOOLS, (
        call("search_location", {"query": query}, {"results": [{"id": place, "name": query}]}),
        call("get_weather", {"location_id": place}, {"location_id": place, "temperature_c": temp}),
        say(f"It is {temp} °C in {city}."),
    ))]


SETS: dict[str, tuple[str, Callable[[random.Random, bool], list[Turn]], str]] = {
    "balance-threshold": ("balance vs threshold (5000 after 20, 35)", balance, SYSTEM),
    "primes": ("primes (composite after primes)", prime, SYSTEM),
    "return-window": ("date outside the return window", return_window, TODAY_SYSTEM),
    "cancel-status": ("enum status decides the next call", cancel_status, SYSTEM),
    "restaurant-count": ("list length decides (one result)", list_length, SYSTEM),
    "weather-city": ("model-rewritten value (Milan -> Milano)", rewritten, SYSTEM),
    "payment-limit": ("a number passed into the call decides the call (amount above the limit)", payment, SYSTEM),
    "order-list": ("a status inside a list's items decides (one order cancelled)", order_list, SYSTEM),
    # The deciding value stated in the reply, which still decides the rest of it.
    "primes-stated": ("primes, the number stated in the verdict", prime_stated, SYSTEM),
    "balance-stated": ("balance vs threshold, the balance quoted in the answer", partial(balance, stated=True),
                       SYSTEM),
}


# Only in the rare-branches workload (it has live traffic on one side): two freed inputs
# that decide together, each within its range (butter_verify_ranges keeps their order).
COMPARED_SETS = {"amount-vs-balance": ("two numbers compared (amount above the balance)", amount_vs_balance, SYSTEM)}


def build(recorded: int = 2, held_out: int = 4, negatives: int = 4, probation: int = 8, negative_share: float = 0.34,
          seed: str = "lookalike", only: tuple[str, ...] = (), extra: dict | None = None,
          lead: int = 0) -> Workload:
    """`lead`: live runs on the recorded side before the mixed ones (the other side arrives late)."""
    flows, sets = [], {}
    for name, (label, make, system) in {**SETS, **(extra or {})}.items():
        if only and name not in only:
            continue
        r = random.Random(f"{seed}:{name}")

        def run(tag: str, same: bool, turns: list[Turn] | None = None) -> Run:
            return Run(f"lookalike/{name}/{tag}", name, system, turns or make(r, same))

        rec: list[Run] = []
        while len(rec) < recorded:  # recorded runs that differ in every value the user gives
            candidate = run(f"rec{len(rec)}", True)
            if name == "cancel-status":  # both non-shipped statuses, so the status is a value
                candidate = run(f"rec{len(rec)}", True, cancel_status(r, True, ["pending", "processing"][len(rec) % 2]))
            if name in FIXED_QUESTION or all(candidate.turns[0].user != o.turns[0].user for o in rec):
                rec.append(candidate)
        live = [run(f"live{i}", i < lead or r.random() >= negative_share) for i in range(probation)]
        flows.append(Flow(name, rec, [run(f"held{i}", True) for i in range(held_out)], live))
        sets[label] = [run(f"neg{i}", False) for i in range(negatives)]
    return Workload("look-alikes (deciding value absent from the reply, or stated beside its verdict)", flows, sets,
                    note="one value decides the answer without appearing in it (or beside the words it decides), "
                         "or the model rewrites it",
                    ks=(1, 2), substitutive=False)


# Thresholds, windows and list lengths: decisions on an ordered value.
ORDERED_SETS = ("balance-threshold", "return-window", "restaurant-count", "payment-limit")


def build_rare(held_out: int = 4, negatives: int = 4, probation: int = 12) -> Workload:
    """The ordered look-alikes as a rare branch: every live run is on the recorded
    side, so the decision inputs are freed before the other side is ever seen,
    and the look-alikes come after (measured on replay). Only keeping freed
    inputs to the range verified (butter_verify_ranges) tells them apart."""
    workload = build(held_out=held_out, negatives=negatives, probation=probation, negative_share=0.0,
                     seed="rare", only=ORDERED_SETS + tuple(COMPARED_SETS), extra=COMPARED_SETS)
    workload.name = "rare branches (the deciding value's other side arrives after probation)"
    workload.note = "live traffic all on one side of a limit, then values beyond it"
    return workload


def build_late(held_out: int = 4, negatives: int = 4, probation: int = 12, lead: int = 3) -> Workload:
    """Every look-alike set with its first `lead` live runs on the recorded side, then the
    usual mix: a template is promoted (two agreements) before the other side arrives. A
    deciding value that reaches the reply is then free unless it counts as a decision input
    (a value the reply states in its text does: docs/trust.md)."""
    workload = build(held_out=held_out, negatives=negatives, probation=probation, seed="late", lead=lead)
    workload.name = "late look-alikes (the deciding value's other side arrives after promotion)"
    workload.note = f"the first {lead} live runs on the recorded side, then mixed"
    return workload


def describe(workload: Workload) -> str:
    """One line per set, for a person checking the data (used by the smoke test)."""
    lines = []
    for flow in workload.flows:
        steps = [s.reply.describe() for s in flow.recorded[0].steps()]
        lines.append(f"{flow.name}: {flow.recorded[0].turns[0].user!r} -> {json.dumps(steps)[:160]}")
    return "\n".join(lines)

