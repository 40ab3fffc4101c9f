"""Diffs of two baselines: the leaf-set fast path equals the plain comparison."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_kfm_migrations.contracts.models import Baseline, trusted_baseline_object
from airflow_kfm_migrations.evidence.diff import changed_objects, diff_objects, remember_leaves
from airflow_kfm_migrations.util.digest import leaf_raw

DIGEST = "0" * 64


def baseline(objects: dict[str, int], *, leaves: bool) -> Baseline:
    objs = [
        trusted_baseline_object(oid, "table", "public", oid, hashlib.sha256(str(v).encode()).hexdigest(), False)
        for oid, v in sorted(objects.items())
    ]
    b = Baseline.model_validate(
        {
            "schema_version": "baseline.v1",
            "store": "postgis",
            "migration_id": "PG-MIG-2026-01-01-01",
            "store_version": "test",
            "scope_digest": DIGEST,
            "counts": {"table": len(objs)},
            "objects": [],
            "schema_fingerprint": DIGEST,
            "protected_fingerprint": DIGEST,
        }
    ).model_copy(update={"objects": objs})
    if leaves:
        remember_leaves(b, [leaf_raw(o.id, o.digest) for o in objs])
    return b


STATES = st.dictionaries(st.sampled_from([f"t{i}" for i in range(12)]), st.integers(0, 3), max_size=12)


@settings(max_examples=200, deadline=None)
@given(STATES, STATES)
def test_the_leaf_set_diff_equals_the_plain_diff(a: dict[str, int], b: dict[str, int]) -> None:
    fast = diff_objects(baseline(a, leaves=True), baseline(b, leaves=True))
    plain = diff_objects(baseline(a, leaves=False), baseline(b, leaves=False))
    assert fast == plain
    expected = sorted(
        [(k, "added") for k in b.keys() - a.keys()]
        + [(k, "removed") for k in a.keys() - b.keys()]
        + [(k, "changed") for k in a.keys() & b.keys() if a[k] != b[k]]
    )
    assert [(e.id, e.change) for e in fast] == expected
    pre, post = baseline(a, leaves=True), baseline(b, leaves=True)
    assert set(changed_objects(pre, post)) == {k for k, _ in expected}
