"""`butter proxy`: run butter in the foreground and say how to point an agent at it.

    butter proxy [--mode auto|record|replay|off] [--port 8080] [--reverse openai] [--upstream-insecure]

The same `mitmdump -s addon/butter.py` as `make proxy`, with the CA and trust
bundle in the per-user config dir (cli/proxy_process.py) and the database of
the project you run it in (`.butter/db`). The options shared with `butter
run` are defined here.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from butter.cli.output import CliError, add_common, db_path, run
from butter.cli.proxy_process import (CONFDIR_ENV, ProxyOptions, ProxyProcess, ProxyStartError, ReverseListener, Trust,
                               config_dir, ensure_trust, reverse_target)

MODES = ("auto", "record", "replay", "off")
DEFAULT_PORT = 8080


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    """Options `butter proxy` and `butter run` share."""
    add_common(parser)
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="auto: serve hits, record misses (default); record: always ask the provider and "
                             "refresh; replay: never contact the provider, a miss is an error; off: passthrough")
    parser.add_argument("--namespace", default="", help="share one namespace between every credential")
    parser.add_argument("--reverse", action="append", default=[], metavar="PROVIDER|URL",
                        help="also listen as the provider itself (openai, anthropic, gemini, ollama, or a URL), "
                             "for clients that take a base URL instead of a proxy; repeatable")
    parser.add_argument("--upstream-insecure", action="store_true",
                        help="accept self-signed or otherwise invalid certificates from upstream servers "
                             "(a local model server, a test double); never for real providers")
    parser.add_argument("--confdir", type=Path, default=None,
                        help=f"where the CA and trust bundle live (default: ${CONFDIR_ENV}, else ~/.mitmproxy)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="OPTION=VALUE",
                        help="any other mitmproxy or butter option (e.g. butter_min_observations=2); repeatable")
    parser.add_argument("-s", "--script", dest="scripts", action="append", default=[], type=Path, metavar="PATH",
                        help="another mitmproxy addon script, loaded after butter; repeatable")


def proxy_options(args: argparse.Namespace, port: int = 0) -> ProxyOptions:
    sets: dict[str, str] = {}
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set {item!r}: expected OPTION=VALUE")
        sets[key.strip()] = value
    for spec in args.reverse:
        try:
            reverse_target(spec)
        except ValueError as e:
            raise CliError(str(e)) from None
    for script in args.scripts:
        if not script.is_file():
            raise CliError(f"--script {script}: no such file")
    return ProxyOptions(db=db_path(args).resolve(), mode=args.mode, namespace=args.namespace, port=port,
                        reverse=list(args.reverse), upstream_insecure=args.upstream_insecure, options=sets,
                        scripts=[s.resolve() for s in args.scripts])


def trust_for(args: argparse.Namespace) -> Trust:
    try:
        return ensure_trust(args.confdir or config_dir())
    except OSError as e:
        raise CliError(f"cannot create the CA in {args.confdir or config_dir()}: {e.strerror or e}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "proxy", help="run butter in the foreground and print the lines that point an agent at it",
        description="Start mitmdump with butter on 127.0.0.1 (CA and trust bundle in ~/.mitmproxy or "
                    f"${CONFDIR_ENV}; database .butter/db in this directory, or --db / $BUTTER_DB) and print the "
                    "environment to paste into the shell that runs your agent. Ctrl-C stops it.")
    add_proxy_arguments(parser)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--listen-host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the cache to your network)")
    parser.set_defaults(func=run(proxy))


def env_lines(env: dict[str, str], reverse: list[ReverseListener]) -> list[str]:
    """Shell lines to paste, grouped by client."""
    def export(names: list[str]) -> str:
        return "export " + " ".join(f"{n}={shlex.quote(env[n])}" for n in names)

    lines = ["# Python (openai, anthropic, google-genai, ollama, httpx), requests and curl",
             export(["HTTPS_PROXY", "HTTP_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"]),
             "# Node (fetch-based SDKs: openai, @anthropic-ai/sdk, @google/genai)",
             export(["NODE_EXTRA_CA_CERTS", "NODE_OPTIONS", "NODE_USE_ENV_PROXY"])]
    named = [listener.client_var() for listener in reverse]
    if any(named):
        lines.append("# or, instead of the proxy variables, a base URL (reverse listener)")
        lines += [f"export {name}={shlex.quote(value)}" for name, value in filter(None, named)]
    for listener in reverse:
        if listener.client_var() is None:
            lines.append(f"# reverse listener for {listener.target}: {listener.url}")
    return lines


def banner(proxy: ProxyProcess, opts: ProxyOptions) -> str:
    env = proxy.client_env()
    reverse = "".join(f"\n  reverse   {r.url} -> {r.target}" for r in proxy.reverse)
    return "\n".join([
        f"butter proxy on {proxy.url}",
        f"  mode      {opts.mode}" + ("   (replay: a request never recorded gets an error; the provider is "
                                      "never contacted)" if opts.mode == "replay" else ""),
        f"  database  {opts.db}",
        f"  CA        {proxy.trust.ca_cert}   (bundle with your system's CAs: {proxy.trust.bundle})" + reverse,
        "" if not opts.upstream_insecure else "  upstream certificates are NOT verified (--upstream-insecure)\n",
        "Paste into the shell that runs your agent:",
        "",
        *("  " + line for line in env_lines(env, proxy.reverse)),
        "",
        "Or let butter set it for one command:  butter run -- python agent.py",
        "Ctrl-C stops the proxy.",
        "",
    ])


def proxy(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port {args.port}: not a port number")
    opts = proxy_options(args, port=args.port)
    opts.listen_host = args.listen_host
    trust = trust_for(args)
    try:
        process = ProxyProcess(opts, trust)
    except ProxyStartError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:  # Ctrl-C while it started: ProxyProcess has stopped it
        return 130
    try:
        print(banner(process, opts), flush=True)
        return process.wait()
    except KeyboardInterrupt:  # mitmdump got the same Ctrl-C and is shutting down
        return process.stop() or 0
    finally:
        process.stop()
