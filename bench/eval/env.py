"""The moving parts of an evaluation: an oracle provider over TLS and two
real mitmdump processes running butter on one tree.

The `auto` proxy is where runs are recorded (as an agent in production
would: hits served, misses forwarded and recorded, induction running after
misses). The `replay` proxy reads the same database and never contacts the
provider, so held-out runs can be measured after k recordings without
themselves being recorded.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import openai

from tests.e2e.harness import Proxy
from tests.fakes.provider import FakeProvider
from tests.fakes.tls import make_ca_and_cert

from .oracle import Oracle

SESSION_CONTROL = Path(__file__).resolve().parents[2] / "addon" / "session_control.py"


class EvalEnv:
    def __init__(self, workdir: Path | None = None, proxy_options: dict | None = None, settled: bool = False):
        """`settled`: the recording proxy also runs addon/session_control.py, so `drain`
        can wait for it to conclude what a run left behind (see `drain`)."""
        # Import the store and the adapter now, before the proxies start, so
        # that explanations read the tree with the code that wrote it.
        import butter.addon.formats.openai_chat  # noqa: F401
        import butter.store  # noqa: F401
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="butter-eval-")
        self.workdir = Path(workdir or self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca, cert, key = make_ca_and_cert(self.workdir / "tls")
        self.oracle = Oracle()
        self.provider = FakeProvider(cert, key, self.oracle.handler)
        confdir = self.workdir / "mitmproxy"
        confdir.mkdir(exist_ok=True)
        db = self.workdir / "db"
        upstream = f"127.0.0.1:{self.provider.port}"
        options = proxy_options or {}
        self.settled = settled
        self._control_token = uuid.uuid4().hex if settled else ""
        control = {"butter_control_token": self._control_token} if settled else {}
        self.auto = Proxy(confdir, db, self.workdir / "auto.log", mode="auto", upstream=upstream,
                          upstream_ca=ca, options={**options, **control},
                          scripts=(SESSION_CONTROL,) if settled else ())
        # Started second: the first proxy has written mitmproxy's CA by now.
        self.replay = Proxy(confdir, db, self.workdir / "replay.log", mode="replay", upstream=upstream,
                            upstream_ca=ca, options=options)
        self.db = db
        self._reader = None

    def client(self, proxy: Proxy, api_key: str) -> openai.OpenAI:
        http = openai.DefaultHttpxClient(proxy=proxy.url, verify=str(proxy.ca_cert), trust_env=False)
        return openai.OpenAI(api_key=api_key, http_client=http, max_retries=0, timeout=60)

    @staticmethod
    def new_key() -> str:
        """A fresh credential: its own namespace in the shared tree."""
        return "sk-eval-" + uuid.uuid4().hex

    def drain(self) -> None:
        """With `settled`: wait until the recording proxy has finished the exchanges sent so
        far, its writer has concluded their verifications and recordings, and induction has
        learned from them. Live traffic then meets the same trust state on every run of the
        evaluation (without it, a verification may conclude before or after the next run's
        request, and counts move from run to run)."""
        if not self.settled:
            return
        http = httpx.Client(proxy=self.auto.url, trust_env=False, timeout=60)
        try:
            answer = http.post("http://butter-control.local/end",
                               headers={"x-butter-control-token": self._control_token})
            answer.raise_for_status()
        finally:
            http.close()

    def settle(self, quiet: float = 0.6, timeout: float = 60.0) -> None:
        """Wait until the recording proxy has written and learned from every miss.

        Induction runs off the request path after misses; measuring held-out
        runs before it finishes would undercount what butter learned. The
        addon logs one `butter: induction ...` line per recorded miss, in
        order, so settled means: as many induction lines as recorded replies
        and a log that has been quiet for `quiet` seconds (or for 5 seconds,
        if some records are never learned from).
        """
        deadline = time.monotonic() + timeout
        last = -1
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            size = os.path.getsize(self.auto.log)
            if size != last:
                last, stable_since = size, time.monotonic()
            else:
                quiet_for = time.monotonic() - stable_since
                if quiet_for >= 5.0:
                    return
                if quiet_for >= quiet:
                    text = self.auto.log.read_text(errors="replace")
                    if text.count("butter: induction ") >= text.count("butter: recorded "):
                        return
            time.sleep(0.1)

    def explain(self, api_key: str, body: dict) -> str:
        """Why the tree does not answer this request: the store's own Miss, read
        from the proxies' database in this process (LMDB readers never block)."""
        from butter.addon.formats.base import WireRequest
        from butter.addon.formats.openai_chat import FORMAT
        from butter.store import Hit

        cache = self._cache()
        from butter.addon.exchange import upstream_of, with_upstream

        parsed = FORMAT.parse_request(WireRequest("POST", "/v1/chat/completions", {}, {}, json.dumps(body).encode()))
        parsed = with_upstream(parsed, upstream_of("https", "api.openai.com", 443))  # where the agents' SDK goes
        result = cache.lookup(cache.namespace(api_key), parsed.conversation)
        if isinstance(result, Hit):
            return "hit now (learned after this request was measured)"
        where = f"{result.reason} at message {result.matched}"
        if result.template_failure:
            return f"{where}; nearest template: {result.template_failure}"
        return f"{where}: {result.detail}"

    def _cache(self):
        from butter.store import Cache
        if self._reader is None:
            self._reader = Cache(self.db)
        return self._reader

    def induction_failures(self, since: float) -> list[str]:
        """Reasons induction gave for the proposals it rejected since `since`
        (its own side table; each failed set of runs is remembered once)."""
        try:
            from butter.store.learning import FAILED_TABLE
        except ImportError:
            return []
        return [v.get("reason", "") for _, v in self._cache().backend.iter_aux(FAILED_TABLE)
                if isinstance(v, dict) and v.get("t", 0) >= since]

    def trust_states(self) -> dict[str, int]:
        """How many learned template replies are on probation, trusted, demoted
        (the trust side table, when this butter keeps one)."""
        states: dict[str, int] = {}
        try:
            for _, entry in self._cache().backend.iter_aux("trust"):
                if isinstance(entry, dict) and entry.get("source") != "declared":
                    state = str(entry.get("state", "?"))
                    states[state] = states.get(state, 0) + 1
        except Exception:  # an older butter keeps no trust: nothing to count
            return {}
        return states

    def log_size(self) -> int:
        return os.path.getsize(self.auto.log)

    def log_since(self, offset: int) -> str:
        with open(self.auto.log, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        for proxy in (self.replay, self.auto):
            proxy.stop()
        self.provider.close()
        if self._tmp is not None:
            self._tmp.cleanup()
