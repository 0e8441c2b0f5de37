"""Shared fixtures: a fake provider over TLS, real mitmdump proxies, temp LMDBs."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.e2e.harness import Proxy
from tests.fakes import openai_chat
from tests.fakes.provider import FakeProvider
from tests.fakes.tls import make_ca_and_cert


@pytest.fixture(autouse=True)
def _isolated_user_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may touch a real .butter/db or a real proxy setting.
    monkeypatch.setenv("BUTTER_DB", str(tmp_path / "default-db"))
    monkeypatch.setenv("BUTTER_CONFDIR", str(tmp_path / "butter-confdir"))  # never ~/.mitmproxy
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_ca_and_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mitmproxy's CA, made once by the first proxy and shared by all."""
    return tmp_path_factory.mktemp("mitmproxy-confdir")


@pytest.fixture(scope="session")
def provider(tls: tuple[Path, Path, Path]) -> Iterator[FakeProvider]:
    _, cert, key = tls
    fake = FakeProvider(cert, key, openai_chat.handler)
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _fresh_provider_script(request: pytest.FixtureRequest) -> Iterator[None]:
    # Only tests that use the provider pay for it; each starts with the
    # default script and no calls.
    if "provider" not in request.fixturenames:
        yield
        return
    fake: FakeProvider = request.getfixturevalue("provider")
    fake.handler = openai_chat.handler
    fake.calls.clear()
    yield


@pytest.fixture
def api_key() -> str:
    """A fresh credential per test: its own namespace in any shared database."""
    return "sk-test-" + uuid.uuid4().hex


ProxyFactory = Callable[..., Proxy]


@pytest.fixture
def start_proxy(tmp_path: Path, confdir: Path, provider: FakeProvider, tls) -> Iterator[ProxyFactory]:
    """Start real mitmdump processes with butter; all are stopped after the test."""
    started: list[Proxy] = []
    ca = tls[0]

    def start(db: Path | None = None, *, forward: bool = True, **kwargs) -> Proxy:
        n = len(started)
        proxy = Proxy(confdir, db or tmp_path / "db", tmp_path / f"mitmdump-{n}.log",
                      upstream=f"127.0.0.1:{provider.port}" if forward else None,
                      upstream_ca=ca, **kwargs)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def shared_proxy(tmp_path_factory: pytest.TempPathFactory, confdir: Path, provider: FakeProvider, tls) -> Iterator[Proxy]:
    """One auto-mode proxy for the tests that only need isolation by credential."""
    folder = tmp_path_factory.mktemp("shared-proxy")
    proxy = Proxy(confdir, folder / "db", folder / "mitmdump.log", upstream=f"127.0.0.1:{provider.port}",
                  upstream_ca=tls[0])
    yield proxy
    proxy.stop()


@pytest.fixture
def through(monkeypatch: pytest.MonkeyPatch) -> Callable[[Proxy], None]:
    """Point this process's SDK clients at a proxy, the way a user's shell would."""
    def use(proxy: Proxy) -> None:
        for key, value in proxy.client_env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return use


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["RedisServer"]:
    """One real redis-server for the session; each test takes its own prefix (see shared_store_url)."""
    from tests.fakes.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def shared_store_url(redis_server, tmp_path: Path) -> Callable[[str], str]:
    """`url("a")`: this test's shared tree on the session's Redis, seen through replica `a`."""
    prefix = "t" + uuid.uuid4().hex[:12]

    def url(replica: str = "a") -> str:
        return f"{redis_server.url}?prefix={prefix}&local={tmp_path / ('replica-' + replica)}"

    return url
