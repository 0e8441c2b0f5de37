"""Faults that used to stall or crash the proxy, through a real mitmdump with
butter, real clients and the fake provider over TLS on loopback."""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time

import httpx2
import openai

from butter.store import Cache, Conversation
from tests.e2e.harness import Proxy
from tests.fakes import openai_chat
from tests.fakes.provider import JSONReply, StreamReply
from tests.fakes.lmdb_holder import HOLD_WRITE_LOCK


def client(api_key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, timeout=20, max_retries=0)


def raw_client(proxy: Proxy) -> httpx2.Client:
    return httpx2.Client(proxy=proxy.url, verify=str(proxy.ca_cert), timeout=30)


URL = "https://api.openai.com/v1/chat/completions"


def echo(call) -> JSONReply:
    return JSONReply(openai_chat.completion({"content": f"answer to {call.json['messages'][-1]['content']}"},
                                            call.json["model"]))


def ask(sdk: openai.OpenAI, text: str):
    return sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                         messages=[{"role": "user", "content": text}])


def test_a_proxy_on_a_truncated_database_passes_traffic_through_and_says_how_to_recover(
        start_proxy, through, provider, api_key, tmp_path):
    db = tmp_path / "db"
    cache = Cache(db)
    for i in range(300):
        cache.record("ns", Conversation({"api": "openai-chat", "model": "m"},
                                        ({"role": "user", "content": f"q{i} " + "x" * 300},)), {"t": "y" * 300})
    cache.close()
    data = db / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    proxy = start_proxy(db)
    through(proxy)
    provider.handler = echo
    response = ask(client(api_key), "Please refund order 1234.")
    assert response.http_response.status_code == 200
    assert response.headers["butter-cache"] == "bypass (butter disabled: damaged database)"
    assert proxy.proc.poll() is None
    log = proxy.log_text()
    assert "DISABLED" in log and "truncated" in log and "butter import" in log


def test_misses_reach_the_provider_while_another_process_holds_the_write_lock_and_are_recorded_after(
        start_proxy, through, provider, api_key, tmp_path):
    proxy = start_proxy(tmp_path / "db")
    through(proxy)
    provider.handler = echo
    sdk = client(api_key)
    ask(sdk, "warm up")  # the database exists
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(proxy.db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = len(provider.calls)
        answers = [ask(sdk, f"question {i}") for i in range(6)]  # each would time out (20 s) if held
        assert [a.headers["butter-cache"] for a in answers] == ["miss"] * 6
        assert len(provider.calls) - before == 6
    finally:
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=10)
    deadline = time.monotonic() + 30
    for i in range(6):  # nothing recorded was lost: the writes landed once the lock was free
        while ask(sdk, f"question {i}").headers["butter-cache"] != "hit":
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_gzip_bomb_passes_through_byte_for_byte_while_others_are_served(shared_proxy, provider, api_key):
    provider.handler = lambda call: JSONReply(openai_chat.completion({"content": f"{len(call.body)} bytes"},
                                                                     "gpt-4o-mini"))
    inflated = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"a" * (300 << 20) + b'"}]}'
    bomb = gzip.compress(inflated, compresslevel=1)
    assert len(bomb) < 2 << 20
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json", "content-encoding": "gzip"}
    with raw_client(shared_proxy) as http:
        response = http.post(URL, content=bomb, headers=headers)
        assert response.headers["butter-cache"] == "bypass (body too large)"
        assert provider.calls[-1].body == bomb
        plain = http.post(URL, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                          headers={"authorization": f"Bearer {api_key}"})
        assert plain.headers["butter-cache"] in ("miss", "hit")
    assert shared_proxy.proc.poll() is None


def test_a_lone_surrogate_streams_through_unchanged_and_its_text_stays_out_of_the_log(shared_proxy, provider,
                                                                                      api_key):
    body = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"private words \\ud800"}]}'
    full = openai_chat.completion({"content": "first then the rest"}, "gpt-4o-mini")
    chunks = openai_chat.stream_chunks(full, include_usage=False)
    client_saw_first = threading.Event()
    provider_waited = []

    def hold_back(i: int) -> None:
        if i == 1:  # the rest only once the client has the first chunk: a buffering proxy stalls here
            provider_waited.append(client_saw_first.wait(timeout=15))

    provider.handler = lambda call: StreamReply(chunks, before_chunk=hold_back)
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    with raw_client(shared_proxy) as http:
        for _ in range(3):
            provider_waited.clear()
            client_saw_first.clear()
            with http.stream("POST", URL, content=body, headers=headers) as response:
                assert response.headers["butter-cache"] == "bypass (not understood)"
                lines = []
                for line in response.iter_lines():
                    if line.startswith("data: {"):
                        client_saw_first.set()
                    lines.append(line)
            assert provider_waited == [True]
            assert provider.calls[-1].body == body
            assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
    log = shared_proxy.log_text()
    assert "private words" not in log and "Traceback" not in log
    assert log.count("lone UTF-16 surrogate") == 1
