"""A minimal HTTP/1.1 keep-alive load generator on raw asyncio.

It does as little as a client can (no HTTP library, no JSON), so the numbers
measure the proxy. Each connection sends its requests one after another;
`concurrency` connections run side by side. Two ways in, as agents use them:

- `intercept`: CONNECT api.openai.com:443 through mitmdump's regular listener,
  then TLS to mitmproxy's certificate for api.openai.com (what HTTPS_PROXY does);
- `reverse`: TLS straight to a `reverse:https://api.openai.com` listener
  (what OPENAI_BASE_URL=https://localhost:PORT/v1 does).
"""
from __future__ import annotations

import asyncio
import ssl
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "api.openai.com"
PATH = "/v1/chat/completions"


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float] = field(repr=False)
    errors: int = 0
    first_headers: bytes = b""
    sent: int = 0  # good responses including the warm-up, for CPU per request
    cpu_seconds: float | None = None  # the proxy's CPU time over the whole run, when known

    @property
    def cpu_ms_per_request(self) -> float | None:
        return self.cpu_seconds / self.sent * 1000 if self.cpu_seconds is not None and self.sent else None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")

    @property
    def p99_ms(self) -> float:
        return self.percentile(0.99) * 1000


def _request_bytes(body: bytes, api_key: str) -> bytes:
    head = (f"POST {PATH} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _open(via: str, port: int, ca: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    context = ssl.create_default_context(cafile=str(ca))
    if via == "reverse":
        return await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readuntil(b"\r\n\r\n")
    if b" 200" not in status.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"CONNECT refused: {status[:80]!r}")
    await writer.start_tls(context, server_hostname=HOST)
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    else:
        raise RuntimeError("response without content-length (the bench sends plain requests)")
    body = await reader.readexactly(length)
    return status, head, body


async def _connection(via: str, port: int, ca: Path, requests: list[bytes], offset: int,
                      warmup_until: float, stop_at: float, out: Result, expect: bytes, nonce: bool) -> None:
    reader, writer = await _open(via, port, ca)
    n = offset
    try:
        while True:
            raw = requests[n % len(requests)]
            if nonce:  # bytes never sent before: a header no wire format reads, new each time
                raw = raw.replace(b"\r\nAccept:", f"\r\nX-Bench-Nonce: {n}\r\nAccept:".encode(), 1)
            n += 1
            start = time.perf_counter()
            if start >= stop_at:
                return
            writer.write(raw)
            status, head, _ = await _read_response(reader)
            end = time.perf_counter()
            if status != 200 or (expect and expect not in head):
                out.errors += 1
                if not out.first_headers:
                    out.first_headers = head
                continue
            if not out.first_headers:
                out.first_headers = head
            out.sent += 1
            if start >= warmup_until:
                out.latencies.append(end - start)
                out.requests += 1
    finally:
        writer.close()


async def run(via: str, port: int, ca: Path, bodies: list[bytes], *, concurrency: int, seconds: float,
              warmup: float = 1.0, api_key: str = "sk-bench", expect: bytes = b"", nonce: bool = False) -> Result:
    """Drive the proxy for warmup + seconds; only requests started after the warm-up count.

    `expect`: bytes every response head must contain (e.g. b"butter-cache: hit"),
    so a bench of hits cannot silently measure misses or errors. `nonce`: every
    request carries a header of its own, so no two are the same bytes (butter's
    hit memo, addon/hit_memo.py, never answers them).
    """
    requests = [_request_bytes(b, api_key) for b in bodies]
    out = Result(0, seconds, [])
    now = time.perf_counter()
    warmup_until, stop_at = now + warmup, now + warmup + seconds
    await asyncio.gather(*(
        _connection(via, port, ca, requests, i * 7919, warmup_until, stop_at, out, expect, nonce)
        for i in range(concurrency)))
    return out
