"""The database and exports hold every prompt and the namespace secret: owner-only
modes (0700 folders, 0600 files) whatever the umask, also for files that existed."""
from __future__ import annotations

import os
import stat

import pytest

from butter.cli.main import main
from butter.store import Cache, Conversation

CONTEXT = {"api": "openai-chat", "model": "m", "params": {}, "headers": {}}
REPLY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o000, 0o022])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def record(db) -> None:
    cache = Cache(db)
    try:
        cache.record("anon", Conversation(CONTEXT, ({"role": "user", "content": "hi"},)), REPLY)
    finally:
        cache.close()


def test_a_new_database_is_readable_by_its_owner_only(tmp_path, umask):
    db = tmp_path / "nested" / "db"
    record(db)
    assert mode(db) == 0o700
    assert {p.name: mode(p) for p in db.iterdir()} == {"data.mdb": 0o600, "lock.mdb": 0o600}


def test_an_existing_world_readable_database_is_made_private_when_butter_opens_it(tmp_path, umask):
    db = tmp_path / "db"
    record(db)
    os.chmod(db, 0o755)
    for name in ("data.mdb", "lock.mdb"):
        os.chmod(db / name, 0o644)
    Cache(db).close()
    assert mode(db) == 0o700 and mode(db / "data.mdb") == 0o600 and mode(db / "lock.mdb") == 0o600


def test_the_map_growth_lock_file_is_private(tmp_path, umask):
    cache = Cache(tmp_path / "db")
    try:
        cache.backend._grow()
    finally:
        cache.close()
    assert mode(tmp_path / "db" / "resize.lock") == 0o600


@pytest.mark.parametrize("secret", [[], ["--with-secret"]])
def test_an_export_is_readable_by_its_owner_only_with_or_without_the_secret(tmp_path, umask, secret, capsys):
    record(tmp_path / "db")
    out = tmp_path / "export.jsonl"
    out.with_name("export.jsonl.partial").write_text("left over")
    os.chmod(out.with_name("export.jsonl.partial"), 0o666)
    assert main(["--db", str(tmp_path / "db"), "export", "--out", str(out), *secret]) == 0
    assert mode(out) == 0o600
