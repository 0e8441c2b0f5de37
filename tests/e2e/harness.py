"""A real `mitmdump` running butter, started and stopped by tests."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon" / "butter.py"
REDIRECT = Path(__file__).with_name("upstream_redirect.py")
MITMDUMP = Path(sys.executable).with_name("mitmdump")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mitmdump exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mitmdump did not listen on {port}:\n{log.read_text()}")


class Proxy:
    def __init__(self, confdir: Path, db: Path, log: Path, *, mode: str = "auto", upstream: str | None = None,
                 upstream_ca: Path | None = None, reverse: str | None = None, options: dict | None = None,
                 butter: bool = True, scripts: tuple[Path, ...] = ()):
        # butter=False: a plain mitmdump (e.g. `-w FILE` recordings made without butter).
        # scripts: more addons, loaded after butter (addon/session_control.py).
        self.confdir, self.db, self.log = confdir, db, log
        self.port = free_port()
        self.reverse_port = free_port() if reverse else None
        args = [str(MITMDUMP)] + (["-s", str(ADDON)] if butter else [])
        for script in scripts:
            args += ["-s", str(script)]
        if upstream:
            args += ["-s", str(REDIRECT), "--set", f"test_upstream={upstream}"]
        args += ["--mode", f"regular@{self.port}"]
        if reverse:
            args += ["--mode", f"reverse:{reverse}@{self.reverse_port}"]
        args += ["--listen-host", "127.0.0.1", "--set", f"confdir={confdir}"]
        if butter:
            args += ["--set", f"butter_db={db}", "--set", f"butter_mode={mode}"]
        args += ["--set", "termlog_verbosity=info"]
        if "flow_detail" not in (options or {}):
            args += ["--set", "flow_detail=0"]
        if upstream_ca:
            args += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
        for key, value in (options or {}).items():
            args += ["--set", f"{key}={value}"]
        self._log_file = open(log, "ab")
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        self.proc = subprocess.Popen(args, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wait_for_port(self.port, self.proc, log)
        if self.reverse_port:
            wait_for_port(self.reverse_port, self.proc, log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def client_env(self) -> dict[str, str]:
        """What an unmodified Python agent needs to go through butter."""
        return {"HTTPS_PROXY": self.url, "HTTP_PROXY": self.url, "SSL_CERT_FILE": str(self.ca_cert),
                "NO_PROXY": "", "no_proxy": ""}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")
