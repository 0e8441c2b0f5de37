"""A fleet of proxies on one tree: real mitmdump processes, each with its own
LMDB replica, sharing a real redis-server; the real openai SDK as the client."""
from __future__ import annotations

import threading
import time

import openai
import pytest

from tests.fakes.openai_chat import ORDERS, run_agent
from tests.e2e.harness import free_port
from tests.fakes.redis_server import RedisServer


def client(api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, timeout=20, max_retries=0)


@pytest.fixture
def fleet(start_proxy, shared_store_url):
    """`fleet(n, **kw)`: n proxies on one shared tree, replicas a, b, c, ..."""
    def start(n: int, **kwargs):
        return [start_proxy(db=shared_store_url(chr(ord("a") + i)), **kwargs) for i in range(n)]
    return start


def test_a_workflow_recorded_through_one_proxy_is_served_by_the_others_on_their_next_request(
        fleet, through, provider, api_key):
    one, two, three = fleet(3)
    through(one)
    first = run_agent(client(api_key), "1234")
    assert first["cache"] == ["miss", "miss", "miss"] and len(provider.calls) == 3
    for other in (two, three):
        through(other)
        again = run_agent(client(api_key), "1234")
        assert again["cache"] == ["hit", "hit", "hit"], f"{other.log_text()[-2000:]}"
        assert again["answer"] == first["answer"] and again["calls"] == first["calls"]
    assert len(provider.calls) == 3


def test_a_fleet_member_in_replay_mode_serves_what_another_recorded_with_no_provider(
        start_proxy, fleet, through, provider, api_key, shared_store_url):
    (recorder,) = fleet(1)
    through(recorder)
    run_agent(client(api_key), "1234", stream=True)
    offline = start_proxy(db=shared_store_url("offline"), mode="replay", forward=False)
    through(offline)
    calls = len(provider.calls)
    replayed = run_agent(client(api_key), "1234")
    assert replayed["cache"] == ["hit", "hit", "hit"] and len(provider.calls) == calls


def test_redis_killed_and_restarted_mid_traffic_loses_nothing_and_no_client_sees_an_error(
        start_proxy, through, provider, api_key, tmp_path):
    server = RedisServer(tmp_path / "redis")
    try:
        url = lambda name: f"{server.url}?prefix=fleet&local={tmp_path / name}"  # noqa: E731
        a, b = start_proxy(db=url("a")), start_proxy(db=url("b"))
        for proxy in (a, b):  # both joined the tree before Redis goes away
            deadline = time.monotonic() + 30
            while "butter: tree at" not in proxy.log_text() and time.monotonic() < deadline:
                time.sleep(0.05)
        through(a)
        orders = [o for o in ORDERS][:6]
        errors: list[BaseException] = []
        done: list[str] = []

        def traffic() -> None:
            for order in orders:
                try:
                    run_agent(client(api_key), order)
                    done.append(order)
                except BaseException as e:  # noqa: BLE001 - collected and asserted below
                    errors.append(e)
                time.sleep(0.2)

        worker = threading.Thread(target=traffic)
        worker.start()
        while not done and not errors and worker.is_alive():
            time.sleep(0.05)
        server.kill()  # mid-traffic: after the first run, before the others
        time.sleep(1.0)
        server.start()
        worker.join(timeout=120)
        assert not errors, errors
        assert done == orders
        # Every run recorded through `a`, before, during or after the outage, is served by `b`.
        through(b)
        deadline = time.monotonic() + 20
        for order in orders:
            while True:
                run = run_agent(client(api_key), order)
                if run["cache"] == ["hit", "hit", "hit"] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert run["cache"] == ["hit", "hit", "hit"], f"order {order}: {run['cache']}\n{b.log_text()[-3000:]}"
        assert "unreachable" in a.log_text()
        assert "s3cret" not in a.log_text()
    finally:
        server.stop()


def test_a_proxy_started_before_its_redis_passes_traffic_through_then_joins_and_serves(
        start_proxy, through, provider, api_key, tmp_path):
    # docker-compose starts the proxy and Redis together: the proxy must come up first and wait.
    server = RedisServer(tmp_path / "redis", port=free_port(), start=False)
    try:
        proxy = start_proxy(db=f"{server.url}?prefix=late&local={tmp_path / 'replica'}")
        through(proxy)
        before = run_agent(client(api_key), "1234")
        assert before["cache"] == ["bypass (butter disabled: shared store unreachable)"] * 3
        assert before["answer"] and len(provider.calls) == 3
        assert proxy.proc.poll() is None and "DISABLED until the shared store answers" in proxy.log_text()
        server.start()
        deadline = time.monotonic() + 30
        while "joined the shared store" not in proxy.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "joined the shared store" in proxy.log_text(), proxy.log_text()[-3000:]
        recorded = run_agent(client(api_key), "1234")
        served = run_agent(client(api_key), "1234")
        assert recorded["cache"] == ["miss", "miss", "miss"] and len(provider.calls) == 6
        assert served["cache"] == ["hit", "hit", "hit"] and len(provider.calls) == 6
        assert served["answer"] == recorded["answer"] == before["answer"]
        proxy.stop()
        assert proxy.proc.returncode == 0 and "Traceback" not in proxy.log_text()
    finally:
        server.stop()
