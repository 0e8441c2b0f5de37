"""Shared helpers for `butter` commands: options, opening the store, output.

Every command module uses these so the CLI behaves one way throughout:

    add_common(parser)            --json and --db on a subcommand
    with open_cache(args) as c:   the store (refuses a missing database for reads)
    emit(args, data, human)       JSON for scripts, text for people
    table(rows, columns)          aligned plain-text table
    progress(items, total, label) a bar on stderr while long work runs
    resolve_node(backend, text)   a hex id or unique prefix -> node id
    fail(message)                 a clear error on stderr, exit code 1

The API is shared with the steering commands (feedback, forget, prune, clear);
keep it stable and add to it rather than change it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from butter.store import Cache, default_db_path
from butter.store.lmdb_backend import ID, LmdbBackend
from butter.store.shared_location import is_shared
from butter.store.shared_location import parse as parse_shared

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1


class CliError(Exception):
    """A problem the user can fix; printed without a traceback (see `run`)."""


# -- options ------------------------------------------------------------------

def add_common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--json` and `--db` on a subcommand.

    `--db` is also accepted before the subcommand (`butter --db X stats`); the
    SUPPRESS default keeps the subcommand from overwriting that value.
    """
    parser.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")
    parser.add_argument("--db", default=argparse.SUPPRESS,
                        help="LMDB directory (default: $BUTTER_DB, else .butter/db)")
    return parser


def db_path(args: argparse.Namespace) -> Path | str:
    """`--db`: an LMDB directory, or a `redis://` shared store's URL (kept as given)."""
    raw = getattr(args, "db", None) or default_db_path()
    return raw if is_shared(raw) else Path(raw).expanduser()


def database_exists(path: Path) -> bool:
    return (path / "data.mdb").is_file()


@contextmanager
def open_cache(args: argparse.Namespace, *, create: bool = False) -> Iterator[Cache]:
    """The store at `--db`; safe while proxies serve from the same database.

    LMDB readers never block writers and see one consistent snapshot per
    transaction, so the CLI can read at any time. Without `create`, a missing
    database is an error rather than a fresh empty one: a typo in `--db` must
    not look like an empty cache.
    """
    path = db_path(args)
    if not create and not is_shared(path) and not database_exists(path):
        raise CliError(f"no butter database at {path} (set --db or $BUTTER_DB)")
    try:
        cache = Cache(path)
    except Exception as e:  # SchemaTooNew, permissions, a file where a folder should be, Redis down
        shown = parse_shared(path).display if is_shared(path) else path  # never a password
        raise CliError(f"cannot open {shown}: {e}") from e
    try:
        yield cache
    finally:
        cache.close()


def run(fn: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command's function: CliError (and a file that cannot be read or
    written) becomes a one-line message and exit code 1, not a traceback."""
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return int(fn(args) or EXIT_OK)
        except CliError as e:
            return fail(str(e))
        except BrokenPipeError:  # `butter tree | head`
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass
            return EXIT_OK
        except OSError as e:  # a file the user named cannot be read or written
            where = f": {e.filename}" if e.filename else ""
            return fail(f"{e.strerror or e}{where}")
    wrapped.__name__ = getattr(fn, "__name__", "command")
    wrapped.__doc__ = fn.__doc__
    return wrapped


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"butter: {message}", file=sys.stderr)
    return code


# -- output ---------------------------------------------------------------------

def to_jsonable(value: Any) -> Any:
    """bytes become hex (node ids), tuples lists, dataclasses dicts."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def emit(args: argparse.Namespace, data: Any, human: str | Callable[[], str]) -> None:
    """Print `data` as JSON with `--json`, else the human text."""
    if getattr(args, "json", False):
        json.dump(to_jsonable(data), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        text = human() if callable(human) else human
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


def table(rows: Sequence[Sequence[Any]], columns: Sequence[str], *, right: Iterable[str] = ()) -> str:
    """A plain-text table; `right` names columns to right-align (numbers)."""
    right = set(right)
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]

    def line(row: list[str]) -> str:
        out = [cell.rjust(w) if columns[i] in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def short_id(node_id: bytes | str | None, n: int = 12) -> str:
    if node_id is None:
        return "-"
    text = node_id.hex() if isinstance(node_id, (bytes, bytearray)) else node_id
    return text[:n]


def human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_time(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `2w`, `45s` -> seconds (argparse `type=`)."""
    found = _DURATION.match(text)
    if not found:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30d, 12h, 90m)")
    return float(found.group(1)) * _UNITS[found.group(2)]


def clip(text: str, width: int) -> str:
    """One line, at most `width` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# -- node ids -------------------------------------------------------------------

def resolve_node(backend: LmdbBackend, text: str) -> bytes:
    """A full hex id or a unique prefix (at least 4 hex digits) -> the node id.

    Node ids are 16 random-looking bytes, so the nodes table is sorted by them
    and a prefix is one cursor range scan.
    """
    text = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4,32}", text):
        raise CliError(f"{text!r} is not a node id (4 to 32 hex digits)")
    if len(text) == 2 * ID:
        node_id = bytes.fromhex(text)
        if backend.node(node_id) is None:
            raise CliError(f"no node {text}")
        return node_id
    found = backend.node_ids_with_prefix(text, limit=2)
    if not found:
        raise CliError(f"no node starts with {text}")
    if len(found) > 1:
        raise CliError(f"{text} is ambiguous: it starts {found[0].hex()[:16]}…, {found[1].hex()[:16]}… and maybe more")
    return found[0]


# -- progress -----------------------------------------------------------------

class Progress:
    """A one-line bar on stderr, only when stderr is a terminal.

    Scripts and CI logs get no carriage-return noise; `--json` output on
    stdout is never touched.
    """

    def __init__(self, label: str, total: int | None = None, *, stream=None, enabled: bool | None = None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or (self.total and self.done >= self.total)):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        width = max(10, min(40, shutil.get_terminal_size((80, 20)).columns - 40))
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * width)
            line = f"\r{self.label} [{bar:<{width}}] {self.done}/{self.total}"
        else:
            line = f"\r{self.label} {self.done}"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], total: int | None = None, label: str = "", **kwargs: Any) -> Iterator[T]:
    """Yield `items`, drawing a bar on stderr as they go."""
    with Progress(label, total, **kwargs) as bar:
        for item in items:
            yield item
            bar.advance()
