"""Baseline × baseline → the objects added, removed and changed."""

from __future__ import annotations

import csv
import io

from .contracts.models import Baseline, BaselineObject, DiffEntry


def index(baseline: Baseline) -> dict[str, BaselineObject]:
    return {o.id: o for o in baseline.objects}


def diff_objects(pre: Baseline, post: Baseline) -> list[DiffEntry]:
    before, after = index(pre), index(post)
    out: list[DiffEntry] = []
    for oid in sorted(before.keys() | after.keys()):
        a, b = before.get(oid), after.get(oid)
        if a is None and b is not None:
            out.append(DiffEntry(change="added", id=oid, kind=b.kind, schema=b.schema_, table=b.table, after=b.digest))
        elif b is None and a is not None:
            out.append(
                DiffEntry(change="removed", id=oid, kind=a.kind, schema=a.schema_, table=a.table, before=a.digest)
            )
        elif a is not None and b is not None and a.digest != b.digest:
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
    return out


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
