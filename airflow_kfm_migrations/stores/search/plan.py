"""The static plan of a search migration: what each action of the forward would do, and
the findings that refuse it before anything connects (targets outside the declared scope,
deletes of indices the migration did not create, in-place changes under
``transactional: true``). Also whether a forward may be rehearsed (``--dry-run``)."""

from __future__ import annotations

from airflow_kfm_migrations.contracts.models import Finding, SearchDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.stores.base import Plan, PlannedStatement
from airflow_kfm_migrations.stores.search.actions import created_by, load_actions
from airflow_kfm_migrations.stores.search.scope import SearchScopeRules


def static_plan(bundle: Bundle, kind: str) -> Plan:
    """The plan of ``bundle`` for a store of ``kind`` (read from the bundle alone)."""
    decl = bundle.declaration
    assert isinstance(decl, SearchDeclaration)
    rules = SearchScopeRules(decl)
    forward = load_actions(bundle.by_role("forward"))
    rollback = load_actions(bundle.by_role("rollback"))
    creates = created_by(forward)
    statements: list[PlannedStatement] = []
    findings: list[Finding] = []
    made: set[str] = set()
    for i, act in enumerate(forward, 1):
        indices, aliases = act.targets()
        note = None
        stmt_kind = "DML" if act.name == "reindex" else "DDL"
        if act.name == "aliases":
            note = "held back: flipped atomically at commit, after the gate passed"
        elif act.name == "reindex":
            note = "async reindex; dest doc count verified against the source"
        statements.append(
            PlannedStatement(i, stmt_kind, act.name, tuple(indices + [f"alias:{a}" for a in aliases]), False, note)
        )
        label = f"forward action {i} ({act.name})"
        findings += _target_findings(decl, rules, label, indices, aliases)
        if act.name == "create_index":
            made.add(act.body["index"])
        if act.name == "delete_index" and act.body["index"] not in made:
            findings.append(
                Finding(
                    code="plan_delete_not_created",
                    tier="hard_fail",
                    object=act.body["index"],
                    message=f"{label} deletes {act.body['index']}, which this migration did not create",
                )
            )
        if act.name in {"put_mapping", "put_settings"} and act.body["index"] not in made and decl.transactional:
            findings.append(
                Finding(
                    code="non_transactional_statement",
                    tier="hard_fail",
                    object=act.body["index"],
                    message=f"{label} changes an existing index durably before the gate; declare "
                    "transactional: false with a reason",
                )
            )
    for i, act in enumerate(rollback, 1):
        indices, aliases = act.targets()
        label = f"rollback action {i} ({act.name})"
        findings += _target_findings(decl, rules, label, indices, aliases)
        if act.name == "delete_index" and act.body["index"] not in creates:
            findings.append(
                Finding(
                    code="plan_delete_not_created",
                    tier="hard_fail",
                    object=act.body["index"],
                    message=f"{label} deletes {act.body['index']}, which the forward does not create",
                )
            )
    if decl.transactional:
        findings.append(
            Finding(
                code="blue_green",
                tier="informational",
                message="search has no transactions: new indices are built beside the old ones and the alias "
                "flip waits for the gate; an abort deletes the new indices",
            )
        )
    return Plan(bundle.migration_id, kind, tuple(statements), tuple(_dedupe(findings)))


def _target_findings(
    decl: SearchDeclaration, rules: SearchScopeRules, label: str, indices: list[str], aliases: list[str]
) -> list[Finding]:
    out: list[Finding] = []
    for ix in indices:
        if rules.index_forbidden(ix):
            out.append(
                Finding(
                    code="plan_forbidden_target",
                    tier="hard_fail",
                    object=ix,
                    message=f"{label} targets forbidden index {ix}",
                )
            )
        elif rules.index_protected(ix):
            if not approval_covers(decl, f"protected:{ix}"):
                out.append(
                    Finding(
                        code="plan_protected_target",
                        tier="hard_fail",
                        object=ix,
                        message=f"{label} targets protected index {ix} without approval",
                    )
                )
        elif not rules.index_allowed(ix):
            out.append(
                Finding(
                    code="plan_out_of_scope",
                    tier="hard_fail",
                    object=ix,
                    message=f"{label} targets index {ix}, outside the allowed index patterns",
                )
            )
    for al in aliases:
        if rules.alias_forbidden(al):
            out.append(
                Finding(
                    code="plan_forbidden_target",
                    tier="hard_fail",
                    object=f"alias:{al}",
                    message=f"{label} targets forbidden alias {al}",
                )
            )
        elif not rules.alias_allowed(al):
            out.append(
                Finding(
                    code="plan_out_of_scope",
                    tier="hard_fail",
                    object=f"alias:{al}",
                    message=f"{label} targets alias {al}, outside the allowed aliases",
                )
            )
    return out


def rehearsable(bundle: Bundle) -> bool:
    """True when the forward is pure blue/green: every write lands in an index it creates
    and aliases only move at commit, so ``abort`` after ``apply`` deletes every trace
    (the reindex task result kept in the system index ``.tasks`` aside)."""
    made: set[str] = set()
    for act in load_actions(bundle.by_role("forward")):
        if act.name == "create_index":
            made.add(act.body["index"])
            continue
        written = act.body["dest"] if act.name == "reindex" else act.body.get("index")
        if act.name != "aliases" and written not in made:
            return False
    return True


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str | None, str]] = set()
    out = []
    for f in findings:
        key = (f.code, f.object, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
