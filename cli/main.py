"""`butter` entry point: argparse with one module per command group.

Each module in `cli/commands/` defines `register(subparsers)`, which adds its
subcommands and sets `func` on them (a callable taking the parsed args and
returning an exit code). Discovery keeps this file free of a list that every
new command would edit.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from butter import cli
from butter.cli import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="butter", description="Run butter (proxy, run) and see and steer what "
                                                                "it remembers.")
    parser.add_argument("--version", action="version", version=f"butter {cli.__version__}")
    parser.add_argument("--db", help="LMDB directory (default: $BUTTER_DB, else .butter/db)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"butter.cli.commands.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
