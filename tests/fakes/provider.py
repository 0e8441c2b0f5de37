"""A fake LLM provider: real HTTP/1.1 over real TLS on loopback.

It knows nothing of butter. A test gives it a `handler(call) -> reply`, where
the reply is a `JSONReply` or a `StreamReply` (chunks written one by one with
chunked transfer encoding, optionally pausing or aborting). Every request it
receives is kept in `calls`, so a test can count provider calls.
"""
from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class JSONReply:
    body: Any
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamReply:
    chunks: list[bytes]
    content_type: str = "text/event-stream"
    status: int = 200
    # Called before chunk i is written (i >= 1): lets a test pause the stream.
    before_chunk: Callable[[int], None] | None = None
    abort_after: int | None = None  # close the connection after this many chunks


Handler = Callable[[Call], "JSONReply | StreamReply"]


class FakeProvider:
    def __init__(self, cert: Path, key: Path, handler: Handler):
        self.handler = handler
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        provider = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                call = Call("POST", parts.path, dict(parse_qsl(parts.query)),
                            {k.lower(): v for k, v in self.headers.items()}, body)
                with provider._lock:
                    provider.calls.append(call)
                reply = provider.handler(call)
                if isinstance(reply, JSONReply):
                    raw = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.send_header("content-length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                self.send_response(reply.status)
                self.send_header("content-type", reply.content_type)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for i, chunk in enumerate(reply.chunks):
                    if reply.abort_after is not None and i >= reply.abort_after:
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if i and reply.before_chunk:
                        reply.before_chunk(i)
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), RequestHandler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def calls_to(self, suffix: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.path.endswith(suffix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
