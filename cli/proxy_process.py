"""A butter proxy as a child process: start it, wait for it, point clients at it, stop it.

    trust = ensure_trust()                       # CA + trust bundle in the per-user config dir
    with ProxyProcess(ProxyOptions(db=".butter/db", mode="replay"), trust) as proxy:
        subprocess.run(cmd, env={**os.environ, **proxy.client_env()})

Used by `butter proxy`, `butter run` and test fixtures. It runs the same
`mitmdump -s addon/butter.py` a person would type, with the addon found next
to the installed (or checked-out) `addon` package, so the proxy behaves the
same however it was started.

Where the CA lives: mitmproxy's own convention, `~/.mitmproxy` (its default
`confdir`), so a CA you already trust for mitmproxy keeps working and a
plain `mitmdump` uses the same one. `$BUTTER_CONFDIR` overrides it (tests
point it at a temp dir). Beside the CA we write `butter-bundle.pem`: the
system's CAs plus mitmproxy's, so a client given it trusts butter and keeps
trusting every other host it reaches through the proxy.
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from butter import addon
CONFDIR_ENV = "BUTTER_CONFDIR"
CA_CERT_NAME = "mitmproxy-ca-cert.pem"  # what mitmproxy writes in its confdir
BUNDLE_NAME = "butter-bundle.pem"
PRELOAD = Path(__file__).resolve().parent / "node" / "proxy-preload.mjs"
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# `--reverse NAME`: the provider's API origin. Anything else must be a URL.
REVERSE_TARGETS = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "ollama": "http://127.0.0.1:11434",
}
# How each SDK is told to use a reverse listener instead of the provider (suffix after the listener's origin).
REVERSE_CLIENT_VARS = {
    "openai": ("OPENAI_BASE_URL", "/v1"),
    "anthropic": ("ANTHROPIC_BASE_URL", ""),
    "gemini": ("GOOGLE_GEMINI_BASE_URL", ""),
    "ollama": ("OLLAMA_HOST", ""),
}


class ProxyStartError(RuntimeError):
    """mitmdump exited or never listened; the message carries its log."""


# -- where things are -----------------------------------------------------------

def config_dir() -> Path:
    """`$BUTTER_CONFDIR`, else mitmproxy's default `~/.mitmproxy`."""
    return Path(os.environ.get(CONFDIR_ENV) or Path.home() / ".mitmproxy").expanduser()


def addon_script() -> Path:
    """`addon/butter.py` of the `addon` package this process imports (checkout or site-packages)."""
    return Path(addon.__file__).resolve().with_name("butter.py")


def mitmdump_executable() -> str:
    """The mitmdump installed beside this Python (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).with_name("mitmdump")
    if beside.exists():
        return str(beside)
    found = shutil.which("mitmdump")
    if found is None:
        raise ProxyStartError("mitmdump not found beside this Python or on PATH (pip install mitmproxy)")
    return found


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ensure_port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ProxyStartError(f"port {port} on {host} is in use ({e.strerror}); choose another with --port") from None


# -- trust ----------------------------------------------------------------------

@dataclass(frozen=True)
class Trust:
    confdir: Path
    ca_cert: Path  # mitmproxy's CA alone (Node's NODE_EXTRA_CA_CERTS adds it to Node's own roots)
    bundle: Path  # the system's CAs plus mitmproxy's (replaces a client's roots: SSL_CERT_FILE & co.)


def system_ca_pem() -> str:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and os.path.isfile(candidate):
            return Path(candidate).read_text()
    import certifi  # installed with mitmproxy's dependencies
    return Path(certifi.where()).read_text()


def ensure_trust(confdir: Path | None = None, bundle_name: str = BUNDLE_NAME) -> Trust:
    """Create mitmproxy's CA in `confdir` if missing, and (re)write the trust bundle.

    Safe to call from several processes at once: the CA is only created when
    absent, and the bundle is replaced atomically and only when it changes.
    """
    from mitmproxy.certs import CertStore  # import cost only for commands that start a proxy

    confdir = Path(confdir or config_dir())
    confdir.mkdir(parents=True, exist_ok=True)
    CertStore.from_store(str(confdir), "mitmproxy", 2048)  # writes the CA on first use only
    ca_cert = confdir / CA_CERT_NAME
    bundle = confdir / bundle_name
    wanted = system_ca_pem().rstrip() + "\n" + ca_cert.read_text()
    if not bundle.exists() or bundle.read_text() != wanted:
        fd, tmp = tempfile.mkstemp(dir=confdir, prefix=".bundle-")
        with os.fdopen(fd, "w") as f:
            f.write(wanted)
        os.chmod(tmp, 0o644)
        os.replace(tmp, bundle)
    return Trust(confdir, ca_cert, bundle)


# -- the process ----------------------------------------------------------------

@dataclass
class ProxyOptions:
    db: str | Path | None = None  # None: the addon's default ($BUTTER_DB, else .butter/db in cwd)
    mode: str = "auto"
    namespace: str = ""
    port: int = 0  # 0: a free loopback port
    listen_host: str = LOOPBACK
    reverse: list[str] = field(default_factory=list)  # provider names or URLs, one listener each
    upstream_insecure: bool = False  # accept self-signed / invalid upstream certificates
    options: dict[str, str] = field(default_factory=dict)  # more `--set key=value`
    scripts: list[Path] = field(default_factory=list)  # more `-s` addons, loaded after butter
    verbosity: str = "info"


@dataclass(frozen=True)
class ReverseListener:
    name: str  # provider name, or the URL given
    target: str  # the upstream origin
    port: int
    listen_host: str = LOOPBACK

    @property
    def url(self) -> str:
        # mitmproxy speaks TLS to the client when the target is https (its cert for `localhost`).
        if self.target.startswith("https://"):
            return f"https://localhost:{self.port}"
        return f"http://{self.listen_host}:{self.port}"

    def client_var(self) -> tuple[str, str] | None:
        """(`OPENAI_BASE_URL`, value) for a known provider, else None."""
        known = REVERSE_CLIENT_VARS.get(self.name)
        return (known[0], self.url + known[1]) if known else None


def reverse_target(spec: str) -> tuple[str, str]:
    """`openai` -> ("openai", "https://api.openai.com"); a URL stands for itself."""
    name = spec.strip().lower()
    if name in REVERSE_TARGETS:
        return name, REVERSE_TARGETS[name]
    if spec.startswith(("http://", "https://")):
        return spec, spec.rstrip("/")
    raise ValueError(f"--reverse {spec!r}: expected one of {', '.join(REVERSE_TARGETS)} or an http(s):// URL")


def mitmdump_args(opts: ProxyOptions, trust: Trust, port: int, reverse: list[ReverseListener]) -> list[str]:
    args = [mitmdump_executable(), "-s", str(addon_script())]
    for script in opts.scripts:
        args += ["-s", str(script)]
    args += ["--mode", f"regular@{port}"]
    for listener in reverse:
        args += ["--mode", f"reverse:{listener.target}@{listener.port}"]
    sets = {"confdir": str(trust.confdir), "butter_mode": opts.mode,
            "termlog_verbosity": opts.verbosity, "flow_detail": "0"}
    if opts.db is not None:
        sets["butter_db"] = str(opts.db)
    if opts.namespace:
        sets["butter_namespace"] = opts.namespace
    if opts.upstream_insecure:
        sets["ssl_insecure"] = "true"
    sets.update(opts.options)
    args += ["--listen-host", opts.listen_host]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def client_env(proxy_url: str, trust: Trust, base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables that send Python SDKs, curl, requests and Node through the proxy.

    `base` (e.g. os.environ) is consulted only to keep a NODE_OPTIONS the
    caller already has; the result holds just the variables to set.
    """
    preload = f'--import "{PRELOAD.as_uri()}"'
    node_options = ((base or {}).get("NODE_OPTIONS", "") + " " + preload).strip()
    bundle, ca = str(trust.bundle), str(trust.ca_cert)
    return {
        # Python (httpx, used by the openai/anthropic/google-genai/ollama SDKs; urllib; aiohttp with trust_env)
        "HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url, "https_proxy": proxy_url, "http_proxy": proxy_url,
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,  # requests ignores SSL_CERT_FILE
        "CURL_CA_BUNDLE": bundle,
        # Node: trust the CA on top of Node's roots; fetch honours the proxy via the preload (Node 20)
        # or natively (Node 24+).
        "NODE_EXTRA_CA_CERTS": ca,
        "NODE_OPTIONS": node_options,
        "NODE_USE_ENV_PROXY": "1",
    }


class ProxyProcess:
    """One `mitmdump -s addon/butter.py` child. Starts in the constructor; `stop()` (or `with`) ends it.

    `log`: a file to append mitmdump's output to; None lets it share this
    process's stdout/stderr (the foreground `butter proxy`). `own_session`:
    a Ctrl-C in the terminal does not reach mitmdump (`butter run` stops it
    itself, after the command, so the run's counts are complete).
    """

    def __init__(self, opts: ProxyOptions, trust: Trust | None = None, *, log: Path | None = None,
                 cwd: Path | None = None, start_timeout: float = START_TIMEOUT, own_session: bool = False):
        self.opts = opts
        self.trust = trust or ensure_trust()
        self.log_path = log
        if opts.port:
            # Checked first: mitmdump would exit, but our readiness probe would reach whoever holds the port.
            ensure_port_free(opts.listen_host, opts.port)
        self.port = opts.port or free_port(opts.listen_host)
        self.reverse = [ReverseListener(*reverse_target(spec), free_port(opts.listen_host), opts.listen_host)
                        for spec in opts.reverse]
        self.args = mitmdump_args(opts, self.trust, self.port, self.reverse)
        self._log_file: IO[bytes] | None = open(log, "ab") if log else None
        # The proxy's own upstream connections must not loop through a proxy set for clients.
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        out = self._log_file if self._log_file else None
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     env=env, cwd=cwd, start_new_session=own_session)
        try:
            for port in [self.port] + [r.port for r in self.reverse]:
                self._wait_for_port(port, start_timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://{self._probe_host}:{self.port}"

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return client_env(self.url, self.trust, base)

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def _wait_for_port(self, port: int, timeout: float) -> None:
        """Until `port` accepts; on the main port, until butter itself answers `butter.local/health`
        (the addon loaded and its tree open: a listening mitmdump may still exit on a startup error)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ProxyStartError(f"mitmdump exited with {self.proc.returncode}" + self._log_tail())
            if self._probe(port, butter=port == self.port):
                return
            time.sleep(0.05)
        raise ProxyStartError(f"mitmdump did not get ready on {self._probe_host}:{port} within {timeout:.0f} s"
                              + self._log_tail())

    @property
    def _probe_host(self) -> str:
        return "127.0.0.1" if self.opts.listen_host in ("0.0.0.0", "::") else self.opts.listen_host

    def _probe(self, port: int, *, butter: bool) -> bool:
        try:
            if not butter:
                socket.create_connection((self._probe_host, port), timeout=0.2).close()
                return True
            conn = http.client.HTTPConnection(self._probe_host, port, timeout=2)
            try:
                conn.request("GET", "http://butter.local/health", headers={"Host": "butter.local"})
                return conn.getresponse().status == 200
            finally:
                conn.close()
        except (OSError, http.client.HTTPException):
            return False

    def _log_tail(self) -> str:
        text = self.log_text()
        return (":\n" + "\n".join(text.splitlines()[-30:])) if text else ""

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM (mitmdump runs its `done` hooks: butter flushes counters and pending writes), then kill."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.proc.returncode

    def __enter__(self) -> "ProxyProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
