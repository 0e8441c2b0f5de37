"""Isolation probes against a real mitmdump with butter (a script, not a test).

    .venv/bin/python bench/isolation_probe.py [--json] [--workdir DIR]

Starts the fake provider (tests/fakes, real TLS on loopback) and real
`mitmdump` processes with butter (tests/e2e/harness.py: the provider's real
host names are redirected to the fake, as in the e2e tests), then tries what
a tenant who wants another tenant's replies, or a secret, would try:

- hosts: the same request to another server (an attacker's host, another
  provider, http instead of https), with the same key, with no key, and
  under a shared `butter_namespace`;
- header credentials: two tenants behind one provider key, told apart only by
  a gateway's header (`x-litellm-api-key`, `helicone-auth`, a session cookie, ...);
- query credentials: the same, with `?api_key=`, `?token=`, `?sig=` ... on
  OpenAI Chat and Anthropic paths;
- validity twins: a request a provider would reject (tool-call arguments
  `abc`, invalid base64) after its valid twin (`"abc"`, the valid image);
- butter.local: /health must not show the database path; nested and huge
  feedback bodies must be answered by butter, never forwarded.

Every probe is a pair: tenant A asks (a miss, recorded), tenant B asks the
same question (a hit here is a cross-tenant hit), then A asks again (a hit:
the control that shows the probe can see a hit at all). Every credential is
a fresh random value; afterwards the database files, an export, `butter show`
of every root and `butter tree`, and the mitmdump log (flow_detail=1,
mitmdump's default, which prints URLs) are searched for each of them. Finally
the modes of the database folder, its files and the export are read.

Prints a table; exits 1 if any cross-tenant hit, secret or loose mode is found.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from butter.cli.main import main as butter_cli  # noqa: E402
from tests.e2e.harness import Proxy  # noqa: E402
from tests.fakes import anthropic_messages, openai_chat  # noqa: E402
from tests.fakes.provider import Call, FakeProvider, JSONReply  # noqa: E402
from tests.fakes.tls import make_ca_and_cert  # noqa: E402

# Host names the fake provider's certificate carries: any of them can play
# "a server of the attacker's own".
OPENAI = "api.openai.com"
OTHER_HOSTS = ["openrouter.ai", "api.groq.com", "example.openai.azure.com"]
GATEWAY_HEADERS = ["x-litellm-api-key", "x-portkey-api-key", "helicone-auth", "cf-aig-authorization",
                   "x-api-token", "x-tenant-auth", "x-company-api-key", "ocp-apim-subscription-key"]
# (valid, invalid) twins a lenient canonical form would key alike.
VALIDITY_TWINS = [("tool arguments", '"abc"', "abc"), ("tool arguments", '"null"', "null"),
                  ("tool arguments", "1e400", "Infinity"), ("image base64", "iVBORw0KGgo=", "iVBO!Rw0K Ggo=")]
QUERY_NAMES = ["api_key", "api-key", "apikey", "key", "access_token", "token", "sig", "signature", "auth"]


def secret() -> str:
    return "SECRET" + secrets.token_hex(12)


@dataclass
class Request:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    api: str = "openai"  # or "anthropic"
    twin: tuple[str, str] | None = None  # (what, value): a validity twin's body


@dataclass
class Probe:
    kind: str
    label: str
    first: Request  # tenant A
    other: Request  # tenant B: the same question


def fake_model(call: Call):
    """Answers that say who they were made for: the server and a hash of the
    tenant's credentials (never the credentials: a reply is stored as sent)."""
    body = call.json
    tenant = hashlib.sha256(json.dumps([sorted(call.query.items()), sorted(call.headers.items())]).encode())
    who = f"{call.headers.get('host')} tenant {tenant.hexdigest()[:12]}"
    if call.path.endswith("/v1/messages"):
        return JSONReply(anthropic_messages.message([{"type": "text", "text": f"for {who}"}], body["model"]))
    return JSONReply(openai_chat.completion({"content": f"for {who}"}, body["model"]))


def body_for(api: str, nonce: str) -> dict:
    question = [{"role": "user", "content": f"What is the balance of account {nonce}?"}]
    if api == "anthropic":
        return {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": question}
    return {"model": "gpt-4o-mini", "messages": question}


def twin_body(what: str, value: str, nonce: str) -> dict:
    ask = {"role": "user", "content": f"Look up account {nonce}."}
    if what == "image base64":
        return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": [
            {"type": "text", "text": f"What is in this picture ({nonce})?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{value}"}}]}]}
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": value}}
    return {"model": "gpt-4o-mini", "messages": [ask, {"role": "assistant", "tool_calls": [call]},
                                                 {"role": "tool", "tool_call_id": "call_1", "content": "found"}]}


def send(http: httpx.Client, request: Request, nonce: str) -> str:
    headers = dict(request.headers)
    if request.api == "anthropic":
        headers.setdefault("anthropic-version", "2023-06-01")
    body = twin_body(*request.twin, nonce) if request.twin else body_for(request.api, nonce)
    answer = http.post(request.url, json=body, headers=headers)
    if answer.status_code != 200:
        raise RuntimeError(f"{request.url}: {answer.status_code} {answer.text[:200]}")
    return answer.headers.get("butter-cache", "")


def host_probes(credential: str | None, kind: str) -> list[Probe]:
    headers = {"authorization": f"Bearer {credential}"} if credential else {}
    probes = [Probe(kind, f"{host} -> {OPENAI}", Request(f"https://{host}/v1/chat/completions", headers),
                    Request(f"https://{OPENAI}/v1/chat/completions", headers)) for host in OTHER_HOSTS]
    probes.append(Probe(kind, f"http -> https {OPENAI}", Request(f"http://{OPENAI}/v1/chat/completions", headers),
                        Request(f"https://{OPENAI}/v1/chat/completions", headers)))
    return probes


def shared_namespace_probes() -> list[Probe]:
    """Under butter_namespace every key shares one tree, on purpose: but never across servers."""
    return [Probe("hosts (shared namespace)", f"{host} -> {OPENAI}",
                  Request(f"https://{host}/v1/chat/completions", {"authorization": f"Bearer {secret()}"}),
                  Request(f"https://{OPENAI}/v1/chat/completions", {"authorization": f"Bearer {secret()}"}))
            for host in OTHER_HOSTS]


def header_probes() -> list[Probe]:
    provider_key = {"authorization": f"Bearer {secret()}"}  # one upstream key behind the gateway
    url = f"https://{OPENAI}/v1/chat/completions"
    probes = [Probe("header credentials", name, Request(url, {**provider_key, name: secret()}),
                    Request(url, {**provider_key, name: secret()})) for name in GATEWAY_HEADERS]
    probes.append(Probe("header credentials", "cookie (session)", Request(url, {**provider_key, "cookie": f"session={secret()}"}),
                        Request(url, {**provider_key, "cookie": f"session={secret()}"})))
    probes.append(Probe("header credentials", "gateway key vs none", Request(url, {**provider_key, "helicone-auth": secret()}),
                        Request(url, provider_key)))
    return probes


def query_probes() -> list[Probe]:
    probes = []
    for name in QUERY_NAMES:
        for api, base in (("openai", f"https://{OPENAI}/v1/chat/completions?"),
                          ("anthropic", "https://api.anthropic.com/v1/messages?beta=true&")):
            shared = {"x-api-key": "shared-provider-key"} if api == "anthropic" else {}
            probes.append(Probe("query credentials", f"{api} ?{name}=",
                                Request(f"{base}{name}={secret()}", shared, api),
                                Request(f"{base}{name}={secret()}", shared, api)))
    return probes


def validity_probes() -> list[Probe]:
    """Not tenants: a request a provider would reject must never be served the reply to its valid twin."""
    url, key = f"https://{OPENAI}/v1/chat/completions", {"authorization": f"Bearer {secret()}"}
    return [Probe("validity twins", f"{what}: {valid} -> {invalid}", Request(url, key, twin=(what, valid)),
                  Request(url, key, twin=(what, invalid))) for what, valid, invalid in VALIDITY_TWINS]


def secrets_of(probes: list[Probe]) -> list[str]:
    found = set()
    for probe in probes:
        for request in (probe.first, probe.other):
            text = request.url + json.dumps(request.headers)
            start = text.find("SECRET")
            while start >= 0:
                found.add(text[start:start + 30])
                start = text.find("SECRET", start + 1)
    return sorted(found)


def run_probes(http: httpx.Client, probes: list[Probe], rows: dict) -> None:
    for probe in probes:
        nonce = secrets.token_hex(6)
        row = rows[probe.kind]
        first = send(http, probe.first, nonce)
        other = send(http, probe.other, nonce)
        again = send(http, probe.first, nonce)
        row["probes"] += 1
        row["first_missed"] += first == "miss"
        if other == "hit":
            row["cross_tenant_hits"] += 1
            row["failed"].append(probe.label)
        row["control_hits"] += again == "hit"


def butter_local(http: httpx.Client, provider: FakeProvider, db: Path) -> dict:
    calls = len(provider.calls)
    health = http.get("http://butter.local/health")
    nested = http.post("http://butter.local/feedback", content=b"[" * 30_000 + b"]" * 30_000,
                       headers={"content-type": "application/json"})
    huge = http.post("http://butter.local/feedback", content=b'{"node": "' + b"a" * 2_000_000 + b'"}',
                     headers={"content-type": "application/json"})
    return {"health_shows_db_path": str(db.resolve()) in health.text or str(db.parent) in health.text,
            "nested_feedback_status": nested.status_code, "huge_feedback_status": huge.status_code,
            "forwarded": len(provider.calls) - calls}


def cli_text(db: Path, *args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        butter_cli(["--db", str(db), *args])
    return out.getvalue()


def scan(db: Path, logs: list[Path], export: Path, all_secrets: list[str]) -> dict:
    cli_text(db, "export", "--out", str(export))
    roots = [json.loads(line)["id"] for line in export.read_text().splitlines()
             if json.loads(line).get("kind") == "root"]
    shown = "".join(cli_text(db, "show", root) for root in roots) + cli_text(db, "tree")
    places = {"db files": b"".join(p.read_bytes() for p in db.iterdir() if p.is_file()),
              "export": export.read_bytes(), "butter show/tree": shown.encode(),
              "mitmdump log": b"".join(p.read_bytes() for p in logs)}
    return {place: sum(s.encode() in data for s in all_secrets) for place, data in places.items()}


def modes(db: Path, export: Path) -> dict:
    def mode(p: Path) -> str:
        return oct(stat.S_IMODE(p.stat().st_mode))
    return {"db folder": mode(db), **{p.name: mode(p) for p in sorted(db.iterdir()) if p.is_file()},
            "export": mode(export)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--workdir", help="keep databases and logs here (default: a temporary folder, removed)")
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="butter-isolation-"))
    work.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o022)  # a usual umask: butter must not depend on a strict one
    # mitmdump cuts flow_detail=1 URLs at the terminal's width: a wide one shows every query.
    os.environ["COLUMNS"] = "4000"
    ca, cert, key = make_ca_and_cert(work / "tls")
    provider = FakeProvider(cert, key, fake_model)
    proxies: list[Proxy] = []
    rows: dict[str, dict] = defaultdict(lambda: {"probes": 0, "first_missed": 0, "cross_tenant_hits": 0,
                                                 "control_hits": 0, "failed": []})
    try:
        confdir = work / "confdir"
        per_key_db, shared_db = work / "db", work / "shared-db"
        options = {"flow_detail": "1", "butter_induction": "false"}
        per_key = Proxy(confdir, per_key_db, work / "mitmdump.log", upstream=f"127.0.0.1:{provider.port}",
                        upstream_ca=ca, options=options)
        proxies.append(per_key)
        shared = Proxy(confdir, shared_db, work / "mitmdump-shared.log", upstream=f"127.0.0.1:{provider.port}",
                       upstream_ca=ca, options={**options, "butter_namespace": "team"})
        proxies.append(shared)
        probes = (host_probes(secret(), "hosts (same key)") + host_probes(None, "hosts (no key)")
                  + header_probes() + query_probes() + validity_probes())
        shared_probes = shared_namespace_probes()
        with httpx.Client(proxy=per_key.url, verify=str(per_key.ca_cert), timeout=30) as http:
            run_probes(http, probes, rows)
            local = butter_local(http, provider, per_key_db)
        with httpx.Client(proxy=shared.url, verify=str(shared.ca_cert), timeout=30) as http:
            run_probes(http, shared_probes, rows)
        for proxy in proxies:
            proxy.stop()
        all_secrets = secrets_of(probes + shared_probes)
        export = work / "export.jsonl"
        found = scan(per_key_db, [per_key.log, shared.log], export, all_secrets)
        shared_found = scan(shared_db, [], work / "export-shared.jsonl", all_secrets)
        found = {place: found[place] + shared_found[place] for place in found}
        file_modes = modes(per_key_db, export)
    finally:
        for proxy in proxies:
            proxy.stop()
        provider.close()
        os.umask(old_umask)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    loose = {k: v for k, v in file_modes.items() if int(v, 8) & 0o077}
    report = {"probes": dict(rows), "secrets_tried": len(all_secrets), "secrets_found": found,
              "butter_local": local, "modes": file_modes}
    ok = (not any(r["cross_tenant_hits"] for r in rows.values()) and not any(found.values()) and not loose
          and not local["health_shows_db_path"] and local["forwarded"] == 0
          and 400 <= local["nested_feedback_status"] < 500 and 400 <= local["huge_feedback_status"] < 500)
    report["ok"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if ok else 1
    print(f"{'probe kind':28} {'tried':>5} {'cross-tenant hits':>17} {'control hits':>12}")
    for kind, row in rows.items():
        print(f"{kind:28} {row['probes']:>5} {row['cross_tenant_hits']:>17} {row['control_hits']:>9}/{row['probes']}")
        for label in row["failed"]:
            print(f"    served across tenants: {label}")
    total = sum(r["probes"] for r in rows.values())
    print(f"{'total':28} {total:>5} {sum(r['cross_tenant_hits'] for r in rows.values()):>17} "
          f"{sum(r['control_hits'] for r in rows.values()):>9}/{total}")
    print("(validity twins: a hit is the invalid twin served the valid one's reply)")
    print(f"\nsecrets tried: {len(all_secrets)}; found in: "
          + ", ".join(f"{place} {n}" for place, n in found.items()))
    print(f"butter.local: /health shows the db path: {'yes' if local['health_shows_db_path'] else 'no'}; "
          f"nested feedback body -> {local['nested_feedback_status']}, 2 MB body -> {local['huge_feedback_status']}; "
          f"forwarded upstream: {local['forwarded']}")
    print("modes (umask 022): " + ", ".join(f"{k} {v}" for k, v in file_modes.items()))
    print("\nOK: no cross-tenant hit, no secret found, owner-only files" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
