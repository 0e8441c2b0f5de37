"""`butter ui`: the web view on 127.0.0.1, reading the database while proxies serve.

The same page and JSON API as `http://butter.local/` through the proxy
(addon/webview.py). Read-only unless `--allow-writes`; even then every write
needs the token embedded in the page. Bound to loopback only, and requests
whose Host is not this loopback address (DNS rebinding) are refused.
"""
from __future__ import annotations

import argparse
import sys
import threading
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from butter.addon import webview
from butter.cli.output import CliError, add_common, db_path, open_cache, run
from butter.store import Cache

LOOPBACK = ("127.0.0.1", "::1", "localhost")
MAX_BODY = 64 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ui", help="see the tree in a browser (a local web page; read-only by default)",
        description="Serve the web view of the database on http://127.0.0.1:PORT/: workflows drawn as graphs, "
                    "every node's messages and replies, recent requests, search, live while proxies serve. "
                    "Read-only unless --allow-writes.")
    add_common(parser)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (127.0.0.1 or ::1)")
    parser.add_argument("--allow-writes", action="store_true",
                        help="let the page mark replies good/bad and forget nodes (each write needs the page's token)")
    parser.add_argument("--open", action="store_true", help="open the page in the default browser")
    parser.set_defaults(func=run(ui))


class Handler(BaseHTTPRequestHandler):
    server: "Server"
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        server = self.server
        if not webview.host_allowed(self.headers.get("host"), server.server_port):
            page = webview.error(403, "this page answers only to its loopback address (Host header refused)")
        elif not webview.is_webview_path(self.path):
            page = webview.error(404, f"no page {self.path.split('?', 1)[0]}")
        else:
            length = int(self.headers.get("content-length") or 0)
            if length > MAX_BODY:
                page = webview.error(413, "request body too large")
            else:
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                page = webview.handle(server.cache.backend, server.cache.policy, server.settings, self.command,
                                      self.path, headers, body)
        self.send_response(page.status)
        for name, value in page.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(page.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(page.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:  # one quiet line per write only
        if self.command not in ("GET", "HEAD"):
            sys.stderr.write("butter ui: %s\n" % (format % args))


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], cache: Cache, settings: webview.Settings):
        if ":" in address[0]:
            self.address_family = __import__("socket").AF_INET6
        super().__init__(address, Handler)
        self.cache, self.settings = cache, settings


def serve(cache: Cache, host: str, port: int, allow_writes: bool) -> Server:
    """A running server in a background thread (tests and `ui` use it)."""
    if host not in LOOPBACK:
        raise CliError(f"butter ui only listens on loopback (127.0.0.1 or ::1), not {host}")
    host = "127.0.0.1" if host == "localhost" else host
    settings = webview.Settings("ui", allow_writes, db=cache.backend.path)
    server = Server((host, port), cache, settings)
    threading.Thread(target=server.serve_forever, name="butter-ui", daemon=True).start()
    return server


def ui(args: argparse.Namespace) -> int:
    with open_cache(args) as cache:
        try:
            server = serve(cache, args.host, args.port, args.allow_writes)
        except OSError as e:
            raise CliError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e
        host = server.server_address[0]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{server.server_port}/"
        print(f"butter ui: {url}  ({db_path(args)}, {'writes allowed' if args.allow_writes else 'read-only'}; "
              "Ctrl-C to stop)", flush=True)
        if args.open:
            webbrowser.open(url)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()
    return 0
