"""A real redis-server (or valkey-server) on loopback, started and stopped by tests.

Not a fake: the shared store is tested against the engine it runs on.
`scripts/setup-env.sh` installs Debian's redis-server when it is missing.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.harness import free_port


def server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        pytest.fail("redis-server is not installed: run scripts/setup-env.sh as root "
                    "(or `apt-get install redis-server`)")
    return found


class RedisServer:
    """Durable (append-only file, fsync always) so a restart keeps what it acknowledged."""

    def __init__(self, folder: Path, password: str | None = None, *, port: int | None = None, start: bool = True):
        # start=False: a port chosen now, a server started later (a proxy that started before its Redis).
        self.folder, self.password = folder, password
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        args = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 15
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.RedisError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start: " + (self.folder / "redis.log").read_text())
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None
