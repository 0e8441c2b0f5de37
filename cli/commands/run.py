"""`butter run -- CMD ARGS`: one command through its own butter proxy, then a summary.

    butter run -- python agent.py                     # record what is new, serve the rest
    butter run --mode replay --strict -- pytest       # CI: never call a provider; fail on anything unrecorded

A proxy on a free loopback port for the length of the command (so several
runs side by side never share a port), the command started with the
environment that sends Python SDKs, curl, requests and Node through it, and
at the end what the run did, counted by this proxy alone (the addon's
`butter_run_report` file): requests, hits, misses, provider calls and tokens
saved, and where each replay-miss left the tree. The exit code is the
command's; with `--strict`, a run with replay-misses exits 3 when the command
itself succeeded.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from butter.cli.commands.proxy import add_proxy_arguments, proxy_options, trust_for
from butter.cli.output import CliError, run
from butter.cli.proxy_process import ProxyProcess, ProxyStartError

EXIT_REPLAY_MISSES = 3
EXIT_NOT_FOUND = 127  # what a shell returns for a command it cannot find


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a command through its own butter proxy and summarise what was served",
        description="Start butter on a free loopback port, run CMD with HTTPS_PROXY, SSL_CERT_FILE, "
                    "REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, NODE_EXTRA_CA_CERTS and NODE_OPTIONS (Node's undici "
                    "preload) pointing at it, stop the proxy when CMD exits and print a summary on stderr. "
                    "Exits with CMD's code; with --strict, 3 when CMD succeeded but some request was never "
                    "recorded (replay mode).",
        usage="butter run [options] -- CMD [ARGS...]")
    add_proxy_arguments(parser)
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero (3) when any request was a replay-miss, even if CMD succeeded")
    parser.add_argument("--report", type=Path, metavar="PATH", help="also write the summary as JSON to PATH")
    parser.add_argument("--log", type=Path, metavar="PATH",
                        help="keep the proxy's log here (default: a temporary file, kept only when something failed)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    parser.set_defaults(func=run(run_command))


def run_command(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CliError("nothing to run: butter run [options] -- CMD [ARGS...]")
    opts = proxy_options(args)
    trust = trust_for(args)
    workdir = Path(tempfile.mkdtemp(prefix="butter-run-"))
    report_path = workdir / "report.json"
    log_path = args.log or workdir / "mitmdump.log"
    opts.options["butter_run_report"] = str(report_path)
    try:
        proxy = ProxyProcess(opts, trust, log=log_path, own_session=True)
    except ProxyStartError as e:
        raise CliError(f"the proxy did not start: {e}") from None
    keep_log = args.log is not None
    try:
        env = {**os.environ, **proxy.client_env(dict(os.environ)), "BUTTER_PROXY": proxy.url}
        for listener in proxy.reverse:
            named = listener.client_var()
            if named:
                env[named[0]] = named[1]
        code = _run_child(command, env)
    finally:
        proxy_code = proxy.stop()
    summary = _read_report(report_path)
    summary.update({"command": command, "exit_code": code, "mode": opts.mode, "database": str(opts.db)})
    if summary.get("report_missing"):
        keep_log = True
        summary["proxy_exit_code"] = proxy_code
    final = code
    if args.strict and summary.get("replay_misses", 0) and code == 0:
        final = EXIT_REPLAY_MISSES
    if summary.get("replay_misses") or code == EXIT_NOT_FOUND:
        keep_log = True
    if keep_log:
        summary["proxy_log"] = str(log_path)
    summary["butter_exit_code"] = final
    if args.report:
        args.report.write_text(json.dumps(summary, indent=2) + "\n")
    if args.json:
        print(json.dumps(summary, indent=2), file=sys.stderr)
    else:
        print(human_summary(summary, strict=args.strict), file=sys.stderr)
    if not keep_log:
        _remove(workdir)
    return final


def _run_child(command: list[str], env: dict[str, str]) -> int:
    """Run CMD in the foreground; a Ctrl-C is CMD's to handle (as with `time CMD`)."""
    try:
        child = subprocess.Popen(command, env=env)
    except FileNotFoundError:
        print(f"butter: {command[0]}: command not found", file=sys.stderr)
        return EXIT_NOT_FOUND
    except PermissionError:
        print(f"butter: {command[0]}: permission denied", file=sys.stderr)
        return 126
    # Ctrl-C reaches CMD from the terminal by itself; a SIGTERM sent to butter (a CI timeout) is passed on,
    # and either way butter waits for CMD, then stops the proxy and prints the summary.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        code = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    # A command killed by a signal exits like a shell reports it: 128 + the signal.
    return 128 - code if code < 0 else code


def _read_report(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"report_missing": True, "requests": 0, "hits": 0, "template_hits": 0, "provider_calls_saved": 0,
                "tokens_saved": 0, "misses": 0, "recorded": 0, "replay_misses": 0, "passed_through": 0,
                "by_model": {}, "replay_miss_list": []}


def human_summary(s: dict, *, strict: bool = False) -> str:
    templates = f" ({s['template_hits']} from templates)" if s.get("template_hits") else ""
    lines = [f"butter run: {s['requests']} LLM request(s): {s['hits']} hit(s){templates}, {s['misses']} miss(es)"
             + (f", {s['recorded']} recorded" if s.get("recorded") else "")
             + (f", {s['passed_through']} passed through unread" if s.get("passed_through") else ""),
             f"  provider calls saved {s['provider_calls_saved']}, tokens saved {s['tokens_saved']}   "
             f"(mode {s['mode']}, database {s['database']})"]
    if s.get("report_missing"):
        lines.append(f"  the proxy wrote no report (it exited with {s.get('proxy_exit_code')}); see its log")
    if s.get("replay_misses"):
        listed = s.get("replay_miss_list") or []
        lines.append(f"  {s['replay_misses']} replay-miss(es): request(s) never recorded, answered with an error:")
        lines += [f"    {m['format']} {m['model']}: {m['where']}" for m in listed]
        if len(listed) < s["replay_misses"]:
            lines.append(f"    … and {s['replay_misses'] - len(listed)} more")
        lines.append("  see why:  butter explain --last-miss" + (f" --db {s['database']}" if s.get("database") else ""))
        if strict and s.get("exit_code") == 0:
            lines.append(f"  --strict: exiting {EXIT_REPLAY_MISSES}")
    if s.get("proxy_log"):
        lines.append(f"  proxy log: {s['proxy_log']}")
    return "\n".join(lines)


def _remove(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink(missing_ok=True)
    folder.rmdir()
