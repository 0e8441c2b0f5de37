"""Our own workflows: order handling and form filling, runs differing only in values.

Each flow is a small tool-calling conversation with a deterministic backend
(`_Backend`), written as the ground truth a careful model would follow. The
values (order ids, names, amounts, addresses, dates, ids the backend makes
up) change from run to run; the words and the branches do not. The
look-alikes change exactly one thing that must change the answer: the
instruction word, a branch-deciding status, a missing field, a unit.
"""
from __future__ import annotations

import json
import random
from typing import Callable

from .script import Reply, Run, Step, Turn
from .workloads import Flow, Workload

SYSTEM = "You are the back-office agent of a small web shop. Use the tools; answer in one sentence."

FIRST = ["Ana", "Bo", "Cyril", "Dana", "Emeka", "Farah", "Goran", "Hina", "Ivo", "Jun", "Kalani", "Lea",
         "Mateo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Sven", "Tariq", "Uma", "Viktor", "Wen", "Yara"]
LAST = ["Ruiz", "Chen", "Okafor", "Novak", "Haddad", "Larsen", "Moreau", "Tanaka", "Silva", "Kowalski",
        "Nguyen", "Schmidt", "Rossi", "Dubois", "Ibrahim", "Fischer", "Lindqvist", "Sato", "Costa", "Weber"]
STREETS = ["Elm Street", "Harbour Road", "Mill Lane", "Station Avenue", "Orchard Way", "Bridge Street",
           "Kings Road", "Market Square", "Chapel Hill", "Park Terrace"]
CITIES = ["Porto", "Leeds", "Graz", "Turku", "Ghent", "Aarhus", "Bergen", "Lyon", "Bilbao", "Utrecht"]


def _tool(name: str, description: str, **props: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {k: {"type": v} for k, v in props.items()}, "required": list(props)}}}


ORDER_TOOLS = (
    _tool("get_order", "Look up an order by id", order_id="string"),
    _tool("refund", "Refund an order", order_id="string", amount="number"),
    _tool("cancel_order", "Cancel an order that has not shipped", order_id="string"),
    _tool("create_return", "Open a return for a shipped order", order_id="string"),
    _tool("update_address", "Change an order's shipping address", order_id="string", address="string"),
)
FORM_TOOLS = (
    _tool("open_form", "Open a blank form", form="string"),
    _tool("fill_form", "Fill a form's fields", form_id="string", values="object"),
    _tool("submit_form", "Submit a filled form", form_id="string"),
    _tool("subscribe", "Subscribe an email address to the newsletter", email="string"),
    _tool("shipping_quote", "Price a parcel", weight_kg="number", from_zip="string", to_zip="string"),
)


class _Values:
    """Values of one run, drawn from a seeded generator (reproducible)."""

    def __init__(self, seed: str):
        r = random.Random(seed)
        self.first, self.last = r.choice(FIRST), r.choice(LAST)
        self.name = f"{self.first} {self.last}"
        self.email = f"{self.first.lower()}.{self.last.lower()}@{r.choice(['example.com', 'mail.test', 'shop.example'])}"
        self.order_id = str(r.randint(10000, 99999))
        self.amount = round(r.randint(5, 400) + r.choice([11, 25, 49, 75, 99, 37, 63]) / 100, 2)
        self.refund_id = f"R-{r.randint(100000, 999999)}"
        self.return_id = f"RET-{r.randint(1000, 9999)}"
        self.street = f"{r.randint(1, 180)} {r.choice(STREETS)}"
        self.city, self.zip = r.choice(CITIES), str(r.randint(10000, 99999))
        self.zip2 = str(r.randint(10000, 99999))
        self.old_street = f"{r.randint(1, 180)} {r.choice(STREETS)}"
        self.eta = f"2026-12-{r.randint(10, 28)}"
        self.placed = f"2026-11-{r.randint(10, 26)}"
        self.phone = f"+44 7{r.randint(100, 999)} {r.randint(100000, 999999)}"
        self.dob = f"19{r.randint(60, 99)}-0{r.randint(1, 9)}-{r.randint(10, 28)}"
        self.form_id = f"F{r.randint(1000, 9999)}"
        self.confirmation = f"C-{r.randint(10000, 99999)}"
        self.weight = r.randint(2, 30)
        self.price = round(r.randint(4, 60) + r.choice([15, 45, 85, 95]) / 100, 2)
        self.days = r.randint(2, 6)


def _call(name: str, args: dict, result: dict) -> Step:
    return Step(Reply(tool_calls=((name, args),)), (json.dumps(result),))


def _say(text: str) -> Step:
    return Step(Reply(content=text))


def refund(v: _Values, status: str = "paid", verb: str = "refund") -> list[Turn]:
    order = {"order_id": v.order_id, "customer": v.name, "email": v.email, "amount": v.amount,
             "status": status, "placed": v.placed}
    steps = [_call("get_order", {"order_id": v.order_id}, order)]
    if verb == "cancel":
        steps += [_call("cancel_order", {"order_id": v.order_id}, {"order_id": v.order_id, "cancelled": True}),
                  _say(f"Cancelled order {v.order_id} for {v.name}.")]
    elif status == "shipped":
        steps += [_call("create_return", {"order_id": v.order_id}, {"return_id": v.return_id, "label_sent_to": v.email}),
                  _say(f"Order {v.order_id} has already shipped, so I opened return {v.return_id} for {v.name}.")]
    else:
        steps += [_call("refund", {"order_id": v.order_id, "amount": v.amount}, {"refund_id": v.refund_id, "status": "refunded"}),
                  _say(f"Refunded {v.amount} to {v.name} for order {v.order_id} (refund {v.refund_id}).")]
    return [Turn(f"Please {verb} order {v.order_id} for {v.name}.", ORDER_TOOLS, tuple(steps))]


def address(v: _Values, status: str = "processing") -> list[Turn]:
    new = f"{v.street}, {v.city} {v.zip}"
    order = {"order_id": v.order_id, "customer": v.name, "status": status,
             "address": f"{v.old_street}, {v.city} {v.zip2}"}
    steps = [_call("get_order", {"order_id": v.order_id}, order)]
    if status == "shipped":
        steps.append(_say(f"Order {v.order_id} has already shipped, so its address can no longer be changed."))
    else:
        steps += [_call("update_address", {"order_id": v.order_id, "address": new}, {"ok": True, "eta": v.eta}),
                  _say(f"Order {v.order_id} will now go to {new}, arriving by {v.eta}.")]
    return [Turn(f"Change the shipping address of order {v.order_id} to {new}.", ORDER_TOOLS, tuple(steps))]


def signup(v: _Values, with_email: bool = True) -> list[Turn]:
    if not with_email:
        return [Turn(f"Sign up {v.name}, phone {v.phone}, born {v.dob}.", FORM_TOOLS,
                     (_say(f"I need an email address before I can sign up {v.name}."),))]
    fields = ["first_name", "last_name", "email", "phone", "birth_date"]
    values = {"first_name": v.first, "last_name": v.last, "email": v.email, "phone": v.phone, "birth_date": v.dob}
    first = Turn(f"Sign up {v.name} with email {v.email}, phone {v.phone}, born {v.dob}.", FORM_TOOLS, (
        _call("open_form", {"form": "signup"}, {"form_id": v.form_id, "fields": fields}),
        _call("fill_form", {"form_id": v.form_id, "values": values}, {"ok": True, "missing": []}),
        _call("submit_form", {"form_id": v.form_id}, {"confirmation": v.confirmation}),
        _say(f"{v.name} is signed up (confirmation {v.confirmation})."),
    ))
    second = Turn("Also subscribe them to the newsletter.", FORM_TOOLS, (
        _call("subscribe", {"email": v.email}, {"subscribed": True}),
        _say(f"Subscribed {v.email} to the newsletter."),
    ))
    return [first, second]


def quote(v: _Values, unit: str = "kg") -> list[Turn]:
    kg = v.weight if unit == "kg" else round(v.weight * 0.4536, 2)
    result = {"price": v.price, "currency": "EUR", "days": v.days}
    return [Turn(f"Get a shipping quote for a {v.weight} {unit} parcel from {v.zip} to {v.zip2}.", FORM_TOOLS, (
        _call("shipping_quote", {"weight_kg": kg, "from_zip": v.zip, "to_zip": v.zip2}, result),
        _say(f"Shipping {v.weight} {unit} from {v.zip} to {v.zip2} costs {v.price} EUR and takes {v.days} days."),
    ))]


FLOWS: dict[str, Callable[[_Values], list[Turn]]] = {
    "refund": refund, "address-change": address, "signup-form": signup, "shipping-quote": quote,
}
NEGATIVES: dict[str, tuple[str, Callable[[_Values], list[Turn]]]] = {
    "changed instruction (cancel, not refund)": ("refund", lambda v: refund(v, verb="cancel")),
    "branch field (order shipped)": ("refund", lambda v: refund(v, status="shipped")),
    "branch field (address, shipped)": ("address-change", lambda v: address(v, status="shipped")),
    "missing value (no email)": ("signup-form", lambda v: signup(v, with_email=False)),
    "changed unit (lb, not kg)": ("shipping-quote", lambda v: quote(v, unit="lb")),
}


class _Distinct:
    """Values for the runs of one flow; the first `distinct` runs differ in every field.

    Purely substitutive means each value really varies in the recorded runs: a
    field that happens to be equal in them is, on that evidence, a constant.
    Later runs (held out, look-alikes) draw freely.
    """

    def __init__(self, seed: str, distinct: int):
        self.seed, self.distinct, self.seen, self.n = seed, distinct, [], 0

    def next(self) -> _Values:
        while True:
            self.n += 1
            v = _Values(f"{self.seed}:{self.n}")
            if len(self.seen) >= self.distinct:
                return v
            fields = vars(v)
            if all(all(fields[k] != vars(old)[k] for k in fields) for old in self.seen):
                self.seen.append(v)
                return v


def build(recorded: int = 3, held_out: int = 4, negatives_per_kind: int = 4, seed: str = "own",
          probation: int = 0) -> Workload:
    def run(flow: str, tag: str, turns: list[Turn], values: _Values) -> Run:
        return Run(f"own/{flow}/{tag}", flow, SYSTEM, turns, values={"name": values.name, "order": values.order_id})

    flows = []
    values: dict[str, _Distinct] = {name: _Distinct(f"{seed}:{name}", recorded) for name in FLOWS}
    for name, make in FLOWS.items():
        rec = [run(name, f"rec{i}", make(v := values[name].next()), v) for i in range(recorded)]
        held = [run(name, f"held{i}", make(v := values[name].next()), v) for i in range(held_out)]
        live = [run(name, f"live{i}", make(v := values[name].next()), v) for i in range(probation)]
        flows.append(Flow(name, rec, held, live))
    negatives = {}
    for label, (flow, make) in NEGATIVES.items():
        negatives[label] = [run(flow, f"neg:{label}:{i}", make(v := values[flow].next()), v)
                            for i in range(negatives_per_kind)]
    return Workload("own workflows", flows, negatives,
                    note="order handling and form filling; runs differ only in values")
