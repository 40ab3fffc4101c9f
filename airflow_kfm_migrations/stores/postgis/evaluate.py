"""The PostGIS gate: findings from the observed diff and writes (scope, protected and
forbidden objects, reduced enforcement, widened privileges, large changes) and the declared
limits' checks."""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.contracts.models import Baseline, Finding, LimitCheck, PostgisDeclaration, WriteCount
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.evidence.limits import limit_checks
from airflow_kfm_migrations.stores.postgis.attribution import global_finding, is_global
from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA
from airflow_kfm_migrations.stores.postgis.posture_findings import posture_findings
from airflow_kfm_migrations.stores.postgis.reads import read_findings
from airflow_kfm_migrations.stores.postgis.scope import PgScope


def evaluate(
    bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
) -> tuple[list[Finding], list[LimitCheck]]:
    """The gate's findings from the observed diff and writes, and the declared limits' checks."""
    decl = bundle.declaration
    assert isinstance(decl, PostgisDeclaration)
    scope = PgScope(decl)
    conf = settings()  # read at gate time: KFM_REVIEW_INDEX_ROWS / KFM_REVIEW_BACKFILL_ROWS
    review_index_rows, review_backfill_rows = conf.review_index_rows, conf.review_backfill_rows
    findings: list[Finding] = []
    changes = diff_objects(pre, post)
    # Tables gone under their name: dropped, unless the session saw their storage survive a
    # rename (``tables_renamed``). What a dropped table carried (RLS, policies, constraints)
    # went with it: table_dropped reports it, not one finding per thing.
    renamed: dict[str, str] = facts.get("tables_renamed", {})
    dropped = {f"{c.schema_}.{c.table}" for c in changes if c.kind == "table" and c.change == "removed"} - set(renamed)
    tables: set[str] = set()
    index_delta = constraint_delta = 0
    for c in changes:
        if c.kind == "rows":
            continue  # row digests of guarded tables: reported by the protected check
        if c.table:
            tables.add(f"{c.schema_}.{c.table}")
        if c.kind == "index":
            index_delta += 1
        if c.kind == "constraint":
            constraint_delta += 1
        owner = c.table or _object_name(c.id, c.kind)
        if is_global(c.kind, c.schema_):
            # Judged when the run's own transaction changed it, reported when another session did.
            findings.append(global_finding(c, facts))
        elif scope.forbidden(c.schema_, c.table):
            findings.append(
                Finding(
                    code="forbidden_object_changed",
                    tier="hard_fail",
                    object=c.id,
                    message=f"{c.kind} {c.change} in forbidden scope",
                )
            )
        elif not scope.allowed(c.schema_, owner) and not scope.protected(c.schema_, c.table):
            findings.append(
                Finding(
                    code="out_of_scope_change",
                    tier="hard_fail",
                    object=c.id,
                    message=f"{c.kind} {c.change} outside the allowed scope",
                )
            )
        elif c.change == "added":
            findings.append(
                Finding(
                    code="object_added",
                    tier="informational",
                    object=c.id,
                    message=f"{c.kind} created within the declared scope",
                )
            )
        else:
            findings.append(
                Finding(
                    code=f"object_{c.change}",
                    tier="informational",
                    object=c.id,
                    message=f"{c.kind} {c.change} within the declared scope",
                )
            )
        if c.kind == "table" and f"{c.schema_}.{c.table}" in dropped:
            findings.append(
                Finding(
                    code="table_dropped",
                    tier="review_required",
                    object=f"{c.schema_}.{c.table}",
                    message="table dropped, and every row in it",
                )
            )
        # Review-required: anything that reduces policy enforcement on what is still there.
        went_with_table = f"{c.schema_}.{c.table}" in dropped
        if c.kind == "policy" and c.change == "removed" and not went_with_table:
            findings.append(
                Finding(
                    code="policy_dropped",
                    tier="review_required",
                    object=c.id,
                    message="row-level security policy dropped",
                )
            )
        if c.kind == "enforcement_disabled" and c.change != "removed":
            findings.append(
                Finding(
                    code="enforcement_disabled",
                    tier="review_required",
                    object=c.id,
                    message="foreign-key enforcement triggers disabled (ALTER TABLE ... DISABLE TRIGGER)",
                )
            )
        if c.kind == "constraint" and c.change == "removed" and not went_with_table:
            findings.append(
                Finding(code="constraint_dropped", tier="review_required", object=c.id, message="constraint dropped")
            )
        if c.kind == "index" and c.change == "added":
            rows = int(facts.get("table_rows", {}).get(f"{c.schema_}.{c.table}", 0))
            if rows > review_index_rows:
                findings.append(
                    Finding(
                        code="index_on_large_table",
                        tier="review_required",
                        object=c.id,
                        message=f"index build on a table of ~{rows} rows (review above {review_index_rows})",
                    )
                )
    pre_rls, post_rls = pre.extra.get("rls", {}), post.extra.get("rls", {})
    for table, flags in pre_rls.items():
        if table in dropped:
            continue
        now = post_rls.get(renamed.get(table, table), [False, False])
        if any(a and not b for a, b in zip(flags, now, strict=False)):
            findings.append(
                Finding(
                    code="rls_disabled",
                    tier="review_required",
                    object=table,
                    message="row-level security disabled or no longer forced",
                )
            )
    pre_acl, post_acl = pre.extra.get("acls", {}), post.extra.get("acls", {})
    for obj, acl in post_acl.items():
        widened = _acl_widened(pre_acl.get(obj), acl)
        if widened:
            findings.append(
                Finding(
                    code="grant_widened",
                    tier="review_required",
                    object=obj,
                    message=f"privileges widened: {widened}",
                )
            )
    total_rows = 0
    for w in writes:
        n = w.inserted + w.updated + w.deleted
        if not (n or w.rewritten):
            continue
        schema, _, table = w.table.partition(".")
        total_rows += n
        if schema == LEDGER_SCHEMA:
            findings.append(
                Finding(
                    code="governance_ledger_touched",
                    tier="hard_fail",
                    object=w.table,
                    message="the migration wrote into the governance ledger",
                )
            )
            continue
        tables.add(w.table)
        if scope.forbidden(schema, table):
            findings.append(
                Finding(
                    code="forbidden_write",
                    tier="hard_fail",
                    object=w.table,
                    message=f"{n} row(s) written into a forbidden table",
                )
            )
        elif scope.protected(schema, table):
            if not approval_covers(decl, f"protected:{w.table}"):
                findings.append(
                    Finding(
                        code="protected_write",
                        tier="hard_fail",
                        object=w.table,
                        message=f"{n} row(s) written into a protected table",
                    )
                )
        elif not scope.allowed(schema, table):
            findings.append(
                Finding(
                    code="out_of_scope_write",
                    tier="hard_fail",
                    object=w.table,
                    message=f"{n} row(s) written outside the allowed scope",
                )
            )
        elif w.rewritten:
            findings.append(
                Finding(
                    code="table_rewritten",
                    tier="review_required",
                    object=w.table,
                    message="table storage replaced (TRUNCATE or rewrite)",
                )
            )
    if total_rows > review_backfill_rows:
        findings.append(
            Finding(
                code="large_backfill",
                tier="review_required",
                message=f"{total_rows} rows written (review above {review_backfill_rows})",
            )
        )
    # The rest of the enforcement posture, and reads of guarded tables (see their modules).
    findings.extend(posture_findings(decl, pre, facts))
    findings.extend(read_findings(decl, (facts.get("posture") or {}).get("scans"), writes))
    limits, exceeded = limit_checks(
        decl.limits,
        {
            "max_table_count_touched": len(tables),
            "max_index_count_delta": index_delta,
            "max_constraint_delta": constraint_delta,
            "max_row_backfill": total_rows,
        },
    )
    findings.extend(exceeded)
    return findings, limits


def _object_name(object_id: str, kind: str) -> str | None:
    """The name of a schema-level object without a table (function, type, ...), for matching
    it against ``allowed_tables``: 'function:public.f(int)' -> 'f'."""
    if kind == "schema":
        return None
    qualified = object_id.split(":", 1)[-1].split("(", 1)[0]
    return qualified.split(".", 1)[1] if "." in qualified else qualified


def _acl_items(acl: str | None) -> list[tuple[str, str, set[str]]]:
    """aclitem[] text → (grantee, grantor, privileges); an empty grantee is PUBLIC."""
    if not acl:
        return []
    out = []
    for item in acl.strip("{}").split(","):
        item = item.strip('"')
        grantee, _, rest = item.partition("=")
        privs, _, grantor = rest.partition("/")
        out.append((grantee or "PUBLIC", grantor, set(privs.replace("*", ""))))
    return out


def _acl_widened(before: str | None, after: str | None) -> str:
    """Privileges present after and not before. A NULL ACL means the owner's defaults only."""
    items = _acl_items(after)
    if before is None:
        base = {g: p for g, grantor, p in items if g == grantor}
    else:
        base = {}
        for g, _grantor, p in _acl_items(before):
            base.setdefault(g, set()).update(p)
    now: dict[str, set[str]] = {}
    for g, _grantor, p in items:
        now.setdefault(g, set()).update(p)
    widened = [f"{g}:{''.join(sorted(p - base.get(g, set())))}" for g, p in now.items() if p - base.get(g, set())]
    return ", ".join(sorted(widened))
