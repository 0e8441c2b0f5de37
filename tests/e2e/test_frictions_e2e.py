"""Frictions a new user met, each through a real mitmdump with butter and the openai SDK."""
from __future__ import annotations

import subprocess
import sys
import time
import json

import openai
import pytest

from tests.e2e.harness import ROOT
from tests.fakes.openai_chat import run_agent


def stats_totals(db) -> dict:
    done = subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", str(db), "stats", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["totals"]


def test_hit_counters_reach_butter_stats_without_new_traffic(start_proxy, tmp_path, api_key, monkeypatch):
    proxy = start_proxy(options={"butter_induction": "false"})
    for name, value in proxy.client_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    client = openai.OpenAI(api_key=api_key, max_retries=0, timeout=20)
    run_agent(client, "1234")
    assert run_agent(client, "1234")["cache"] == ["hit", "hit", "hit"]
    # No request after the hits: the proxy must flush its counters on its own (it still runs).
    deadline = time.monotonic() + 15
    totals = stats_totals(tmp_path / "db")
    while totals["hits"] < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        totals = stats_totals(tmp_path / "db")
    assert proxy.proc.poll() is None
    assert (totals["hits"], totals["misses"], totals["tokens_saved"]) == (3, 3, 3 * 62)
