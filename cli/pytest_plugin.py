"""pytest plugin: test an agent offline against cassettes that live in git.

Installed with butter (entry point `butter` in the `pytest11` group). A test
opts in with the `butter` marker or fixture; its code stays unmodified: the
plugin points it at a butter proxy through the environment (HTTPS_PROXY, a
trust bundle for Python SDKs, curl and requests, NODE_EXTRA_CA_CERTS and an
undici preload for Node subprocesses).

    pytest --butter-mode=auto      # replay what the cassettes hold, record what they do not
    pytest                         # replay (the default): a request never recorded fails the test
    pytest --butter-mode=record    # record every test again from scratch
    pytest --butter-mode=off       # no proxy: the code talks to the provider directly

How it runs: one `mitmdump` with butter per session (cli/proxy_process.py),
started when the first test needs it, with addon/session_control.py loaded
after butter. Each cassette gets its own small database in the session's
temporary folder, loaded from the cassette file before its first test; the
control addon switches butter to that database, mode and namespace before
each test, and after the test waits until everything the test sent is
recorded and learned from: tens of milliseconds per test where a proxy
started per test costs seconds (bench/pytest_switch.py). The cassette file is
then rewritten only when its content changed (store/cassette.py).

Cassettes: by default one per test, `<cassettes>/<module>/<test>.jsonl`
(`--butter-scope=module`: one per module, `<cassettes>/<module>.jsonl`);
`@pytest.mark.butter(namespace="refunds")` puts every test naming it in one
namespace and one cassette, `<cassettes>/refunds.jsonl`, so templates learned
from some tests serve the others. `<cassettes>` is `--butter-cassettes` (ini
`butter_cassettes`, relative to the ini file), else `cassettes/` beside the
test file.

In replay mode a request that was never recorded gets butter's replay-miss
error, and the plugin fails the test with butter's explanation of the miss
(where the request left the recordings and what differed) instead of the SDK
exception it caused.
"""
from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from butter.store import cassette
from butter.store.lmdb_backend import LmdbBackend

MODES = ("replay", "auto", "record", "off")
SCOPES = ("test", "module")
DEFAULT_MODE = "replay"
CONTROL_URL = "http://butter-control.local"
LOOPBACK = "127.0.0.1"  # where cli/proxy_process.py listens by default
MAX_EXPLAINED = 3  # misses explained in full per test; the rest are listed
_SESSION = pytest.StashKey["ButterSession"]()
_ACTIVE = pytest.StashKey["ButterTest"]()


# -- options, ini and marker ------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("butter", "butter: record and replay LLM traffic with cassettes")
    group.addoption("--butter-mode", choices=MODES, default=None,
                    help="replay (default): serve the cassettes, a request never recorded fails the test; "
                         "auto: replay and record what is missing; record: record every test again; "
                         "off: no proxy at all")
    group.addoption("--butter-cassettes", metavar="DIR", default=None,
                    help="folder of the cassettes; default: cassettes/ beside each test file")
    group.addoption("--butter-scope", choices=SCOPES, default=None,
                    help="one cassette (and namespace) per test (default) or per module")
    group.addoption("--butter-proxy-option", action="append", default=[], metavar="NAME=VALUE",
                    help="a mitmproxy option for the session's proxy (`--set NAME=VALUE`), repeatable")
    group.addoption("--butter-proxy-script", action="append", default=[], metavar="PATH",
                    help="another mitmproxy addon script for the session's proxy (loaded after butter), repeatable")
    parser.addini("butter_mode", f"default for --butter-mode (default {DEFAULT_MODE})", default=DEFAULT_MODE)
    parser.addini("butter_cassettes", "default for --butter-cassettes (relative to the ini file)", default="")
    parser.addini("butter_scope", "default for --butter-scope (test or module)", default="test")
    parser.addini("butter_proxy_options", "mitmproxy options for the proxy, NAME=VALUE per line", type="linelist",
                  default=[])
    parser.addini("butter_proxy_scripts", "more mitmproxy addon scripts for the proxy, one path per line",
                  type="linelist", default=[])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "butter(namespace=None, shared=False): run this test through butter with a cassette; namespace=NAME "
        "shares one namespace and cassette (NAME.jsonl) with every test naming it, shared=True with the rest "
        "of its module")
    mode = config.getoption("--butter-mode") or config.getini("butter_mode")
    scope = config.getoption("--butter-scope") or config.getini("butter_scope")
    if mode not in MODES:
        raise pytest.UsageError(f"butter_mode = {mode!r}: expected one of {', '.join(MODES)}")
    if scope not in SCOPES:
        raise pytest.UsageError(f"butter_scope = {scope!r}: expected one of {', '.join(SCOPES)}")
    options: dict[str, str] = {}
    for pair in list(config.getini("butter_proxy_options")) + config.getoption("--butter-proxy-option"):
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise pytest.UsageError(f"butter proxy option {pair!r} is not NAME=VALUE")
        options[name.strip()] = value.strip()
    # Paths on the command line are relative to where pytest runs, in the ini file to that file.
    here = Path(config.invocation_params.dir)
    ini_dir = Path(config.inipath).parent if config.inipath else Path(config.rootpath)
    scripts = [_resolve(ini_dir, s) for s in config.getini("butter_proxy_scripts")]
    scripts += [_resolve(here, s) for s in config.getoption("--butter-proxy-script")]
    folder = None
    if config.getoption("--butter-cassettes"):
        folder = _resolve(here, config.getoption("--butter-cassettes"))
    elif config.getini("butter_cassettes"):
        folder = _resolve(ini_dir, config.getini("butter_cassettes"))
    config.stash[_SESSION] = ButterSession(mode, scope, folder, options, scripts)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        session.close()


def pytest_deselected(items: list[pytest.Item]) -> None:
    if items:
        session = items[0].config.stash.get(_SESSION, None)
        if session is not None:
            session.deselected(items)


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(_SESSION, None)
    return f"butter: mode {session.mode}, one cassette per {session.scope}" if session else None


def _resolve(root: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


# -- what a test sees ---------------------------------------------------------------

@dataclass
class ButterTest:
    """The `butter` fixture: where this test's traffic goes, and what happened to it."""

    mode: str
    cassette: Path | None  # the file this test replays from and records into (None in off mode)
    namespace: str
    env: dict[str, str]  # the variables set for the test (and inherited by its subprocesses)
    proxy_url: str | None
    _session: "ButterSession | None" = field(default=None, repr=False)
    _explained: int = field(default=0, repr=False)  # replay misses already reported
    _final: dict | None = field(default=None, repr=False)  # the proxy's account at the test's end

    def counts(self) -> dict[str, int]:
        """The test's LLM responses so far by butter-cache value: hit, miss, record, replay-miss, bypass."""
        if self._session is None or self._session.proxy is None:
            return {}
        return dict(self._session.control("GET", "/report")["counts"])

    @property
    def hits(self) -> int:
        """Requests served from the cassette (exact or by a template)."""
        return self.counts().get("hit", 0)

    @property
    def verified(self) -> int:
        """Requests a learned template would answer, sent to the provider to check it (docs/trust.md)."""
        return self.counts().get("verify", 0)

    @property
    def misses(self) -> int:
        """Requests that went to the provider (and were recorded), or failed as replay misses."""
        c = self.counts()
        return c.get("miss", 0) + c.get("record", 0) + c.get("replay-miss", 0)


@dataclass
class Group:
    """One cassette: its file, its namespace and the session database it is loaded into."""

    key: tuple[Path, str]  # (cassette folder, namespace)
    name: str
    path: Path
    db: Path
    prepared: bool = False


class ButterSession:
    """The session's proxy (started on first use) and its cassettes."""

    def __init__(self, mode: str, scope: str, folder: Path | None, options: dict[str, str], scripts: list[Path]):
        self.mode, self.scope, self.folder = mode, scope, folder
        self.options, self.scripts = options, scripts
        self.proxy: Any = None
        self.start_error = ""
        self.token = secrets.token_hex(16)
        self.groups: dict[tuple[Path, str], Group] = {}
        self.partial: set[tuple[Path, str]] = set()  # shared cassettes with deselected tests
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._conn: http.client.HTTPConnection | None = None

    # -- the proxy
    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="butter-pytest-")
        return Path(self._tmp.name)

    def start(self) -> Any:
        if self.start_error:  # one failed start is reported once, not waited for again by every test
            pytest.fail(f"butter: the proxy could not start earlier in this session: {self.start_error}",
                        pytrace=False)
        if self.proxy is None:
            from butter.addon import session_control
            from butter.cli.proxy_process import ProxyOptions, ProxyProcess, ProxyStartError

            opts = ProxyOptions(db=self.workdir / "idle", mode="replay", namespace="idle",
                                scripts=[Path(session_control.__file__).resolve(), *self.scripts],
                                options={"butter_control_token": self.token, **self.options})
            try:
                self.proxy = ProxyProcess(opts, log=self.workdir / "mitmdump.log")
            except ProxyStartError as e:
                self.start_error = str(e).splitlines()[0]
                pytest.fail(f"butter: the proxy did not start: {e}", pytrace=False)
        return self.proxy

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request to the control addon, on a kept-alive connection (half the cost of a new one)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"x-butter-control-token": self.token, "content-type": "application/json"}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(LOOPBACK, self.proxy.port, timeout=60)
            try:
                self._conn.request(method, CONTROL_URL + path, body=data, headers=headers)
                response = self._conn.getresponse()
                text = response.read().decode(errors="replace")
                break
            except (OSError, http.client.HTTPException) as e:  # a dropped keep-alive, or the proxy is gone
                self._conn.close()
                self._conn = None
                if attempt == 2 or not self.proxy.running():
                    state = "did not answer" if self.proxy.running() else "exited"
                    raise RuntimeError(f"butter proxy control {path}: the proxy {state} ({e})"
                                       + self.log_tail()) from None
        if response.status != 200:
            raise RuntimeError(f"butter proxy control {path}: {response.status} {text}" + self.log_tail())
        return json.loads(text)

    def log_tail(self, lines: int = 20) -> str:
        text = self.proxy.log_text() if self.proxy is not None else ""
        return ("\nmitmdump log (last lines):\n" + "\n".join(text.splitlines()[-lines:])) if text else ""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- cassettes
    def cassette_of(self, item: pytest.Item) -> tuple[Path, str, Path, bool]:
        """(cassette folder, namespace, cassette file, shared by several tests?) of a test."""
        marker = item.get_closest_marker("butter")
        kwargs = marker.kwargs if marker else {}
        test_file = Path(str(item.path))
        folder = self.folder or test_file.parent / "cassettes"
        module = test_file.stem
        if kwargs.get("namespace"):
            name = str(kwargs["namespace"])
            return folder, name, folder / f"{_safe(name)}.jsonl", True
        if kwargs.get("shared") or self.scope == "module":
            return folder, module, folder / f"{_safe(module)}.jsonl", True
        test = item.name if getattr(item, "cls", None) is None else f"{item.cls.__name__}.{item.name}"
        return folder, f"{module}/{test}", folder / _safe(module) / f"{_safe(test)}.jsonl", False

    def group_for(self, item: pytest.Item) -> Group:
        folder, name, path, _ = self.cassette_of(item)
        key = (folder, name)
        if key not in self.groups:
            self.groups[key] = Group(key, name, path, self.workdir / f"db-{len(self.groups)}")
        return self.groups[key]

    def deselected(self, items: list[pytest.Item]) -> None:
        """A shared cassette some of whose tests do not run is recorded into, never started afresh."""
        for item in items:
            if item.get_closest_marker("butter") or "butter" in getattr(item, "fixturenames", ()):
                folder, name, _, shared = self.cassette_of(item)
                if shared:
                    self.partial.add((folder, name))

    def begin(self, group: Group) -> None:
        """Before a test: its cassette loaded (once), the proxy switched to it."""
        if not group.prepared:
            group.db.mkdir(parents=True, exist_ok=True)
            # Record mode starts from nothing, like a fresh cassette, unless that
            # would drop the recordings of a shared cassette's tests not run now.
            if self.mode != "record" or group.key in self.partial:
                backend = LmdbBackend(group.db)
                try:
                    cassette.load(backend, group.path)
                except Exception as e:
                    pytest.fail(f"butter: cannot load cassette {group.path}: {e}", pytrace=False)
                finally:
                    backend.close()
            group.prepared = True
        self.control("POST", "/begin", {"db": str(group.db), "mode": self.mode, "namespace": group.name})

    def end(self, group: Group) -> dict:
        """After a test: everything it sent recorded; the cassette rewritten if its content changed."""
        report = self.control("POST", "/end")
        counts = report["counts"]
        if self.mode in ("auto", "record") and (counts.get("miss") or counts.get("record") or counts.get("verify")):
            backend = LmdbBackend(group.db)
            try:
                report["written"] = cassette.save(backend, group.path, group.name)
            finally:
                backend.close()
        return report

    def explain(self, group: Group, miss: dict) -> str:
        """butter's own `explain` of one replay miss, against the test's database."""
        from butter.cli.main import main as butter_main

        with tempfile.NamedTemporaryFile("w", suffix=".json", dir=self.workdir, delete=False) as f:
            f.write(miss["body"])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                butter_main(["--db", str(group.db), "explain", f.name, "--path", miss["path"],
                             "--namespace", group.name])
            except SystemExit:
                pass
        Path(f.name).unlink(missing_ok=True)
        return (out.getvalue() or err.getvalue()).rstrip()


def _safe(name: str) -> str:
    """A file name from a test or namespace name (parametrize ids included)."""
    return re.sub(r"[^\w.\-]+", "_", name).strip("._") or "_"


# -- fixtures -----------------------------------------------------------------------

@pytest.fixture
def butter(request: pytest.FixtureRequest) -> Iterator[ButterTest]:
    """Run this test through butter: env set, cassette loaded, recorded after."""
    session: ButterSession = request.config.stash[_SESSION]
    if session.mode == "off":
        yield ButterTest("off", None, "", {}, None)
        return
    group = session.group_for(request.node)
    proxy = session.start()
    session.begin(group)
    env = proxy.client_env(base=dict(os.environ))
    test = ButterTest(session.mode, group.path, group.name, env, proxy.url, session)
    request.node.stash[_ACTIVE] = test
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        for name in ("NO_PROXY", "no_proxy"):  # localhost is proxied too: a local provider is recorded
            mp.delenv(name, raising=False)
        yield test
    report = test._final = session.end(group)
    if not report.get("drained", True):
        pytest.fail(f"butter: the test's LLM exchanges were still in flight after 30 s; {group.path} may be "
                    "incomplete" + session.log_tail(), pytrace=False)


@pytest.fixture(autouse=True)
def _butter_marker(request: pytest.FixtureRequest) -> None:
    """The `butter` marker alone is enough: it brings the fixture."""
    if request.node.get_closest_marker("butter") is not None:
        request.getfixturevalue("butter")


# -- a replay miss fails the test with butter's explanation ------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    test = item.stash.get(_ACTIVE, None)
    if test is None or test._session is None or test.mode != "replay":
        return
    if call.when == "teardown":
        item.stash.__delitem__(_ACTIVE)
    report: pytest.TestReport = outcome.get_result()
    if call.when == "setup" and report.passed:
        return  # a miss during setup is reported with the call
    try:
        # After teardown the fixture already has the final account; otherwise ask.
        final = test._final if call.when == "teardown" else None
        misses = (final or test._session.control("GET", "/report"))["replay_misses"]
    except Exception:
        return  # the proxy is gone: the test's own failure says what happened
    new = misses[test._explained:]
    if not new:
        return
    test._explained = len(misses)
    group = test._session.group_for(item)
    original = ""
    if report.failed:
        original = call.excinfo.exconly() if call.excinfo is not None else report.longreprtext.strip()
    report.outcome = "failed"
    report.longrepr = _miss_report(test._session, group, new, original)


def _miss_report(session: ButterSession, group: Group, misses: list[dict], original: str) -> str:
    where = str(group.path) if group.path.exists() else f"{group.path} (no such cassette yet)"
    lines = [f"butter replay mode: {len(misses)} LLM request(s) of this test were never recorded in {where}.",
             "They were not sent to the provider; the code under test got butter's replay-miss error instead.",
             ""]
    for n, miss in enumerate(misses[:MAX_EXPLAINED], start=1):
        lines.append(f"request {n}: {miss['method']} {miss['host']}{miss['path']}")
        explanation = session.explain(group, miss) or miss["message"]
        lines.extend("  " + line for line in explanation.splitlines())
        lines.append("")
    if len(misses) > MAX_EXPLAINED:
        lines.append(f"... and {len(misses) - MAX_EXPLAINED} more")
        lines.append("")
    lines.append("If the change is intended, record it: pytest --butter-mode=auto (adds what is missing to the "
                 "cassette) or --butter-mode=record (records the test again from scratch).")
    if original:
        lines += ["", "What the test then failed with (a consequence of the miss):",
                  *("  " + line for line in original.splitlines()[:10])]
    return "\n".join(lines)
