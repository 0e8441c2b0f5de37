"""`butter stats` over a tree with learned templates: observations are provider answers, counted
once; hits served from templates count toward tokens and provider calls saved."""
from __future__ import annotations

from butter.store import Cache, Hit
from butter.store.inspect import load_index, stats_rows
from tests.unit.test_induction import ANA, BO, CY, ON_INDUCTIONS_WORD, record_run, steps


def test_template_replies_do_not_double_count_observations_and_their_hits_save_tokens(tmp_path):
    cache = Cache(tmp_path / "db", trust=ON_INDUCTIONS_WORD)  # about counting, not trust
    record_run(cache, ANA)
    record_run(cache, BO)  # two runs of three provider answers each; templates learned from them
    hits: dict[bytes, int] = {}
    for conversation, _ in steps(CY):
        hit = cache.lookup("ns", conversation)
        assert isinstance(hit, Hit)
        hits[hit.node_id] = hits.get(hit.node_id, 0) + 1
    cache.backend.add_hits(hits)
    index = load_index(cache.backend)
    assert any(index.nodes[n].kind == "template" for n in hits)
    (row,) = stats_rows(index)
    cache.close()
    assert row["templates"] > 0
    assert row["observations"] == 6
    assert row["hits"] == row["provider_calls_saved"] == 3
    assert row["tokens_saved"] == 3 * 62  # the fake's usage.total_tokens, for template and exact hits alike
