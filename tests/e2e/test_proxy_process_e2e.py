"""cli/proxy_process.py starting a real mitmdump with butter: it listens, answers through the
client environment it hands out (curl with its trust bundle), and stops cleanly."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from butter.cli.proxy_process import ProxyOptions, ProxyProcess, ProxyStartError, ensure_trust, free_port

CURL = shutil.which("curl")


def health_by_curl(proxy: ProxyProcess) -> dict:
    """butter.local/health fetched by curl over https, through the env the proxy hands out."""
    env = {**os.environ, **proxy.client_env()}
    done = subprocess.run([CURL, "-sS", "--fail", "https://butter.local/health"], env=env,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr + proxy.log_text()
    return json.loads(done.stdout)


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_started_proxy_answers_curl_over_https_with_the_env_it_returns_and_stops(tmp_path: Path):
    trust = ensure_trust(tmp_path / "conf")
    proxy = ProxyProcess(ProxyOptions(db=tmp_path / "db", mode="replay"), trust, log=tmp_path / "mitmdump.log")
    try:
        health = health_by_curl(proxy)
        assert health["mode"] == "replay"
        # The database this proxy opened: /health names its folder, never the absolute path.
        assert health["db"] == "db" and (tmp_path / "db" / "data.mdb").is_file()
    finally:
        assert proxy.stop() is not None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=0.5).close()


@pytest.mark.skipif(CURL is None, reason="needs curl")
def test_a_proxy_whose_shared_store_is_not_up_yet_starts_and_says_butter_is_disabled(tmp_path: Path):
    trust = ensure_trust(tmp_path / "conf")
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0?prefix=late&local={tmp_path / 'replica'}"
    proxy = ProxyProcess(ProxyOptions(db=nothing_listens), trust, log=tmp_path / "mitmdump.log")
    try:
        health = health_by_curl(proxy)
        assert health["butter"] == "disabled" and "shared store unreachable" in health["reason"]
    finally:
        assert proxy.stop() == 0  # stopped while it retries: SIGTERM is enough, no kill
    assert "Traceback" not in proxy.log_text()


def test_a_port_already_in_use_is_refused_before_mitmdump_starts(tmp_path: Path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(ProxyStartError, match=f"port {port} .* in use"):
            ProxyProcess(ProxyOptions(db=tmp_path / "db", port=port), ensure_trust(tmp_path / "conf"),
                         log=tmp_path / "mitmdump.log")


def test_a_mitmdump_that_exits_at_startup_raises_with_its_log(tmp_path: Path):
    (tmp_path / "db").write_text("a file where the database directory should be")
    with pytest.raises(ProxyStartError, match="exited"):
        ProxyProcess(ProxyOptions(db=tmp_path / "db"), ensure_trust(tmp_path / "conf"), log=tmp_path / "mitmdump.log")
