"""Is `data.mdb` whole? Checked from its bytes before LMDB maps it.

LMDB maps the file into memory and trusts it: a file cut short (a full disk,
a bad copy) or with garbled page numbers makes the first read past its end
kill the process with SIGBUS, with no Python exception and no log line.
So before opening, read the two meta pages (plain file reads) and check what
LMDB itself would rely on:

- both meta pages carry LMDB's magic and data version (a garbled header);
- the root pages of both its B-trees lie inside the file (a truncated
  file, a garbled meta).

The newer meta's last page is not proof either way. LMDB counts every page
a transaction allocated, and a page allocated and freed again within one
transaction is never written: a whole file can end before that last page
(seen after a few sessions that add counters and trim a ring). A file that
ends early is therefore read in full by a child process, given by the
caller, before it is called damaged.

That catches truncation and header damage in microseconds. Damage deeper
in the file (a garbled branch page) is only found by reading every page;
`lmdb_backend.probe_in_subprocess` does that in a child process at proxy
start, where a crash costs the child, not the proxy.
"""
from __future__ import annotations

import os
import struct
from typing import Callable

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGE_HEADER = 16  # pgno(8) pad(2) flags(2) lower(2) upper(2)
P_META = 0x08
NO_PAGE = (1 << 64) - 1  # an empty B-tree's root
# Offsets inside MDB_meta (64-bit build): magic, version, address, mapsize,
# then two MDB_db records of 48 bytes (page size in the first one's md_pad,
# the root page at +40 in each), then the last page number and the txn id.
_DB0, _DB_SIZE, _ROOT = 24, 48, 40
_LAST_PAGE = _DB0 + 2 * _DB_SIZE
_META_SIZE = _LAST_PAGE + 16

RECOVERY = ("move the database folder aside (keep it: it may be partly recoverable), then start again on an "
            "empty one and `butter import` your latest export into it")


class DatabaseDamaged(RuntimeError):
    """data.mdb is not a whole LMDB file; opening it could crash the process."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path} is damaged ({problem}); butter will not open it. To recover: {RECOVERY}.")
        self.path, self.problem = path, problem


class _EndsEarly(str):
    """A file shorter than the newest meta's page count: cut, or only never-written pages missing."""


def check_data_file(folder: str, read_every_page: Callable[[str], str | None]) -> None:
    """Raise DatabaseDamaged if `folder`/data.mdb exists and is not whole.

    A missing or empty file is fine: LMDB creates and initialises it.
    `read_every_page(folder)` reads the whole database where a crash cannot
    hurt (a child process) and says what failed, or None; it settles a file
    that ends before its last counted page.
    """
    data = os.path.join(folder, "data.mdb")
    try:
        size = os.path.getsize(data)
    except FileNotFoundError:
        return
    if size == 0:
        return
    problem = _problem(data, size)
    if isinstance(problem, _EndsEarly):
        failure = read_every_page(folder)
        problem = f"{problem}, and {failure}" if failure else None
    if problem:
        raise DatabaseDamaged(data, problem)


def _problem(data: str, size: int) -> str | None:
    with open(data, "rb") as f:
        head = f.read(PAGE_HEADER + _META_SIZE)
        if len(head) < PAGE_HEADER + _META_SIZE:
            return f"{size} bytes is shorter than an LMDB header"
        first = _meta(head)
        if isinstance(first, str):
            return f"meta page 0: {first}"
        psize = first["psize"]
        if psize < 512 or psize > 1 << 16 or psize & (psize - 1):
            return f"meta page 0 gives an impossible page size {psize}"
        if size < 2 * psize:
            return f"{size} bytes cannot hold its two meta pages of {psize} bytes"
        f.seek(psize)
        second = _meta(f.read(PAGE_HEADER + _META_SIZE))
        if isinstance(second, str):
            return f"meta page 1: {second}"
    newest = max((first, second), key=lambda m: m["txnid"])
    pages = size // psize
    for name, root in (("free-page", newest["free_root"]), ("main", newest["main_root"])):
        if root != NO_PAGE and not 2 <= root <= newest["last_page"]:
            return f"the {name} tree's root page {root} is outside the file"
        if root != NO_PAGE and root >= pages:
            return f"truncated: the file has {pages} pages of {psize} bytes but the {name} tree's root is page {root}"
    if newest["last_page"] >= pages:
        return _EndsEarly(f"truncated: the file has {pages} pages of {psize} bytes but its newest transaction "
                          f"counts {newest['last_page'] + 1}")
    return None


def _meta(page: bytes) -> dict | str:
    if len(page) < PAGE_HEADER + _META_SIZE:
        return "cut short"
    (flags,) = struct.unpack_from("<H", page, 10)
    magic, version = struct.unpack_from("<II", page, PAGE_HEADER)
    if not flags & P_META or magic != MAGIC:
        return "not an LMDB meta page (garbled or not an LMDB file)"
    if version != DATA_VERSION:
        return f"LMDB data version {version}, expected {DATA_VERSION}"
    m = PAGE_HEADER
    (psize,) = struct.unpack_from("<I", page, m + _DB0)
    (free_root,) = struct.unpack_from("<Q", page, m + _DB0 + _ROOT)
    (main_root,) = struct.unpack_from("<Q", page, m + _DB0 + _DB_SIZE + _ROOT)
    last_page, txnid = struct.unpack_from("<QQ", page, m + _LAST_PAGE)
    return {"psize": psize, "free_root": free_root, "main_root": main_root, "last_page": last_page, "txnid": txnid}
