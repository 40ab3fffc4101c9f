"""Diff × declaration → findings in three tiers and a verdict.

hard_fail: refused. review_required: refused unless a recorded approval covers it
(``review:<code>`` or ``review:<code>:<object>``). informational: reported only.
Protected objects changed without an approval covering ``protected:<object>`` are
hard fails whatever the store says.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, BaselineObject, DiffSummary, Finding, WriteCount
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.evidence.diff import changed_objects, diff_objects
from airflow_kfm_migrations.stores.base import Store


def resolve_approvals(bundle: Bundle, findings: list[Finding]) -> list[Finding]:
    out = []
    for f in findings:
        if f.tier == "review_required":
            who = approval_covers(bundle.declaration, f"review:{f.code}") or (
                approval_covers(bundle.declaration, f"review:{f.code}:{f.object}") if f.object else None
            )
            if who:
                f = f.model_copy(update={"approved_by": who})
        out.append(f)
    return out


def protected_name(obj: BaselineObject) -> str:
    """How an approval names a protected object: ``schema.table``, else its schema (or index,
    label...), else its id."""
    if obj.schema_ and obj.table:
        return f"{obj.schema_}.{obj.table}"
    return obj.table or obj.schema_ or obj.id


def protection_tokens(bundle: Bundle, obj: BaselineObject) -> set[str]:
    """What ``protected:<token>`` may name to approve a change of ``obj``: its qualified name,
    its id, or a ``protected_*`` pattern of the declared scope, as written, that matches it.
    The same tokens the policy check asks for, so one approval satisfies both; a bare table
    name approves only where the declaration itself protects the bare name."""
    tokens = {protected_name(obj), obj.id}
    names = [n for n in (protected_name(obj), obj.table, obj.schema_) if n]
    scope = bundle.declaration.scope
    for field in type(scope).model_fields:
        patterns = getattr(scope, field) if field.startswith("protected_") else None
        if isinstance(patterns, (list, tuple)):  # protected_tables, _schemas, _indices, _labels
            tokens.update(p for p in patterns if any(fnmatch.fnmatchcase(n, p) for n in names))
    return tokens


def protected_findings(bundle: Bundle, pre: Baseline, post: Baseline) -> list[Finding]:
    objects = changed_objects(pre, post)
    findings: list[Finding] = []
    for change in diff_objects(pre, post):
        obj = objects.get(change.id)
        if obj is None or not obj.protected:
            continue
        target = protected_name(obj)
        if any(approval_covers(bundle.declaration, f"protected:{token}") for token in protection_tokens(bundle, obj)):
            findings.append(
                Finding(
                    code="protected_change_approved",
                    tier="informational",
                    object=change.id,
                    message=f"protected {obj.kind} {change.change} with a recorded approval",
                )
            )
            continue
        findings.append(
            Finding(
                code="protected_domain_changed",
                tier="hard_fail",
                object=change.id,
                message=f"protected {obj.kind} {change.change}; needs an approval covering 'protected:{target}'",
            )
        )
    if pre.protected_fingerprint != post.protected_fingerprint and not findings:
        findings.append(
            Finding(
                code="protected_fingerprint_changed",
                tier="hard_fail",
                message="the protected-domain fingerprint changed",
            )
        )
    return findings


def verdict(
    bundle: Bundle,
    store: Store,
    pre: Baseline,
    post: Baseline,
    writes: list[WriteCount],
    facts: dict[str, Any] | None = None,
) -> DiffSummary:
    changes = diff_objects(pre, post)
    findings, limits = store.evaluate(bundle, pre, post, writes, facts or {})
    findings = resolve_approvals(bundle, protected_findings(bundle, pre, post) + findings)
    failed = any(f.tier == "hard_fail" for f in findings) or any(
        f.tier == "review_required" and not f.approved_by for f in findings
    )
    return DiffSummary(
        schema_version="diff_summary.v1",
        migration_id=bundle.migration_id,
        store=store.kind,  # type: ignore[arg-type]
        pre_schema_fingerprint=pre.schema_fingerprint,
        post_schema_fingerprint=post.schema_fingerprint,
        pre_protected_fingerprint=pre.protected_fingerprint,
        post_protected_fingerprint=post.protected_fingerprint,
        changes=changes,
        writes=[w for w in writes if w.inserted or w.updated or w.deleted or w.rewritten],
        limits=limits,
        findings=findings,
        verdict="fail" if failed else "pass",
    )


def blocking(summary: DiffSummary) -> list[Finding]:
    return [f for f in summary.findings if f.tier == "hard_fail" or (f.tier == "review_required" and not f.approved_by)]
