"""butter under load, faults and bad input (a script, not a test).

    .venv/bin/python bench/harden.py [--agents 50 --minutes 1] [--kills 10] [--json out.json]

Everything runs on loopback: real `mitmdump` processes with butter, a fake
OpenAI-style provider over real TLS (tests/fakes), raw HTTP/1.1 clients
through the proxy's CONNECT. It reports:

- load held: agents x minutes with learning on; req/s; p50/p99 of hits and
  misses; proxy memory (RSS) start -> end; data.mdb size; wrong hits (a hit
  whose answer is not what the provider says for that conversation);
- faults survived, with recordings lost per fault: kill -9 of mitmdump
  mid-traffic (x N, also with butter_durable), a peer proxy killed while
  another shares the database, the write lock held by another process,
  a truncated database, a full disk (RLIMIT_FSIZE on the proxy, or a small
  tmpfs when it can be mounted), map growth from 1 MiB;
- bad inputs: bodies by kind, with proxy crashes and requests whose bytes
  reached the provider altered (both must be 0), and how long the proxy
  stalled other clients while it handled the big ones (`--root` runs the
  same against another checkout, e.g. the code before a fix).

"Recordings lost" counts replies a client received as a miss that a fresh
process cannot find in the database afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import loadgen  # noqa: E402
from bench.bench import free_port, say  # noqa: E402
from butter.store import Cache, Hit  # noqa: E402
from butter.store.db_check import DatabaseDamaged  # noqa: E402
from butter.store.lmdb_backend import probe_in_subprocess  # noqa: E402
from tests.fakes.provider import Call, FakeProvider, JSONReply  # noqa: E402
from tests.fakes.tls import make_ca_and_cert  # noqa: E402

MITMDUMP = Path(sys.executable).with_name("mitmdump")
REDIRECT = ROOT / "tests" / "e2e" / "upstream_redirect.py"
API_KEY = "sk-harden-0123456789"
HOST = "api.openai.com"
PATH = "/v1/chat/completions"
SYSTEM = "You are a support agent. Answer in one sentence."
EXTRA_OPTIONS: dict[str, str] = {}  # --set KEY=VALUE: for every proxy the script starts


# -- the provider: deterministic answers, every body it received kept by request id ----------

def answer_for(messages: list) -> str:
    return "answer " + hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


class Upstream:
    def __init__(self, folder: Path):
        ca, cert, key = make_ca_and_cert(folder)
        self.ca = ca
        self.received: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.fake = FakeProvider(cert, key, self.handle)
        # Connections the kill -9 rounds cut would each print a traceback here.
        self.fake.server.handle_error = lambda request, address: None

    def handle(self, call: Call) -> JSONReply:
        rid = call.headers.get("x-harden-id", "")
        with self.lock:
            self.received[rid] = call.body
        try:
            body = json.loads(call.body)
            messages = body["messages"]
            assert isinstance(messages, list)
        except Exception:  # noqa: BLE001 - whatever it is, a provider refuses it
            return JSONReply({"error": {"message": "bad request", "type": "invalid_request_error"}}, status=400)
        return JSONReply({"id": "chatcmpl-h", "object": "chat.completion", "created": 1, "model": body.get("model"),
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": answer_for(messages)}}],
                          "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    def close(self) -> None:
        self.fake.close()


# -- the proxy ------------------------------------------------------------------------

class Proxy:
    def __init__(self, work: Path, upstream: Upstream, db: Path, label: str, *, root: Path = ROOT,
                 options: dict | None = None, env: dict | None = None, fsize: int | None = None):
        self.port = free_port()
        self.db = db
        self.log = work / f"mitmdump-{label}.log"
        self.confdir = work / "confdir"
        args = [str(MITMDUMP), "-s", str(root / "addon" / "butter.py"), "-s", str(REDIRECT),
                "--set", f"test_upstream=127.0.0.1:{upstream.fake.port}", "--mode", f"regular@{self.port}",
                "--listen-host", "127.0.0.1", "--set", f"confdir={self.confdir}", "--set", f"butter_db={db}",
                "--set", f"ssl_verify_upstream_trusted_ca={upstream.ca}", "--set", "termlog_verbosity=info",
                "--set", "flow_detail=0"]
        for k, v in {**EXTRA_OPTIONS, **(options or {})}.items():
            args += ["--set", f"{k}={v}"]
        full_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        full_env.update(env or {})

        def limit() -> None:
            if fsize is not None:  # a full disk: writes past this size fail with EFBIG
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._logf, stderr=subprocess.STDOUT, env=full_env, cwd=root,
                                     preexec_fn=limit)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited ({self.proc.returncode}): see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mitmdump did not listen: see {self.log}")
                time.sleep(0.05)

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._logf.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._logf.closed:
            self._logf.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# -- clients ----------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    cache: str
    body: bytes
    seconds: float


def request_bytes(body: bytes, rid: str, extra: dict[str, str] | None = None) -> bytes:
    head = [f"POST {PATH} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {API_KEY}",
            "Content-Type: application/json", f"Content-Length: {len(body)}", f"x-harden-id: {rid}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def exchange(conn, raw: bytes, timeout: float = 60.0) -> Reply:
    reader, writer = conn
    start = time.perf_counter()
    writer.write(raw)
    status, head, body = await asyncio.wait_for(loadgen._read_response(reader), timeout)
    cache = ""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"butter-cache:"):
            cache = line.split(b":", 1)[1].strip().decode()
    return Reply(status, cache, body, time.perf_counter() - start)


async def connect(proxy: Proxy):
    return await loadgen._open("intercept", proxy.port, proxy.ca)


def messages_for(task: int, turn: int) -> list[dict]:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Please refund order {task}."}]
    for t in range(1, turn + 1):
        msgs.append({"role": "assistant", "content": answer_for(msgs)})
        msgs.append({"role": "user", "content": f"And what is the status of order {task}, step {t}?"})
    return msgs


def body_for(messages: list[dict]) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": messages}).encode()


@dataclass
class Tally:
    hit: list[float] = field(default_factory=list)
    miss: list[float] = field(default_factory=list)
    errors: int = 0
    wrong: int = 0
    other: int = 0
    misses_received: list[list[dict]] = field(default_factory=list)  # conversations a client got as a miss


async def agent(proxy: Proxy, tally: Tally, stop_at: float, seed: int, pool: int, fresh: float) -> None:
    rng = random.Random(seed)
    try:
        conn = await connect(proxy)
    except Exception:  # noqa: BLE001 - a proxy that is gone
        tally.errors += 1
        return
    n = 0
    try:
        while time.perf_counter() < stop_at:
            task = rng.randrange(10**9) if rng.random() < fresh else rng.randrange(pool)
            for turn in range(rng.randint(0, 2) + 1):
                msgs = messages_for(task, turn)
                n += 1
                try:
                    reply = await exchange(conn, request_bytes(body_for(msgs), f"a{seed}-{n}"))
                except Exception:  # noqa: BLE001 - counted
                    tally.errors += 1
                    return
                if reply.status != 200:
                    tally.errors += 1
                    continue
                content = json.loads(reply.body)["choices"][0]["message"]["content"]
                if content != answer_for(msgs):
                    tally.wrong += 1
                if reply.cache == "hit":
                    tally.hit.append(reply.seconds)
                elif reply.cache == "miss":
                    tally.miss.append(reply.seconds)
                    tally.misses_received.append(msgs)
                else:
                    tally.other += 1
                if time.perf_counter() >= stop_at:
                    return
    finally:
        conn[1].close()


def drive(proxy: Proxy, agents: int, seconds: float, *, pool: int = 300, fresh: float = 0.1,
          seed: int = 0) -> Tally:
    tally = Tally()

    async def main() -> None:
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(agent(proxy, tally, stop_at, seed * 1000 + i, pool, fresh) for i in range(agents)))

    asyncio.run(main())
    return tally


def ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def lost_recordings(db: Path, conversations: list[list[dict]]) -> int:
    """How many conversations a client received as a miss are not in the database."""
    from butter.addon.formats.openai_chat import FORMAT
    from butter.addon.formats import WireRequest
    from butter.addon import credentials
    from butter.addon.exchange import upstream_of, with_upstream
    if not conversations:
        return 0
    cache = Cache(db)
    try:
        namespace = cache.namespace(credentials.split({"Authorization": f"Bearer {API_KEY}"}, {})[0])
        lost = 0
        for msgs in conversations:
            parsed = FORMAT.parse_request(WireRequest("POST", PATH, {}, {"content-type": "application/json"},
                                                      body_for(msgs)))
            # As the proxy keys it: by the server it went to (the client CONNECTs to HOST:443).
            parsed = with_upstream(parsed, upstream_of("https", HOST, 443))
            if not isinstance(cache.lookup(namespace, parsed.conversation), Hit):
                lost += 1
        return lost
    finally:
        cache.close()


def db_bytes(db: Path) -> int:
    data = db / "data.mdb"
    return data.stat().st_size if data.exists() else 0


def sound(db: Path) -> bool:
    try:
        return probe_in_subprocess(str(db)) is None
    except DatabaseDamaged:
        return False


# -- 1. load ------------------------------------------------------------------------------

def load_held(work: Path, up: Upstream, args) -> dict:
    db = work / "load-db"
    proxy = Proxy(work, up, db, "load", root=args.root)
    try:
        drive(proxy, 4, 2.0, pool=20, seed=99)  # warm the proxy up
        rss0, t0 = proxy.rss_mb(), time.perf_counter()
        tally = drive(proxy, args.agents, args.minutes * 60, seed=1)
        elapsed = time.perf_counter() - t0
        rss1 = proxy.rss_mb()
        alive = proxy.alive()
    finally:
        proxy.stop()
    total = len(tally.hit) + len(tally.miss) + tally.other
    return {"agents": args.agents, "minutes": args.minutes, "requests": total,
            "req_per_s": round(total / elapsed, 1), "hits": len(tally.hit), "misses": len(tally.miss),
            "hit_p50_ms": ms(tally.hit, 0.5), "hit_p99_ms": ms(tally.hit, 0.99),
            "miss_p50_ms": ms(tally.miss, 0.5), "miss_p99_ms": ms(tally.miss, 0.99),
            "errors": tally.errors, "wrong_hits": tally.wrong, "rss_mb_start": round(rss0, 1),
            "rss_mb_end": round(rss1, 1), "db_mb": round(db_bytes(db) / 2**20, 2), "proxy_alive": alive,
            "recordings_lost": lost_recordings(db, tally.misses_received)}


# -- 2. faults ----------------------------------------------------------------------------

def run_then(proxy: Proxy, agents: int, seconds: float, action, seed: int) -> Tally:
    """Drive the proxy for `seconds`, calling `action()` from another thread at half time."""
    timer = threading.Timer(seconds / 2, action)
    timer.start()
    try:
        return drive(proxy, agents, seconds, pool=10**6, fresh=1.0, seed=seed)
    finally:
        timer.cancel()


def fault_kill9(work: Path, up: Upstream, args, durable: bool, rounds: int) -> dict:
    db = work / f"kill-db-{'durable' if durable else 'default'}"
    lost = received = 0
    for r in range(rounds):
        proxy = Proxy(work, up, db, f"kill-{durable}-{r}", root=args.root,
                      options={"butter_durable": "true"} if durable else None)
        tally = run_then(proxy, 8, args.kill_after * 2, proxy.kill9, seed=100 + r)
        received += len(tally.misses_received)
        lost += lost_recordings(db, tally.misses_received)
    return {"fault": f"kill -9 of mitmdump mid-traffic x{rounds}" + (" (butter_durable)" if durable else ""),
            "survived": sound(db), "replies_received_as_miss": received, "recordings_lost": lost}


def fault_peer_kill(work: Path, up: Upstream, args) -> dict:
    db = work / "peer-db"
    a = Proxy(work, up, db, "peer-a", root=args.root)
    b = Proxy(work, up, db, "peer-b", root=args.root)
    try:
        result: dict = {}
        worker = threading.Thread(target=lambda: result.setdefault("b", drive(b, 8, 4.0, pool=10**6, fresh=1.0,
                                                                             seed=300)))
        worker.start()
        killed = run_then(a, 8, 2.0, a.kill9, seed=301)
        worker.join()
        survivor: Tally = result["b"]
        b_alive = b.alive()
    finally:
        b.stop()
        a.stop()
    return {"fault": "peer mitmdump killed -9 while another shares the database",
            "survived": b_alive and survivor.errors == 0 and sound(db),
            "survivor_errors": survivor.errors, "replies_received_as_miss": len(survivor.misses_received),
            "recordings_lost": lost_recordings(db, survivor.misses_received),
            "killed_peer_recordings_lost": lost_recordings(db, killed.misses_received)}


HOLD_WRITE_LOCK = """
import sys, time, lmdb
env = lmdb.open(sys.argv[1], max_dbs=8, subdir=True)
txn = env.begin(write=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
txn.abort()
"""


def fault_write_lock(work: Path, up: Upstream, args) -> dict:
    db = work / "lock-db"
    proxy = Proxy(work, up, db, "lock", root=args.root)
    try:
        drive(proxy, 1, 0.5, pool=10**6, fresh=1.0, seed=400)  # the database exists
        holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(db), "5"], stdout=subprocess.PIPE,
                                  text=True)
        holder.stdout.readline()
        held_at = time.perf_counter()

        async def six() -> list:
            conn = await connect(proxy)
            out = []
            for i in range(6):
                msgs = messages_for(10**9 + i, 0)
                try:
                    reply = await exchange(conn, request_bytes(body_for(msgs), f"lock-{i}"),
                                           timeout=max(0.1, 5 - (time.perf_counter() - held_at)))
                    out.append((msgs, reply))
                except Exception:  # noqa: BLE001 - not answered while the lock was held
                    break
            conn[1].close()
            return out

        answered = asyncio.run(six())
        holder.wait(timeout=30)
        time.sleep(1.0)  # the writer catches up once the lock is free
        alive = proxy.alive()
    finally:
        proxy.stop()
    misses = [m for m, r in answered if r.cache == "miss"]
    return {"fault": "another process holds the write lock for 5 s",
            "survived": alive, "misses_forwarded_within_5s": f"{len(answered)}/6",
            "recordings_lost": lost_recordings(db, misses)}


def fault_corrupt(work: Path, up: Upstream, args) -> dict:
    db = work / "corrupt-db"
    proxy = Proxy(work, up, db, "corrupt-fill", root=args.root)
    drive(proxy, 4, 2.0, pool=10**6, fresh=1.0, seed=500)
    proxy.stop()
    data = db / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    proxy = Proxy(work, up, db, "corrupt", root=args.root)
    try:
        tally = drive(proxy, 4, 2.0, pool=10**6, fresh=1.0, seed=501)
        alive = proxy.alive()
        disabled = "DISABLED" in proxy.log_text()
    finally:
        proxy.stop()
    cli = subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", str(db), "stats"], cwd=args.root,
                         capture_output=True, text=True, timeout=60)
    passed = tally.other + len(tally.miss) + len(tally.hit)
    return {"fault": "data.mdb truncated to half", "survived": alive and tally.errors == 0,
            "requests_passed_through": passed, "errors": tally.errors, "butter_disabled_and_logged": disabled,
            "cli_stats_exit_code": cli.returncode, "recordings_lost": "n/a (database refused)"}


def fault_disk_full(work: Path, up: Upstream, args) -> dict:
    db = work / "full-db"
    limit = 384 << 10
    proxy = Proxy(work, up, db, "full", root=args.root, fsize=limit, env={"BUTTER_INITIAL_MAP_SIZE": str(128 << 10)})
    try:
        tally = drive(proxy, 8, 8.0, pool=10**6, fresh=1.0, seed=600)
        alive = proxy.alive()
        failed_writes = proxy.log_text().count("a write to the tree failed")
    finally:
        proxy.stop()
    survived = alive and tally.errors == 0
    lost = lost_recordings(db, tally.misses_received)
    return {"fault": f"disk full (RLIMIT_FSIZE {limit >> 10} KiB on the proxy, map from 128 KiB)",
            "survived": survived and sound(db), "replies_received_as_miss": len(tally.misses_received),
            "client_errors": tally.errors, "writes_failed_logged": failed_writes,
            "recordings_lost": lost, "note": "replies that did not fit are lost; the database stays sound"}


def fault_map_growth(work: Path, up: Upstream, args) -> dict:
    db = work / "growth-db"
    proxy = Proxy(work, up, db, "growth", root=args.root, env={"BUTTER_INITIAL_MAP_SIZE": str(1 << 20)})
    try:
        tally = drive(proxy, 16, args.growth_seconds, pool=400, fresh=0.5, seed=700)
        alive = proxy.alive()
        failed = proxy.log_text().count("a write to the tree failed")
    finally:
        proxy.stop()
    return {"fault": "map growth from 1 MiB under load (writer, induction, hit counts)",
            "survived": alive and tally.errors == 0, "replies_received_as_miss": len(tally.misses_received),
            "write_errors_logged": failed, "db_mb_end": round(db_bytes(db) / 2**20, 2),
            "recordings_lost": lost_recordings(db, tally.misses_received)}


# -- 3. bad inputs --------------------------------------------------------------------------

def bad_inputs() -> list[tuple[str, bytes, dict]]:
    base = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    out: list[tuple[str, bytes, dict]] = []

    def add(kind: str, body: bytes, headers: dict | None = None) -> None:
        out.append((kind, body, headers or {}))

    add("empty body", b"")
    add("not json", b"hello there")
    add("truncated json", json.dumps(base).encode()[:-7])
    add("json array", b"[1,2,3]")
    add("messages not a list", b'{"model":"m","messages":"hi"}')
    add("message not an object", b'{"model":"m","messages":[1,2]}')
    add("content wrong type", b'{"model":"m","messages":[{"role":"user","content":{"x":1}}]}')
    add("deep nesting", b'{"model":"m","messages":[{"role":"user","content":' + b"[" * 50000 + b"]" * 50000 + b"}]}")
    add("huge number", b'{"model":"m","messages":[{"role":"user","content":"a"}],"temperature":1e999999}')
    add("NaN", b'{"model":"m","messages":[{"role":"user","content":"a"}],"temperature":NaN}')
    add("lone surrogate escape", b'{"model":"m","messages":[{"role":"user","content":"a \\ud800 b"}]}')
    add("lone surrogate bytes", b'{"model":"m","messages":[{"role":"user","content":"a \xed\xa0\x80 b"}]}')
    add("invalid utf-8", b'{"model":"m","messages":[{"role":"user","content":"a \xff\xfe b"}]}')
    add("utf-8 bom", b"\xef\xbb\xbf" + json.dumps(base).encode())
    add("duplicate keys", b'{"model":"m","model":"n","messages":[{"role":"user","content":"a"}]}')
    add("null messages", b'{"model":"m","messages":null}')
    add("binary junk", bytes(random.Random(1).randrange(256) for _ in range(4096)))
    add("bad gzip", b"\x1f\x8b\x08\x00garbage", {"content-encoding": "gzip"})
    add("unknown encoding", json.dumps(base).encode(), {"content-encoding": "snappy"})
    add("gzip bomb (300 MB inflated)", gzip.compress(
        b'{"model":"m","messages":[{"role":"user","content":"' + b"a" * (300 << 20) + b'"}]}', compresslevel=1),
        {"content-encoding": "gzip"})
    add("50 MB plain body", json.dumps({**base, "messages": [{"role": "user", "content": "b" * (50 << 20)}]}).encode())
    for i in range(20):  # many variants of one broken shape: logged once
        add("broken variants", b'{"model":"m","messages":[' + b"1," * i)
    return out


def bad_input_run(work: Path, up: Upstream, args) -> dict:
    db = work / "bad-db"
    proxy = Proxy(work, up, db, "bad", root=args.root)
    kinds: dict[str, int] = {}
    altered = crashes = not_answered = 0
    stalls: dict[str, float] = {}
    try:
        # A hit to time the proxy's responsiveness with.
        probe_msgs = messages_for(1, 0)
        probe = request_bytes(body_for(probe_msgs), "probe")

        async def main() -> None:
            nonlocal altered, not_answered
            ticker_conn = await connect(proxy)
            await exchange(ticker_conn, probe)
            base_lat = []
            for _ in range(20):
                base_lat.append((await exchange(ticker_conn, probe)).seconds)
            stalls["baseline hit p50"] = round(statistics.median(base_lat) * 1000, 2)
            for n, (kind, body, headers) in enumerate(bad_inputs()):
                kinds[kind] = kinds.get(kind, 0) + 1
                rid = f"bad-{n}"
                worst = 0.0
                # The body is sent by another process: a client encrypting 50 MB
                # would stall this loop too and be counted against the proxy.
                sender = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--send-one", json.dumps(
                        {"port": proxy.port, "ca": str(proxy.ca), "rid": rid, "headers": headers}),
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
                sender.stdin.write(body)
                sender.stdin.close()
                done = asyncio.ensure_future(sender.communicate())
                while not done.done():  # a hit every few ms while the big one is handled
                    worst = max(worst, (await exchange(ticker_conn, probe)).seconds)
                    await asyncio.sleep(0.005)
                status = int((done.result()[0] or b"0").split()[0] or 0)
                if status == 0 or status >= 500:
                    not_answered += 1
                if up.received.get(rid) != body:
                    altered += 1
                if len(body) > 1 << 20 or "bomb" in kind:
                    stalls[kind] = round(worst * 1000, 1)

        asyncio.run(main())
        crashes = 0 if proxy.alive() else 1
        log = proxy.log_text()
    finally:
        proxy.stop()
    return {"inputs": sum(kinds.values()), "by_kind": kinds, "proxy_crashes": crashes,
            "altered_upstream": altered, "not_answered": not_answered,
            "tracebacks_in_log": log.count("Traceback"), "warnings_in_log": log.count("not understood")
            + log.count("was not read") + log.count("surrogate"),
            "worst_hit_latency_ms_while_big_body_handled": stalls}


# -- main ---------------------------------------------------------------------------------

def send_one(spec: str) -> int:
    """--send-one: send stdin as one request body through the proxy; print the status and butter-cache."""
    opts = json.loads(spec)
    body = sys.stdin.buffer.read()

    async def go() -> Reply:
        conn = await loadgen._open("intercept", opts["port"], Path(opts["ca"]))
        try:
            return await exchange(conn, request_bytes(body, opts["rid"], opts["headers"]), timeout=120)
        finally:
            conn[1].close()

    try:
        reply = asyncio.run(go())
    except Exception as e:  # noqa: BLE001 - reported as status 0
        print(0, repr(e))
        return 0
    print(reply.status, reply.cache)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--send-one":
        return send_one(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--kills", type=int, default=10, help="kill -9 rounds (default 10)")
    parser.add_argument("--durable-kills", type=int, default=5, help="kill -9 rounds with butter_durable")
    parser.add_argument("--growth-seconds", type=float, default=15.0)
    parser.add_argument("--kill-after", type=float, default=3.0, help="seconds of traffic before each kill -9")
    parser.add_argument("--only", choices=["load", "faults", "bad"], action="append",
                        help="run only these sections (repeatable)")
    parser.add_argument("--root", type=Path, default=ROOT, help="butter checkout whose addon the proxies run")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a mitmdump option for every proxy (e.g. butter_induction=false)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, databases)")
    args = parser.parse_args(argv)
    args.root = args.root.resolve()
    EXTRA_OPTIONS.update(kv.split("=", 1) for kv in args.sets)
    sections = set(args.only or ["load", "faults", "bad"])
    work = Path(tempfile.mkdtemp(prefix="butter-harden-"))
    up = Upstream(work)
    report: dict = {"root": str(args.root)}
    t0 = time.monotonic()
    try:
        if "load" in sections:
            say(f"load: {args.agents} agents x {args.minutes} min ...")
            report["load"] = load_held(work, up, args)
            say(json.dumps(report["load"]))
        if "faults" in sections:
            faults = []
            for name, run in [("kill -9", lambda: fault_kill9(work, up, args, False, args.kills)),
                              ("kill -9 durable", lambda: fault_kill9(work, up, args, True, args.durable_kills)),
                              ("peer kill", lambda: fault_peer_kill(work, up, args)),
                              ("write lock", lambda: fault_write_lock(work, up, args)),
                              ("corrupt db", lambda: fault_corrupt(work, up, args)),
                              ("disk full", lambda: fault_disk_full(work, up, args)),
                              ("map growth", lambda: fault_map_growth(work, up, args))]:
                say(f"fault: {name} ...")
                try:
                    faults.append(run())
                except Exception as e:  # noqa: BLE001 - a fault the proxy did not survive is a result
                    faults.append({"fault": name, "survived": False, "harness_error": repr(e)})
                say(json.dumps(faults[-1]))
            report["faults"] = faults
        if "bad" in sections:
            say("bad inputs ...")
            report["bad_inputs"] = bad_input_run(work, up, args)
            say(json.dumps(report["bad_inputs"]))
    finally:
        up.close()
        if args.keep:
            say(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - t0)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
