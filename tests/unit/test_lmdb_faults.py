"""The database under faults: a damaged data.mdb, map growth from 1 MiB under
several threads, readers killed with -9 (store/lmdb_backend.py, store/db_check.py)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

import pytest

from butter.addon import cache_addon
from butter.store import Cache, Conversation, Hit
from butter.store.db_check import DatabaseDamaged, check_data_file
from butter.store.lmdb_backend import MAP_SIZE_ENV, _read_in_child, probe_in_subprocess
from tests.e2e.harness import ROOT
from tests.unit.test_addon import llm_flow
from tests.unit.test_addon_faults import exchange_once
from tests.fakes.lmdb_holder import HOLD_READ


def conv(text: str) -> Conversation:
    return Conversation({"api": "openai-chat", "model": "m"}, ({"role": "user", "content": text},))


def filled_db(path, n: int = 400) -> None:
    cache = Cache(path)
    for i in range(n):
        cache.record("ns", conv(f"question {i} " + "x" * 200), {"text": "y" * 300})
    cache.close()


def truncate(path, keep: float = 0.5) -> None:
    data = path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, int(size * keep) // 4096 * 4096)


OPEN_AND_READ = """
import sys
sys.path.insert(0, sys.argv[1])
from butter.store import Cache, Conversation
try:
    cache = Cache(sys.argv[2])
except Exception as e:
    print(type(e).__name__, e)
    sys.exit(3)
for i in range(400):
    cache.lookup("ns", Conversation({"api": "openai-chat", "model": "m"},
                 ({"role": "user", "content": f"question {i} " + "x" * 200},)))
"""


# -- 9: a truncated or garbled data.mdb -------------------------------------------------

def test_a_truncated_database_is_refused_with_how_to_recover_instead_of_crashing_the_process(tmp_path):
    db = tmp_path / "db"
    filled_db(db)
    truncate(db)
    run = subprocess.run([sys.executable, "-c", OPEN_AND_READ, str(ROOT), str(db)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 3, (run.returncode, run.stderr[-500:])  # not -SIGBUS
    assert "DatabaseDamaged" in run.stdout and "truncated" in run.stdout and "butter import" in run.stdout


def test_a_garbled_header_is_refused(tmp_path):
    db = tmp_path / "db"
    filled_db(db, 10)
    with open(db / "data.mdb", "r+b") as f:
        f.write(os.urandom(200))
    with pytest.raises(DatabaseDamaged, match="meta page 0"):
        check_data_file(str(db), _read_in_child)


def test_a_sound_database_and_a_new_one_pass_the_checks(tmp_path):
    db = tmp_path / "db"
    check_data_file(str(db), _read_in_child)
    filled_db(db)
    check_data_file(str(db), _read_in_child)
    assert probe_in_subprocess(str(db)) is None


def count_unwritten_pages(path, extra: int) -> None:
    """Make the newest meta count `extra` pages past the file's end, none of them used.

    What LMDB itself leaves when a transaction allocates pages at the end and
    frees them again before its commit: they are counted, never written.
    """
    data = path / "data.mdb"
    with open(data, "r+b") as f:
        metas = []
        for page in (0, 1):
            f.seek(page * 4096 + 16 + 120)  # MDB_meta's last page and txn id (store/db_check.py)
            metas.append((int.from_bytes(f.read(8), "little"), int.from_bytes(f.read(8), "little"), page))
        last, _, page = max(metas, key=lambda m: m[1])
        f.seek(page * 4096 + 16 + 120)
        f.write((data.stat().st_size // 4096 - 1 + extra).to_bytes(8, "little"))


def test_a_whole_database_whose_newest_transaction_counts_pages_past_the_end_is_opened_and_served(tmp_path):
    db = tmp_path / "db"
    filled_db(db)
    count_unwritten_pages(db, 30)
    check_data_file(str(db), _read_in_child)  # read in full by a child: whole
    assert probe_in_subprocess(str(db)) is None
    cache = Cache(db)
    try:
        assert isinstance(cache.lookup("ns", conv("question 7 " + "x" * 200)), Hit)
        cache.record("ns", conv("a new question"), {"text": "a new answer"})  # writes past the counted pages
        assert isinstance(cache.lookup("ns", conv("a new question")), Hit)
    finally:
        cache.close()
    check_data_file(str(db), _read_in_child)


def test_random_sessions_of_writes_counts_ring_trims_and_deletes_never_make_a_whole_database_look_damaged(tmp_path):
    """A soak of what a proxy does between starts (seeded, so a failure repeats): each session
    opens the database (its damage check runs), records, counts hits, appends to a ring it trims,
    sometimes deletes a subtree, and closes. Every database it leaves must pass the check and
    still answer every recording that was not deleted."""
    import random

    rng = random.Random(20261203)
    db, kept, deleted = tmp_path / "db", {}, set()
    for session in range(30):
        check_data_file(str(db), _read_in_child)  # raises DatabaseDamaged on a false alarm
        cache = Cache(db)
        try:
            for _ in range(rng.randint(0, 25)):
                n = len(kept) + len(deleted)
                text = f"session {session} question {n} " + "x" * rng.randint(0, 3000)
                node = cache.record("ns", conv(text), {"text": "y" * rng.randint(1, 5000)})
                kept[text] = node
            if kept and rng.random() < 0.7:
                cache.backend.add_hits({node: rng.randint(1, 9) for node in rng.sample(list(kept.values()),
                                                                                    min(5, len(kept)))})
            rows = [(bytes([session, i]), {"status": "hit", "pad": "z" * rng.randint(0, 900)})
                    for i in range(rng.randint(0, 60))]
            cache.backend.append_ring("soak", rows, keep=rng.randint(1, 40))
            if len(kept) > 5 and rng.random() < 0.3:
                text = rng.choice(list(kept))
                cache.backend.delete_subtrees([kept.pop(text)])
                deleted.add(text)
        finally:
            cache.close()
    check_data_file(str(db), _read_in_child)
    assert probe_in_subprocess(str(db)) is None
    cache = Cache(db)
    try:
        assert len(kept) > 50, "the soak recorded too little to prove anything"
        missing = [t for t in kept if not isinstance(cache.lookup("ns", conv(t)), Hit)]
        assert missing == [], f"{len(missing)} recordings lost"
        assert not any(isinstance(cache.lookup("ns", conv(t)), Hit) for t in deleted)
    finally:
        cache.close()


def test_a_database_that_ends_early_is_refused_when_reading_it_in_full_fails(tmp_path):
    db = tmp_path / "db"
    filled_db(db)
    count_unwritten_pages(db, 30)
    asked: list[str] = []

    def failing_reader(folder: str) -> str:
        asked.append(folder)
        return "reading it killed a probe process with signal 7"

    with pytest.raises(DatabaseDamaged, match="truncated.*counts.*signal 7"):
        check_data_file(str(db), failing_reader)
    assert asked == [str(db)]
    check_data_file(str(db), lambda _: None)  # read in full without a fault: whole


def test_a_database_read_whole_once_is_not_read_again_until_it_changes(tmp_path, mocker):
    db = tmp_path / "db"
    filled_db(db)
    count_unwritten_pages(db, 30)
    children = mocker.spy(subprocess, "run")
    assert probe_in_subprocess(str(db)) is None  # the proxy's probe at start
    cache = Cache(db)  # then its open: the same file, not read again
    cache.close()
    assert children.call_count == 1
    filled_db(db, 5)  # written since
    count_unwritten_pages(db, 30)
    check_data_file(str(db), _read_in_child)
    assert children.call_count == 2


def test_a_database_that_does_not_end_early_is_never_read_in_full_at_open(tmp_path):
    db = tmp_path / "db"
    filled_db(db)
    check_data_file(str(db), lambda _: pytest.fail("a whole file's header needs no full read"))


def test_garbled_pages_deep_in_the_file_are_found_by_the_probe_not_by_the_proxy(tmp_path):
    db = tmp_path / "db"
    filled_db(db)
    data = db / "data.mdb"
    size = data.stat().st_size
    with open(data, "r+b") as f:  # every page but the two meta pages
        f.seek(2 * 4096)
        f.write(b"\xff" * (size - 2 * 4096))
    check_data_file(str(db), lambda _: None)  # the header is intact
    assert probe_in_subprocess(str(db)) is not None


async def test_the_proxy_on_a_damaged_database_passes_traffic_through_and_says_so_loudly(tmp_path, caplog):
    from mitmproxy.test import taddons
    db = tmp_path / "db"
    filled_db(db)
    truncate(db)
    addon = cache_addon.Butter()
    with caplog.at_level(logging.WARNING, logger="butter"), taddons.context(addon) as tctx:
        tctx.configure(addon, butter_db=str(db))
        flow = await exchange_once(addon, llm_flow())
    addon.done()
    assert addon.cache is None
    assert flow.response.headers["butter-cache"] == "bypass (butter disabled: damaged database)"
    assert "accept-encoding" not in flow.request.headers
    [error] = [r.getMessage() for r in caplog.records if "DISABLED" in r.getMessage()]
    assert "DISABLED" in error and "truncated" in error and "butter import" in error


def test_butter_stats_on_a_damaged_database_exits_non_zero_with_a_message(tmp_path):
    db = tmp_path / "db"
    filled_db(db)
    truncate(db)
    run = subprocess.run([sys.executable, "-m", "butter.cli.main", "--db", str(db), "stats"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and run.returncode > 0
    assert "damaged" in (run.stdout + run.stderr) and "Traceback" not in run.stderr


# -- 11: map growth from 1 MiB under several threads -------------------------------------

def test_map_growth_from_one_mib_under_several_writing_threads_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(MAP_SIZE_ENV, str(1 << 20))
    cache = Cache(tmp_path / "db")
    assert cache.backend.usage()["map_bytes"] == 1 << 20
    errors: list[str] = []

    def work(t: int) -> None:
        for i in range(250):
            try:
                cache.record("ns", conv(f"thread {t} question {i} " + "p" * 300), {"text": "r" * 500})
                if i % 3 == 0:
                    cache.lookup("ns", conv(f"thread {t} question {i} " + "p" * 300))
                if i % 5 == 0:
                    cache.backend.put_aux("side", f"{t}-{i}".encode(), {"v": "a" * 200})
                    cache.backend.add_hits({b"\0" * 16: 1})
            except Exception as e:  # noqa: BLE001 - counted, the assertion shows them
                errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        lost = [(t, i) for t in range(5) for i in range(250)
                if not isinstance(cache.lookup("ns", conv(f"thread {t} question {i} " + "p" * 300)), Hit)]
        assert lost == []
        assert cache.backend.usage()["map_bytes"] > 1 << 20
    finally:
        cache.close()


# -- 13: a reader killed with -9 -------------------------------------------------------

async def test_a_running_proxy_frees_the_slot_of_a_reader_killed_with_minus_9(butter, monkeypatch):
    addon, _ = butter
    await exchange_once(addon, llm_flow())
    addon._drain_future().result(timeout=10)
    reader = subprocess.Popen([sys.executable, "-c", HOLD_READ, addon.cache.backend.path], stdout=subprocess.PIPE,
                              text=True)
    assert reader.stdout.readline().strip() == "reading"
    reader.send_signal(signal.SIGKILL)
    reader.wait(timeout=10)
    monkeypatch.setattr(cache_addon, "READER_CHECK_SECONDS", 0.0)  # as if the interval had passed
    await exchange_once(addon, llm_flow(), reply=None)
    addon._drain_future().result(timeout=10)
    assert addon.cache.backend.clear_stale_readers() == 0  # the proxy freed it already
