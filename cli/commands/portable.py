"""`butter export`, `butter import`, `butter import-flows`: recordings as files.

Exports are versioned JSON lines (store/portable.py) for git and CI; flow
files are what `mitmdump -w FILE` (or mitmweb) saved, turned into branches by
the same code path the live addon records with (addon/exchange.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

from butter.cli.output import CliError, Progress, add_common, db_path, emit, open_cache, run
from butter.store import portable
from butter.store.private_files import open_private


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export", help="write the tree as versioned JSON lines (for git, CI, another machine)",
        description="One JSON object per line, keys sorted: diffable, never pickle. Per-credential "
                    "namespaces (key:…) are hashes made with this database's secret; add --with-secret to "
                    "carry it, so the same API key reaches them after an import into a fresh database.")
    add_common(export)
    export.add_argument("--out", "-o", metavar="FILE", help="write here (default: stdout)")
    export.add_argument("--namespace", help="only the trees of this namespace (ns:NAME or key:…)")
    export.add_argument("--with-secret", action="store_true",
                        help="include the namespace secret (whoever holds it can test guessed API keys "
                             "against the key: namespaces; keep such files private)")
    export.set_defaults(func=run(export_command))

    imp = subparsers.add_parser(
        "import", help="merge an export into the database",
        description="Merges: prefixes the database already has are not duplicated; a reply present on both "
                    "sides keeps the higher count and stays bad if either side marked it bad. Refuses an "
                    "export from a newer butter. Safe while proxies serve from the same database.")
    add_common(imp)
    imp.add_argument("file", metavar="FILE", help="an export (`-` for stdin)")
    imp.add_argument("--namespace", metavar="NAME",
                     help="put every imported tree into the shared namespace ns:NAME "
                          "(serve it with --set butter_namespace=NAME)")
    imp.set_defaults(func=run(import_command))

    flows = subparsers.add_parser(
        "import-flows", help="turn a `mitmdump -w` flow file into branches of the tree",
        description="Each LLM exchange the provider answered is parsed and recorded exactly as the live "
                    "addon would have; other traffic, errors, cut-short streams and answers butter itself "
                    "served are skipped. Flows import in the order they were saved.")
    add_common(flows)
    flows.add_argument("file", metavar="FILE", help="a flow file written by mitmdump -w or mitmweb")
    flows.add_argument("--namespace", metavar="NAME",
                       help="record into ns:NAME instead of each credential's own namespace "
                            "(a butter-namespace header in a flow still wins, as in the proxy)")
    flows.add_argument("--no-induction", action="store_true",
                       help="do not learn templates from the imported runs (the proxy's butter_induction=false)")
    flows.add_argument("--induction-min", type=int, default=2, metavar="N",
                       help="runs compared before a template is learned (default 2, as butter_induction_min)")
    flows.set_defaults(func=run(import_flows_command))


# -- export ---------------------------------------------------------------------------

def export_command(args: argparse.Namespace) -> int:
    with open_cache(args) as cache:
        with Progress("exporting") as bar:

            def advance(record: dict) -> None:
                if record.get("type") == portable.FORMAT:
                    bar.total = sum(record["counts"].values()) or None
                else:
                    bar.advance()

            if args.out == "-":
                args.out = None  # `--out -` is stdout, as for `import -`
            if args.out:
                target = Path(args.out)
                tmp = target.with_name(target.name + ".partial")
                # Written beside and renamed: a failed export never leaves half a file.
                # Every prompt (and with --with-secret the namespace secret):
                # readable by its owner only, whatever the umask.
                try:
                    fd = open_private(tmp)
                    with open(fd, "w", encoding="utf-8", newline="\n") as out:
                        header = portable.write_export(cache.backend, out, namespace=args.namespace,
                                                       with_secret=args.with_secret, on_record=advance)
                    os.replace(tmp, target)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
            else:
                header = portable.write_export(cache.backend, sys.stdout, namespace=args.namespace,
                                               with_secret=args.with_secret, on_record=advance)
                sys.stdout.flush()
    summary = {"file": args.out, "format": header.get("type"), "version": header.get("version"),
               "counts": header.get("counts"), "namespace": args.namespace, "with_secret": args.with_secret}
    if args.out:
        c = header["counts"]
        emit(args, summary, f"exported {c['nodes']} nodes, {c['replies']} replies, {c['stats']} stats rows and "
                            f"{c['aux']} side-table rows to {args.out} (format version {header['version']})")
    else:
        c = header["counts"]
        print(f"butter: exported {c['nodes']} nodes, {c['replies']} replies", file=sys.stderr)
    return 0


# -- import ---------------------------------------------------------------------------

def import_command(args: argparse.Namespace) -> int:
    stream = sys.stdin if args.file == "-" else _open_text(args.file)
    try:
        try:
            header, records = portable.read_records(stream)
        except portable.ExportError as e:
            raise CliError(f"{args.file}: {e}") from e
        namespace = f"ns:{args.namespace}" if args.namespace else None
        counts = header.get("counts") or {}
        total = sum(v for v in counts.values() if isinstance(v, int)) or None
        with open_cache(args, create=True) as cache, Progress("importing", total) as bar:
            try:
                report = portable.import_records(cache.backend, header, records, namespace=namespace,
                                                 on_record=bar.advance)
            except portable.ExportError as e:
                raise CliError(f"{args.file}: {e} (rows before it were imported; importing again is safe)") from e
    finally:
        if stream is not sys.stdin:
            stream.close()
    data = {"file": args.file, "database": str(db_path(args)), "version": header.get("version"),
            "read": report.read, "added": report.added, "rehashed": report.rehashed,
            "secret_adopted": report.secret_adopted, "warnings": report.warnings}

    def human() -> str:
        r, a = report.read, report.added
        lines = [f"imported {args.file} into {db_path(args)}",
                 f"  nodes    {r['nodes']} read, {a['nodes']} new ({r['nodes'] - a['nodes']} already there)",
                 f"  replies  {r['replies']} read, {a['replies']} new",
                 f"  stats    {r['stats']} read, {a['stats']} new",
                 f"  aux      {r['aux']} read, {a['aux']} new"]
        if report.rehashed:
            lines.append(f"  {report.rehashed} node id(s) recomputed from their content (edited file or --namespace)")
        lines += [f"note: {w}" for w in report.warnings]
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def _open_text(name: str):
    try:
        return open(name, encoding="utf-8")
    except OSError as e:
        raise CliError(f"cannot read {name}: {e.strerror or e}") from e


# -- import-flows -----------------------------------------------------------------------

def import_flows_command(args: argparse.Namespace) -> int:
    # mitmproxy only here: the rest of the CLI never needs it.
    from mitmproxy import http, io
    from mitmproxy.exceptions import FlowReadException

    from butter.addon.exchange import record_flow

    if not args.no_induction and args.induction_min < 2:
        raise CliError("--induction-min must be at least 2: a template needs two runs to compare")
    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no flow file at {path}")
    size = path.stat().st_size
    outcomes: Counter[str] = Counter()
    formats_seen: Counter[str] = Counter()
    nodes: list[str] = []
    with open_cache(args, create=True) as cache, open(path, "rb") as f, Progress("importing flows", size or None) as bar:
        templates_before = _templates(cache)
        reader = io.FlowReader(f)
        try:
            for flow in reader.stream():
                bar.advance(max(f.tell() - bar.done, 0))
                if not isinstance(flow, http.HTTPFlow):
                    outcomes["skipped: not-http"] += 1
                    continue
                outcome = record_flow(cache, flow, fixed_namespace=args.namespace or "",
                                      induction_min=0 if args.no_induction else args.induction_min)
                if outcome.status == "recorded":
                    outcomes["recorded"] += 1
                    formats_seen[outcome.fmt] += 1
                    nodes.append(outcome.node.hex() if outcome.node else "")
                else:
                    outcomes[f"skipped: {outcome.reason}"] += 1
        except FlowReadException as e:
            raise CliError(f"{path} is not a readable flow file: {e} "
                           f"({outcomes['recorded']} exchange(s) before it were recorded)") from e
        learned = _templates(cache) - templates_before
    data = {"file": str(path), "database": str(db_path(args)), "recorded": outcomes["recorded"],
            "templates_learned": learned,
            "skipped": {k.split(": ", 1)[1]: v for k, v in outcomes.items() if k.startswith("skipped")},
            "formats": dict(formats_seen), "nodes": nodes}

    def human() -> str:
        lines = [f"recorded {outcomes['recorded']} LLM exchange(s) from {path} into {db_path(args)}"]
        for name, n in sorted(formats_seen.items()):
            lines.append(f"  {name}: {n}")
        for reason, n in sorted(data["skipped"].items()):
            lines.append(f"  skipped {n}: {reason}")
        if learned:
            lines.append(f"  learned {learned} template node(s) from runs that differ only in their values")
        return "\n".join(lines)

    emit(args, data, human)
    return 0


def _templates(cache) -> int:
    return sum(1 for node in cache.backend.iter_nodes() if node.kind == "template")
