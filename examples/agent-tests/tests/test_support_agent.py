"""The support agent's tests, run offline from the cassettes in tests/cassettes/.

Each test marked `butter` goes through butter's proxy; the agent's code is not
changed for it. In CI (`pytest`, replay mode) every LLM answer comes from the
cassettes and a request that was never recorded fails the test with butter's
explanation. Record new or changed tests with `pytest --butter-mode=auto`.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from support_agent import Shop, run

ORDERS = {
    "1234": {"order_id": "1234", "customer": "Ana Ruiz", "amount": 42.5, "status": "paid"},
    "2001": {"order_id": "2001", "customer": "Dana Novak", "amount": 18.25, "status": "paid"},
    "2002": {"order_id": "2002", "customer": "Emeka Haddad", "amount": 120.0, "status": "paid"},
    "2003": {"order_id": "2003", "customer": "Hina Tanaka", "amount": 64.75, "status": "paid"},
}
NODE_AGENT = Path(__file__).resolve().parents[1] / "node"


@pytest.mark.butter
def test_refund_is_made_and_confirmed():
    shop = Shop(ORDERS)
    answer = run("Please refund order 1234.", shop)
    assert shop.refunds == [("1234", 42.5)]
    assert "42.5" in answer and "Ana Ruiz" in answer


@pytest.mark.butter
def test_refund_streamed():
    shop = Shop(ORDERS)
    answer = run("Please refund order 1234.", shop, stream=True)
    assert shop.refunds == [("1234", 42.5)]
    assert "Ana Ruiz" in answer


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node 20+")
@pytest.mark.skipif(not (NODE_AGENT / "node_modules" / "openai").is_dir(), reason="run `npm install` in node/")
@pytest.mark.butter
def test_node_agent_refunds():
    # A subprocess inherits the proxy settings the plugin put in the environment.
    done = subprocess.run(["node", "agent.mjs", "Please refund order 9876."], cwd=NODE_AGENT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["refunds"] == [["9876", 17]]
    assert "Bo Chen" in result["answer"]


# One namespace for these three tests (cassette tests/cassettes/refunds.jsonl):
# from the two recorded customers butter learns the workflow as a template; the
# third customer's requests are the template's to answer, checked against the
# provider while the template is new (docs/trust.md).
@pytest.mark.butter(namespace="refunds")
@pytest.mark.parametrize("order_id", ["2001", "2002"])
def test_refund_each_customer(order_id):
    shop = Shop(ORDERS)
    answer = run(f"Please refund order {order_id}.", shop)
    order = ORDERS[order_id]
    assert shop.refunds == [(order_id, order["amount"])]
    assert order["customer"] in answer


@pytest.mark.butter(namespace="refunds")
def test_a_new_customer_meets_the_learned_template(butter):
    shop = Shop(ORDERS)
    answer = run("Please refund order 2003.", shop)
    assert shop.refunds == [("2003", 64.75)]
    assert "Hina Tanaka" in answer and "64.75" in answer
    if butter.mode in ("auto", "replay"):
        # Never a plain miss: the template learned from the two customers above
        # answers each step. While it is new, butter checks it against the
        # provider (`verified`, the first recording); the run is then in the
        # cassette, and replays as hits.
        assert butter.hits + butter.verified == 3 and butter.misses == 0
