"""butter in a minute: the same agent, run for different customers, stops
calling the provider once butter has learned the workflow, and its answers
stay right.

    .venv/bin/python examples/demo.py                 # bundled fake provider, no key needed
    OPENAI_API_KEY=sk-... .venv/bin/python examples/demo.py   # the real OpenAI API

What runs: a real `mitmdump` with butter (addon/butter.py) on a fresh
database, and an unmodified tool-calling agent (the openai SDK, pointed at the
proxy with HTTPS_PROXY-style settings) that refunds one order per run. Runs 1
and 2 go to the provider and are recorded; butter compares them off the
request path and learns a template (order id, customer, amount, refund id are
values; the words are not). A learned template is first verified: runs 3
and 4 still go to the provider (`butter-cache: verify`), and butter checks
that the provider answered what the template would have; two agreements
promote it. A value that may decide a reply is verified for five values
before new ones are served: the customer's name where it does not reach the
reply (the lookup and the refund call), and the values the final answer states in its
text ("Refunded 49.99 to ..."), since such text can be a verdict on them
(docs/trust.md). So is a number beyond every value verified so far (a
refund larger than any before, the shop's next order number), since a limit
may lie there, until five values beyond it agreed. After that,
every request is answered from the tree with the run's own values
substituted. A last run with a changed
instruction ("cancel" instead of "refund") shows that a look-alike is never
served the refund workflow: it goes to the provider.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
    os.environ.pop(_name, None)

import openai  # noqa: E402
from openai.lib.streaming.chat import ChatCompletionStreamState  # noqa: E402

from tests.e2e.harness import Proxy  # noqa: E402
from tests.fakes.openai_chat import stream_chunks  # noqa: E402
from tests.fakes.provider import Call, FakeProvider, JSONReply, StreamReply  # noqa: E402
from tests.fakes.tls import make_ca_and_cert  # noqa: E402

SYSTEM = "You are a support agent for a web shop. Use the tools, then answer in one short sentence."
TOOLS = [
    {"type": "function", "function": {"name": "get_order", "description": "Look up an order by its id",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "refund", "description": "Refund an order in full",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}, "amount": {"type": "number"}},
                    "required": ["order_id", "amount"]}}},
    {"type": "function", "function": {"name": "cancel_order", "description": "Cancel an order",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
]
CUSTOMERS = ["Ana Ruiz", "Bo Chen", "Cyril Okafor", "Dana Novak", "Emeka Haddad", "Farah Larsen", "Goran Moreau",
             "Hina Tanaka", "Ivo Silva", "Jun Kowalski"]


# -- the shop the agent works on (its tools) --------------------------------------

def make_orders(n: int, seed: int) -> dict[str, dict]:
    r = random.Random(seed)
    orders = {}
    number = r.randint(10000, 80000)
    for name in r.sample(CUSTOMERS, n):
        number += r.randint(1, 400)  # a shop numbers its orders as they come
        order_id = str(number)
        orders[order_id] = {"order_id": order_id, "customer": name,
                            "amount": r.randint(5, 300) + r.choice([25, 49, 75, 99]) / 100, "status": "paid"}
    return orders


class Shop:
    def __init__(self, orders: dict[str, dict]):
        self.orders = orders
        self.refunds: list[tuple[str, float]] = []

    def run(self, name: str, args: dict) -> dict:
        order = self.orders[args["order_id"]]
        if name == "get_order":
            return order
        if name == "refund":
            self.refunds.append((args["order_id"], args["amount"]))
            return {"refund_id": f"R-{int(args['order_id']) * 7 % 1000000:06d}", "status": "refunded"}
        return {"order_id": args["order_id"], "cancelled": True}


# -- the bundled fake model: reads the conversation the way a model would -------------

def fake_model(call: Call) -> JSONReply | StreamReply:
    body = call.json
    messages = body["messages"]
    user = next(m["content"] for m in messages if m["role"] == "user")
    order_id = re.search(r"\d+", user).group(0)
    results = [json.loads(m["content"]) for m in messages if m["role"] == "tool"]
    verb = "cancel" if "cancel" in user.lower() else "refund"
    if not results:
        decision = {"tool": ("get_order", {"order_id": order_id})}
    elif len(results) == 1:
        order = results[0]
        decision = ({"tool": ("refund", {"order_id": order["order_id"], "amount": order["amount"]})} if verb == "refund"
                    else {"tool": ("cancel_order", {"order_id": order["order_id"]})})
    else:
        order, done = results
        decision = {"text": f"Refunded {order['amount']} to {order['customer']} for order {order['order_id']} "
                            f"(refund {done['refund_id']})." if verb == "refund"
                    else f"Cancelled order {order['order_id']} for {order['customer']}."}
    message: dict = {"role": "assistant", "content": decision.get("text"), "refusal": None}
    if "tool" in decision:
        name, args = decision["tool"]
        message["tool_calls"] = [{"id": "call_" + secrets.token_hex(8), "type": "function",
                                  "function": {"name": name, "arguments": json.dumps(args)}}]
    full = {"id": "chatcmpl-" + secrets.token_hex(8), "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "choices": [{"index": 0, "message": message, "logprobs": None,
            "finish_reason": "tool_calls" if "tool" in decision else "stop"}],
            "usage": {"prompt_tokens": 80, "completion_tokens": 20, "total_tokens": 100}}
    if body.get("stream"):
        return StreamReply(stream_chunks(full, bool((body.get("stream_options") or {}).get("include_usage"))))
    return JSONReply(full)


# -- the agent: a plain tool loop with the openai SDK -----------------------------------

def run_agent(client: openai.OpenAI, shop: Shop, order_id: str, model: str, verb: str = "refund",
              stream: bool = False) -> dict:
    messages: list[dict] = [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": f"Please {verb} order {order_id} for {shop.orders[order_id]['customer']}."}]
    statuses, calls = [], []
    for _ in range(6):
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, tools=TOOLS,
                                                               temperature=0, stream=stream)
        statuses.append(raw.headers.get("butter-cache", "?"))
        if stream:
            state = ChatCompletionStreamState(input_tools=TOOLS)
            for chunk in raw.parse():
                state.handle_chunk(chunk)
            message = state.get_final_completion().choices[0].message
        else:
            message = raw.parse().choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return {"answer": message.content or "", "statuses": statuses, "calls": calls}
        for tc in message.tool_calls:
            args = json.loads(tc.function.arguments)
            calls.append((tc.function.name, args))
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": json.dumps(shop.run(tc.function.name, args))})
    return {"answer": "(the agent did not finish)", "statuses": statuses, "calls": calls}


def is_right(result: dict, order: dict, verb: str, strict: bool = True) -> bool:
    """The agent did the right thing for *this* order, and said so.

    With a real model the wording is its own: only the actions and the order
    id in the answer are checked (`strict=False`)."""
    want = "refund" if verb == "refund" else "cancel_order"
    acted = [args for name, args in result["calls"] if name == want]
    if len(acted) != 1 or acted[0].get("order_id") != order["order_id"]:
        return False
    if verb == "refund" and abs(float(acted[0].get("amount", -1)) - order["amount"]) > 1e-9:
        return False
    answer = result["answer"]
    return order["order_id"] in answer and (not strict or order["customer"].split()[0] in answer)


def wait_quiet(log: Path, quiet: float = 0.5, timeout: float = 10.0) -> None:
    """Let butter finish recording and learning (both run off the request path)."""
    deadline, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < deadline:
        size = log.stat().st_size
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9, help="agent runs, one order each (default 9)")
    parser.add_argument("--stream", action="store_true", help="the agent streams (replies are served as SSE too)")
    parser.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    parser.add_argument("--db", help="keep butter's database here (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    real = bool(os.environ.get("OPENAI_API_KEY"))

    with tempfile.TemporaryDirectory(prefix="butter-demo-") as tmp:
        tmp_path = Path(tmp)
        provider = None
        if real:
            proxy = Proxy(tmp_path / "mitmproxy", Path(args.db or tmp_path / "db"), tmp_path / "mitmdump.log")
            api_key, where = os.environ["OPENAI_API_KEY"], f"the OpenAI API ({args.model})"
        else:
            ca, cert, key = make_ca_and_cert(tmp_path / "tls")
            provider = FakeProvider(cert, key, fake_model)
            proxy = Proxy(tmp_path / "mitmproxy", Path(args.db or tmp_path / "db"), tmp_path / "mitmdump.log",
                          upstream=f"127.0.0.1:{provider.port}", upstream_ca=ca)
            api_key, where = "sk-demo-" + secrets.token_hex(8), "the bundled fake provider (set OPENAI_API_KEY for a real one)"
        http = openai.DefaultHttpxClient(proxy=proxy.url, verify=str(proxy.ca_cert), trust_env=False)
        client = openai.OpenAI(api_key=api_key, http_client=http, max_retries=0, timeout=60)
        orders = make_orders(args.runs + 1, args.seed)
        shop = Shop(orders)
        ids = list(orders)
        print(f"butter demo: one agent, {args.runs} refunds for different customers, through butter to {where}\n")
        print(f"{'run':>3}  {'order':<6} {'customer':<14} {'provider calls':>14}  {'butter-cache':<20} answer")
        total_requests = total_calls = 0
        ok = True
        try:
            for n, order_id in enumerate(ids[: args.runs], start=1):
                before = len(provider.calls) if provider else 0
                result = run_agent(client, shop, order_id, args.model, stream=args.stream)
                provider_calls = (len(provider.calls) - before) if provider else sum(s != "hit" for s in result["statuses"])
                right = is_right(result, orders[order_id], "refund", strict=not real)
                ok &= right
                total_requests += len(result["statuses"])
                total_calls += provider_calls
                print(f"{n:>3}  {order_id:<6} {orders[order_id]['customer']:<14} {provider_calls:>14}  "
                      f"{' '.join(result['statuses']):<20} {result['answer']}  {'right' if right else 'WRONG'}")
                wait_quiet(proxy.log)
            order_id = ids[args.runs]
            before = len(provider.calls) if provider else 0
            result = run_agent(client, shop, order_id, args.model, verb="cancel", stream=args.stream)
            provider_calls = (len(provider.calls) - before) if provider else sum(s != "hit" for s in result["statuses"])
            right = is_right(result, orders[order_id], "cancel", strict=not real)
            ok &= right
            print(f"\nlook-alike: 'Please cancel order {order_id} for {orders[order_id]['customer']}.' (same words but one)")
            print(f"{'':>3}  {order_id:<6} {orders[order_id]['customer']:<14} {provider_calls:>14}  "
                  f"{' '.join(result['statuses']):<20} {result['answer']}  {'right' if right else 'WRONG'}")
        finally:
            proxy.stop()
            if provider:
                provider.close()
        print(f"\n{total_calls} provider calls for {total_requests} LLM requests in {args.runs} refund runs; "
              f"every answer {'right' if ok else 'NOT right (see above)'}.")
        if not real:
            print("Runs 1-2 taught butter the workflow; the next runs verified it against the provider (verify: "
                  "the agent got the provider's own answer); then runs were answered from its tree with their own "
                  "order ids, names, amounts and refund ids filled in.")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
