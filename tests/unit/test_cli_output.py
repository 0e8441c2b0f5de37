"""cli/output.py: the helpers every butter command shares."""
from __future__ import annotations

import argparse
import io
import json

import pytest

from butter.cli import output
from butter.cli.main import main
from butter.store import Cache, Conversation
from butter.store.tree import plan_record


def conv(text: str) -> Conversation:
    return Conversation({"api": "t", "model": "m"}, ({"role": "user", "content": text},))


def test_table_aligns_columns_and_right_aligns_numbers():
    text = output.table([("a", 5), ("longer", 123)], ("name", "n"), right=("n",))
    assert text.splitlines() == ["name      n", "------  ---", "a         5", "longer  123"]


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("2w", 1209600),
                                          ("45s", 45), ("1.5h", 5400)])
def test_durations_read_as_seconds(text, seconds):
    assert output.parse_duration(text) == seconds


def test_a_bad_duration_is_an_argparse_error():
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        output.parse_duration("soon")


def test_to_jsonable_turns_ids_into_hex():
    assert output.to_jsonable({"id": b"\x01\xff", "path": (b"\x02",)}) == {"id": "01ff", "path": ["02"]}


def test_a_read_command_refuses_a_missing_database_instead_of_creating_one(tmp_path, capsys):
    missing = tmp_path / "typo"
    assert main(["--db", str(missing), "stats"]) == 1
    assert "no butter database at" in capsys.readouterr().err
    assert not missing.exists()


def test_db_is_accepted_before_and_after_the_command(tmp_path, capsys):
    cache = Cache(tmp_path / "db")
    cache.record("ns", conv("hello"), {"text": "hi"})
    cache.close()
    assert main(["--db", str(tmp_path / "db"), "stats", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert main(["stats", "--json", "--db", str(tmp_path / "db")]) == 0
    after = json.loads(capsys.readouterr().out)
    assert before["totals"] == after["totals"] and before["totals"]["nodes"] == 2


def test_resolve_node_takes_a_full_id_or_unique_prefix(tmp_path):
    cache = Cache(tmp_path / "db")
    try:
        nodes = [cache.record("ns", conv(f"message {n}"), {"text": str(n)}) for n in range(5)]
        target = nodes[3]
        assert output.resolve_node(cache.backend, target.hex()) == target
        assert output.resolve_node(cache.backend, target.hex()[:11].upper()) == target
        all_ids = [r.node_id.hex() for r in cache.backend.iter_nodes()]
        unused = next(p for p in ("0000", "ffff", "abcd", "1234") if not any(i.startswith(p) for i in all_ids))
        with pytest.raises(output.CliError, match="no node starts with"):
            output.resolve_node(cache.backend, unused)
        with pytest.raises(output.CliError, match="not a node id"):
            output.resolve_node(cache.backend, "abc")
    finally:
        cache.close()


def test_a_prefix_two_nodes_share_is_refused_not_guessed(tmp_path):
    # Find two conversations whose node ids share 4 hex digits (ids are
    # content addresses, so this is computed, not stored), then store both.
    seen: dict[str, Conversation] = {}
    n = 0
    while True:
        candidate = conv(f"m{n}")
        n += 1
        prefix = plan_record(candidate, "ns")[1].hex()[:4]
        if prefix in seen:
            break
        seen[prefix] = candidate
    cache = Cache(tmp_path / "db")
    try:
        cache.record("ns", seen[prefix], {"t": 1})
        cache.record("ns", candidate, {"t": 2})
        with pytest.raises(output.CliError, match="ambiguous"):
            output.resolve_node(cache.backend, prefix)
    finally:
        cache.close()


def test_progress_draws_only_on_a_terminal():
    quiet = io.StringIO()
    for _ in output.progress(range(5), 5, "work", stream=quiet):
        pass
    assert quiet.getvalue() == ""  # StringIO is not a tty

    shown = io.StringIO()
    with output.Progress("work", 4, stream=shown, enabled=True) as bar:
        for _ in range(4):
            bar.advance()
    assert "work [" in shown.getvalue() and "4/4" in shown.getvalue() and shown.getvalue().endswith("\n")
