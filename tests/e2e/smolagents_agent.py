"""A smolagents ToolCallingAgent with the OpenAI model class, configured only by the
environment `butter run` sets (HTTPS_PROXY, SSL_CERT_FILE). Prints one JSON line:
the answer, the tool calls it made, and every tool-call id the model sent."""
import json
import sys

from smolagents import OpenAIServerModel, ToolCallingAgent, tool

ORDERS = {"1234": {"order_id": "1234", "customer": "Ana Ruiz", "amount": 42.5},
          "9876": {"order_id": "9876", "customer": "Bo Chen", "amount": 17.0}}
calls = []


@tool
def get_order(order_id: str) -> dict:
    """Look up an order.

    Args:
        order_id: the order's number
    """
    calls.append(["get_order", order_id])
    return ORDERS[order_id]


@tool
def refund(order_id: str, amount: float) -> dict:
    """Refund an order.

    Args:
        order_id: the order's number
        amount: how much to refund
    """
    calls.append(["refund", order_id, amount])
    return {"refunded": True}


model = OpenAIServerModel(model_id="gpt-4o-mini", api_key="sk-test-smolagents", client_kwargs={"max_retries": 0})
agent = ToolCallingAgent(tools=[get_order, refund], model=model, max_steps=5, verbosity_level=0)
answer = agent.run(f"Please refund order {sys.argv[1]}.")
ids = [tc.id for step in agent.memory.steps for tc in (getattr(step, "tool_calls", None) or [])]
print(json.dumps({"answer": answer, "calls": calls, "ids": ids}))
