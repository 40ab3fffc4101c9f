"""Protected and forbidden indices against the real OpenSearch node: what the plan refuses
(reindex scripts that could write elsewhere than their dest, guarded reindex sources), what
the write counters see when a write happens anyway, and the opt-in write block.

The fixture node holds ``authority_sites_v1`` (2 documents): protected, and forbidden too
(``authority_*``) in the example's declaration.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import test_search as ts
from test_search import alias_on, count, edit_forward, ledger, receipt, run, summary

from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.search import plan as search_plan
from airflow_kfm_migrations.stores.search import session as search_session
from airflow_kfm_migrations.stores.search.scripts import script_problem
from airflow_kfm_migrations.stores.search.store import SearchStore

pytestmark = pytest.mark.opensearch

os_client = ts.os_client
cluster = ts.cluster
example = ts.example

# Sends p-1 and p-2 into the protected index, overwriting its documents 1 and 2: its
# document count, mappings and settings stay the same.
REDIRECT = (
    "if (ctx._source.parcel_id == 'p-1' || ctx._source.parcel_id == 'p-2') "
    "{ ctx._index = 'authority_sites_v1'; ctx._id = ctx._source.parcel_id.substring(2); "
    "ctx._source = ['name': 'overwritten'] }"
)


def authority_names(c: Any) -> list[str]:
    c.indices.refresh(index="authority_sites_v1")
    hits = c.search(index="authority_sites_v1", body={"size": 10, "sort": ["_doc"]})["hits"]["hits"]
    return sorted(h["_source"]["name"] for h in hits)


def write_blocked(c: Any, index: str = "authority_sites_v1") -> str | None:
    s = c.indices.get_settings(index=index)[index]["settings"]["index"]
    return (s.get("blocks") or {}).get("write")


def with_script(source: str) -> Any:
    def edit(actions: list[dict[str, Any]]) -> None:
        actions[1]["reindex"]["script"] = {"lang": "painless", "source": source}

    return edit


def opt_in_write_block(bundle: Path) -> None:
    p = bundle / "migration.yml"
    p.write_text(
        p.read_text().replace(
            "old_index_retention_days: 7", "old_index_retention_days: 7\nprotect_with_write_block: true"
        )
    )


# ------------------------------------------------------------------ static: scripts


REFUSED_SCRIPTS = {
    "index": "ctx._index = 'authority_sites_v1'",
    "routing": "ctx._routing = 'x'",
    "op": "ctx.op = 'delete'",
    "noop": "if (ctx._source.a == 1) { ctx.op = 'noop' }",
    "whitespace": "ctx .\n _index='authority_sites_v1'",
    "comment": "ctx/* look away */._index = 'authority_sites_v1'",
    "bracket": "ctx['_index'] = 'authority_sites_v1'",
    "concatenation": "ctx['_ind' + 'ex'] = 'authority_sites_v1'",
    "compound": "ctx._index += '_x'",
    "alias of ctx": "def c = ctx; c._index = 'authority_sites_v1'",
    "map api": "ctx.put('_index', 'authority_sites_v1')",
    "null safe": "ctx?._index = 'authority_sites_v1'",
    "read": "if (ctx._index == 'a') { ctx._source.b = 1 }",
}
ALLOWED_SCRIPTS = {
    "source": "ctx._source.name = ctx._source.name.toUpperCase()",
    "id": "ctx._id = ctx._source.parcel_id + '-v2'",
    "spaced": "ctx . _source['area_ha'] = ctx._source.area_m2 / 10000",
    "a word containing ctx": "ctx._source.exactx = params.ctxval",
}


@pytest.mark.parametrize("case", sorted(REFUSED_SCRIPTS))
def test_script_rule_refuses(case: str) -> None:
    assert script_problem(REFUSED_SCRIPTS[case]) is not None


@pytest.mark.parametrize("case", sorted(ALLOWED_SCRIPTS))
def test_script_rule_allows(case: str) -> None:
    assert script_problem(ALLOWED_SCRIPTS[case]) is None


def test_plan_refuses_a_script_that_could_write_elsewhere(example: Path) -> None:
    edit_forward(example, with_script("ctx['_ind' + 'ex'] = 'authority_sites_v1'"))
    plan = SearchStore.for_planning("-").plan(load_bundle(example))
    (f,) = [f for f in plan.findings if f.code == "plan_unsafe_script"]
    assert f.tier == "hard_fail" and plan.refused
    # The file, the action and the reason.
    assert "forward.json actions[1].reindex:" in f.message and "ctx._source or ctx._id" in f.message


def test_plan_refuses_an_unsafe_rollback_script(example: Path) -> None:
    p = example / "rollback.json"
    doc = json.loads(p.read_text())
    doc["actions"].insert(
        1,
        {
            "reindex": {
                "source": "parcels_v2",
                "dest": "parcels_v1",
                "script": {"source": "ctx.op = 'delete'"},
            }
        },
    )
    p.write_text(json.dumps(doc))
    plan = SearchStore.for_planning("-").plan(load_bundle(example))
    assert any(
        f.code == "plan_unsafe_script" and "rollback.json actions[1].reindex" in f.message for f in plan.findings
    )


def test_plan_refuses_a_guarded_reindex_source(example: Path) -> None:
    edit_forward(example, lambda a: a[1]["reindex"].update(source="authority_sites_v1"))
    plan = SearchStore.for_planning("-").plan(load_bundle(example))
    found = {(f.code, f.object) for f in plan.findings if f.tier == "hard_fail"}
    assert ("plan_guarded_source", "authority_sites_v1") in found
    (f,) = [f for f in plan.findings if f.code == "plan_guarded_source"]
    assert "forward.json actions[1].reindex: reindexes from authority_sites_v1, which is forbidden" in f.message


# ------------------------------------------------------------------ end to end


def test_script_overwriting_a_protected_index_is_refused_before_anything_runs(
    example: Path, cluster: Any, tmp_path: Path
) -> None:
    """The reported case: a reindex script redirects documents into the protected index and
    overwrites two of them. Refused by the plan; nothing was written."""
    edit_forward(example, with_script(REDIRECT))
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "failed" and "static plan refused" in r["reason"] and "ctx" in r["reason"]
    assert authority_names(cluster) == ["Fort Larned", "Pawnee Rock"]
    ts.assert_untouched(cluster)


def test_alias_source_resolving_to_a_guarded_index_is_refused_before_the_reindex(
    example: Path, cluster: Any, tmp_path: Path
) -> None:
    """The plan judges names; an allowed-looking alias that points to the protected index is
    resolved on the cluster right before the reindex and refused."""
    cluster.indices.update_aliases(body={"actions": [{"add": {"index": "authority_sites_v1", "alias": "parcels_vx"}}]})
    edit_forward(example, lambda a: a[1]["reindex"].update(source="parcels_vx"))
    assert not SearchStore.for_planning("-").plan(load_bundle(example)).refused
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert "resolves to forbidden index authority_sites_v1 (through the alias parcels_vx)" in r["reason"]
    assert r["status"] == "rolled_back"
    assert alias_on(cluster) == ["parcels_v1"] and not cluster.indices.exists(index="parcels_v2")


def test_overwrite_the_plan_cannot_see_is_caught_by_the_write_counters(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A side effect the plan cannot see overwrites a protected document: same count, same
    mappings and settings, so no fingerprint moves. The write counters do: the gate refuses
    before the flip, and the compensation says it cannot restore the document."""
    original = search_session.SearchSession.apply

    def sneaky(self: Any) -> Any:
        outcome = original(self)
        cluster.index(index="authority_sites_v1", id="1", body={"name": "Fort Larned?"}, params={"refresh": "true"})
        return outcome

    monkeypatch.setattr(search_session.SearchSession, "apply", sneaky)
    out = tmp_path / "out"
    assert run(example, out) == 1
    found = [f for f in summary(out)["findings"] if f["code"] == "foreign_index_written"]
    assert [(f["tier"], f["object"]) for f in found] == [("hard_fail", "authority_sites_v1")]
    assert "written during the run (1 write operation(s))" in found[0]["message"]
    r = receipt(out)
    assert r["status"] == "rollback_failed" and "gate refused: foreign_index_written" in r["reason"]
    rollback_check = {c["name"]: c for c in r["validation"]}["rollback"]
    assert rollback_check["passed"] is False and "cannot restore" in rollback_check["detail"]
    assert alias_on(cluster) == ["parcels_v1"] and not cluster.indices.exists(index="parcels_v2")
    assert ledger(cluster) == []


def test_redirect_past_the_plan_is_named_by_the_apply(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a script slip past the static rule (simulated by switching the rule off), the
    write counters checked after the reindex name the overwritten index: the receipt says
    what happened instead of only 'doc count mismatch', and that the rollback cannot undo it."""
    monkeypatch.setattr(search_plan, "script_problem", lambda _s: None)
    monkeypatch.setattr(search_session, "script_problem", lambda _s: None)
    edit_forward(example, with_script(REDIRECT))
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "rollback_failed"
    assert "foreign_index_written: forbidden index authority_sites_v1 was written during the run" in r["reason"]
    assert authority_names(cluster) == ["overwritten", "overwritten"]  # detected, not prevented
    assert alias_on(cluster) == ["parcels_v1"] and not cluster.indices.exists(index="parcels_v2")


# ------------------------------------------------------------------ the write block


def test_write_block_prevents_the_overwrite_and_is_lifted(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With protect_with_write_block the redirected writes are refused by the cluster: the
    protected documents survive, the run is compensated, the block is lifted."""
    monkeypatch.setattr(search_plan, "script_problem", lambda _s: None)
    monkeypatch.setattr(search_session, "script_problem", lambda _s: None)
    opt_in_write_block(example)
    edit_forward(example, with_script(REDIRECT))
    out = tmp_path / "out"
    assert run(example, out) == 1
    r = receipt(out)
    assert r["status"] == "rolled_back" and "failure(s)" in r["reason"]
    assert r["metrics"]["write_blocked_indices"] == "authority_sites_v1"
    assert authority_names(cluster) == ["Fort Larned", "Pawnee Rock"]
    assert write_blocked(cluster) is None
    ts.assert_untouched(cluster)


def test_write_block_holds_for_the_run_and_the_run_passes(
    example: Path, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.indices.put_settings(index="authority_sites_v1", body={"index.blocks.write": False})
    opt_in_write_block(example)
    seen: list[Any] = []
    original = search_session.SearchSession.apply

    def spy(self: Any) -> Any:
        outcome = original(self)
        seen.append(write_blocked(cluster))
        try:
            cluster.index(index="authority_sites_v1", id="9", body={"name": "x"})
        except Exception as exc:  # broad: the client's error type
            seen.append(type(exc).__name__)
        return outcome

    monkeypatch.setattr(search_session.SearchSession, "apply", spy)
    out = tmp_path / "out"
    assert run(example, out) == 0
    assert seen == ["true", "AuthorizationException"]  # blocked: 403 cluster_block_exception
    r = receipt(out)
    assert r["status"] == "succeeded" and r["metrics"]["write_blocked_indices"] == "authority_sites_v1"
    assert write_blocked(cluster) == "false"  # the value it had before, not just unset
    assert alias_on(cluster) == ["parcels_v2"] and count(cluster, "authority_sites_v1") == 2
    # The block is no change of the protected index: the gate passed, and the ledger's
    # post-baseline is what a later drift check finds.
    assert not [f for f in summary(out)["findings"] if f["tier"] == "hard_fail"]
    assert run(example, out) == 0 and receipt(out)["status"] == "noop"
    assert {c["name"]: c["passed"] for c in receipt(out)["validation"]}["drift"] is True
