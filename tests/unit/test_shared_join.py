"""A proxy that starts before its shared store's Redis: disabled, then joined
(store/shared_backend.py SharedStoreUnreachable, addon/shared_join.py), against a real redis-server."""
from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from butter.addon import cache_addon, shared_join
from butter.store import Cache
from butter.store.shared_backend import SharedStoreError, SharedStoreUnreachable
from tests.e2e.harness import ROOT, free_port
from tests.fakes.redis_server import RedisServer
from tests.unit.test_addon import llm_flow, send
from tests.unit.test_addon_faults import exchange_once
from tests.unit.test_feedback import local_flow

PASSWORD = "s3cret-redis-pass"


def url_at(port: int, local, password: str | None = None) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{port}/0?prefix=join&local={local}"


def join_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "butter-shared-join"]


async def eventually(check, timeout: float = 15.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(shared_join, "JOIN_RETRY_SECONDS", 0.1)


@pytest.fixture
def late_redis(tmp_path):
    """A password-protected redis-server whose port is known now and which the test starts later."""
    server = RedisServer(tmp_path / "redis", password=PASSWORD, port=free_port(), start=False)
    yield server
    server.stop()


@pytest.fixture
def addon():
    addon = cache_addon.Butter()
    yield addon
    addon.done()


# -- the store: unreachable is not refused --------------------------------------------

def test_a_never_synced_replica_with_nothing_listening_is_unreachable(tmp_path):
    with pytest.raises(SharedStoreUnreachable, match="cannot reach the shared store") as raised:
        Cache(url_at(free_port(), tmp_path / "replica"))
    assert isinstance(raised.value, SharedStoreError)


def test_a_redis_that_refuses_the_password_is_a_configuration_error_not_unreachable(tmp_path, late_redis):
    late_redis.start()
    with pytest.raises(SharedStoreError, match="refused this replica") as raised:
        Cache(url_at(late_redis.port, tmp_path / "replica", "wrong-password"))
    assert not isinstance(raised.value, SharedStoreUnreachable)
    assert "wrong-password" not in str(raised.value)


# -- the addon ---------------------------------------------------------------------------

async def test_the_proxy_starts_disabled_while_redis_is_unreachable_then_joins_and_serves(
        tmp_path, caplog, quick_retries, late_redis, addon):
    with caplog.at_level(logging.INFO, logger="butter"), taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=url_at(late_redis.port, tmp_path / "replica", PASSWORD))
        assert addon.cache is None
        passed = await exchange_once(addon, llm_flow())
        assert passed.response.headers["butter-cache"] == "bypass (butter disabled: shared store unreachable)"
        assert "accept-encoding" not in passed.request.headers  # untouched
        health = await exchange_once(addon, local_flow("GET", "/health"), reply=None)
        assert health.response.status_code == 200  # up, so `butter proxy` starts
        assert health.response.json()["butter"] == "disabled"
        await asyncio.sleep(0.5)  # several attempts fail, silently
        late_redis.start()
        assert await eventually(lambda: not addon.disabled), caplog.text
        first = await send(addon, llm_flow())
        second = await send(addon, llm_flow(), reply=None)
    addon.done()
    assert first.response.headers["butter-cache"] == "miss"
    assert second.response.headers["butter-cache"] == "hit"
    [warning] = [r.getMessage() for r in caplog.records if "DISABLED" in r.getMessage()]
    assert "cannot reach the shared store redis://127.0.0.1" in warning
    [joined] = [r.getMessage() for r in caplog.records if "joined the shared store" in r.getMessage()]
    assert f"127.0.0.1:{late_redis.port}" in joined
    assert PASSWORD not in caplog.text
    assert not join_threads()


async def test_a_store_that_refuses_the_replica_once_up_keeps_traffic_passing_and_says_why(
        tmp_path, caplog, quick_retries, late_redis, addon):
    with caplog.at_level(logging.INFO, logger="butter"), taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=url_at(late_redis.port, tmp_path / "replica", "wrong-password"))
        late_redis.start()
        assert await eventually(lambda: addon.joiner is None), caplog.text
        passed = await exchange_once(addon, llm_flow())
    assert addon.cache is None
    assert passed.response.headers["butter-cache"] == "bypass (butter disabled: shared store refused)"
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "refused this replica" in error.getMessage() and "wrong-password" not in caplog.text
    # The thread hands its verdict to the event loop, then returns: it ends, a moment later.
    assert await eventually(lambda: not join_threads()), join_threads()


async def test_a_refusal_at_start_still_stops_the_proxy(tmp_path, late_redis, addon):
    late_redis.start()
    with taddons.context(addon) as tctx:
        with pytest.raises(exceptions.OptionsError, match="refused this replica"):
            tctx.configure(addon, butter_db=url_at(late_redis.port, tmp_path / "replica", "wrong-password"))
    assert addon.joiner is None


async def test_closing_while_redis_is_still_unreachable_stops_the_attempts(tmp_path, quick_retries, addon):
    with taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=url_at(free_port(), tmp_path / "replica"))
        assert join_threads()
        await asyncio.sleep(0.3)
        addon.done()
    assert addon.joiner is None and not join_threads()


# -- the hand-over to the event loop -------------------------------------------------------

class FakeStore:
    closed = False

    def close(self) -> None:
        self.closed = True


async def test_a_store_opened_while_the_joiner_stops_is_closed_and_never_installed():
    store, installed = FakeStore(), []
    joiner = shared_join.SharedStoreJoiner(lambda: store, installed.append, installed.append,
                                           asyncio.get_running_loop(), interval=0)
    joiner._thread.join(5)  # opened and handed to the loop, which has not run the hand-over yet
    joiner.stop()
    await asyncio.sleep(0.05)  # the hand-over runs now
    assert store.closed and installed == []


async def test_a_store_opened_after_failed_attempts_is_installed_on_the_event_loop():
    attempts, installed_on = [], []
    store = FakeStore()

    def open_store():
        attempts.append(1)
        if len(attempts) < 3:
            raise SharedStoreUnreachable("not yet")
        return store

    joiner = shared_join.SharedStoreJoiner(open_store, lambda s: installed_on.append((s, threading.current_thread())),
                                           installed_on.append, asyncio.get_running_loop(), interval=0.01)
    assert await eventually(lambda: installed_on)
    joiner.stop()
    assert installed_on == [(store, threading.main_thread())] and len(attempts) == 3 and not store.closed


# -- the CLI: one-shot, so still a clear failure ------------------------------------------

def test_a_cli_command_against_an_unreachable_never_synced_store_fails_with_a_message(tmp_path):
    url = url_at(free_port(), tmp_path / "replica", PASSWORD)
    run = subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", url, "stats"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "cannot reach the shared store" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr and PASSWORD not in run.stdout + run.stderr
