"""Baseline × baseline → the objects added, removed and changed."""

from __future__ import annotations

import csv
import io
import weakref
from itertools import compress

from airflow_kfm_migrations.contracts.models import Baseline, BaselineObject, DiffEntry

# Identity-keyed memo of the last few indexes and diffs: one run's gate, store evaluation,
# protected check and facts all ask for the same pre and post, and a 10,000-table catalog has
# 120k objects. Entries die with their baselines (weak references), so long-lived
# workers keep nothing.
_INDEXES: dict[int, tuple[weakref.ref[Baseline], dict[str, BaselineObject]]] = {}
_DIFFS: dict[tuple[int, int], tuple[weakref.ref[Baseline], weakref.ref[Baseline], list[DiffEntry]]] = {}
_Sides = tuple[dict[str, BaselineObject], dict[str, BaselineObject]]
_DIFFERING: dict[tuple[int, int], tuple[weakref.ref[Baseline], weakref.ref[Baseline], _Sides]] = {}


def index(baseline: Baseline) -> dict[str, BaselineObject]:
    hit = _INDEXES.get(id(baseline))
    if hit is not None and hit[0]() is baseline:
        return hit[1]
    out = {o.id: o for o in baseline.objects}
    key = id(baseline)
    _INDEXES[key] = (weakref.ref(baseline, lambda _r: _INDEXES.pop(key, None)), out)
    return out


_LEAVES: dict[int, tuple[weakref.ref[Baseline], list[bytes]]] = {}


def remember_leaves(baseline: Baseline, leaves: list[bytes]) -> None:
    """Record each object's Merkle leaf (sha256 of id and digest), in object order, as the
    capture computed them: two baselines then diff by set operations on the leaves. Bytes
    that start with the leaf and follow from it (``digest.merkle_leaf_node``) serve as well."""
    key = id(baseline)
    _LEAVES[key] = (weakref.ref(baseline, lambda _r: _LEAVES.pop(key, None)), leaves)


def _leaves(baseline: Baseline) -> list[bytes] | None:
    hit = _LEAVES.get(id(baseline))
    return hit[1] if hit is not None and hit[0]() is baseline else None


def _differing(pre: Baseline, post: Baseline) -> _Sides:
    """The objects of each side whose (id, digest) the other side does not have."""
    key = (id(pre), id(post))
    hit = _DIFFERING.get(key)
    if hit is not None and hit[0]() is pre and hit[1]() is post:
        return hit[2]
    la, lb = _leaves(pre), _leaves(post)
    if la is not None and lb is not None and len(la) == len(pre.objects) and len(lb) == len(post.objects):
        sa, sb = set(la), set(lb)
        only_a, only_b = sa - sb, sb - sa
        # compress() walks the 120k objects in C and yields only the few that differ.
        out = (
            {o.id: o for o in compress(pre.objects, map(only_a.__contains__, la))},
            {o.id: o for o in compress(post.objects, map(only_b.__contains__, lb))},
        )
    else:
        before, after = index(pre), index(post)
        out = (
            {k: a for k, a in before.items() if (b := after.get(k)) is None or b.digest != a.digest},
            {k: b for k, b in after.items() if (a := before.get(k)) is None or a.digest != b.digest},
        )

    def drop(_r: object) -> None:
        _DIFFERING.pop(key, None)

    _DIFFERING[key] = (weakref.ref(pre, drop), weakref.ref(post, drop), out)
    return out


def diff_objects(pre: Baseline, post: Baseline) -> list[DiffEntry]:
    """Added, removed and changed objects, ordered by id."""
    key = (id(pre), id(post))
    hit = _DIFFS.get(key)
    if hit is not None and hit[0]() is pre and hit[1]() is post:
        return list(hit[2])
    before, after = _differing(pre, post)
    out: list[DiffEntry] = []
    for oid, b in after.items():
        a = before.get(oid)
        if a is None:
            out.append(DiffEntry(change="added", id=oid, kind=b.kind, schema=b.schema_, table=b.table, after=b.digest))
        else:
            out.append(
                DiffEntry(
                    change="changed",
                    id=oid,
                    kind=a.kind,
                    schema=a.schema_,
                    table=a.table,
                    before=a.digest,
                    after=b.digest,
                )
            )
    for oid in before.keys() - after.keys():
        a = before[oid]
        out.append(DiffEntry(change="removed", id=oid, kind=a.kind, schema=a.schema_, table=a.table, before=a.digest))
    out.sort(key=lambda e: e.id)

    def drop(_r: object) -> None:
        _DIFFS.pop(key, None)

    _DIFFS[key] = (weakref.ref(pre, drop), weakref.ref(post, drop), out)
    return list(out)


def changed_objects(pre: Baseline, post: Baseline) -> dict[str, BaselineObject]:
    """The object behind each change, as it was before (or after, when it was added)."""
    before, after = _differing(pre, post)
    return {**after, **before}


def touched_csv(changes: list[DiffEntry], writes: list[tuple[str, int, int, int]] | None = None) -> str:
    """Reviewer-friendly CSV: one row per changed object, then one per written table."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["change", "kind", "schema", "table", "object", "before_sha256", "after_sha256"])
    for c in changes:
        w.writerow([c.change, c.kind, c.schema_ or "", c.table or "", c.id, c.before or "", c.after or ""])
    for table, ins, upd, dele in writes or []:
        schema, _, name = table.rpartition(".")
        w.writerow(["rows_written", "rows", schema, name, f"{table} +{ins} ~{upd} -{dele}", "", ""])
    return buf.getvalue()
