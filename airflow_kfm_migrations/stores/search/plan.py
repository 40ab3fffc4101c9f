"""The static plan of a search migration: what each action of the forward would do, and
the findings that refuse it before anything connects (targets outside the declared scope,
deletes of indices the migration did not create, in-place changes under
``transactional: true``, reindex scripts that could write elsewhere than their dest, reindex
sources that are protected or forbidden). Also whether a forward may be rehearsed
(``--dry-run``).

A reindex source is judged by its name here (the plan reads the bundle alone); the session
resolves it again on the cluster right before the reindex starts, so that an alias naming a
protected or forbidden index is refused as well (:func:`.protection.reindex_problem`)."""

from __future__ import annotations

import json

from airflow_kfm_migrations.contracts.models import Finding, SearchDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.stores.base import Plan, PlannedStatement
from airflow_kfm_migrations.stores.search.actions import Action, created_by, load_actions
from airflow_kfm_migrations.stores.search.scope import SearchScopeRules
from airflow_kfm_migrations.stores.search.scripts import script_problem


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
            PlannedStatement(
                i,
                stmt_kind,
                act.name,
                tuple(indices + [f"alias:{a}" for a in aliases]),
                False,
                note,
                file=act.file,
                line=act.line or None,
                text=json.dumps({act.name: act.body}, ensure_ascii=False),
            )
        )
        label = f"forward action {i} ({act.name})"
        findings += _reindex_findings(decl, rules, act)
        findings += _target_findings(decl, rules, label, _written(act, indices), aliases)
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
        findings += _reindex_findings(decl, rules, act)
        findings += _target_findings(decl, rules, label, _written(act, indices), aliases)
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


def _written(act: Action, indices: list[str]) -> list[str]:
    """The indices an action targets, leaving out a reindex source (read, not written: judged
    by :func:`_reindex_findings`)."""
    return [act.body["dest"]] if act.name == "reindex" else indices


def _reindex_findings(decl: SearchDeclaration, rules: SearchScopeRules, act: Action) -> list[Finding]:
    """A reindex reads its source and writes its dest. Refused: a script that could send a
    document elsewhere than the dest (:mod:`.scripts`), and a source that is forbidden, or
    protected without an approval covering ``protected:<source>``, or outside the allowed
    index patterns."""
    if act.name != "reindex":
        return []
    out: list[Finding] = []
    where = f"{act.file} {act.where}"
    script = act.body.get("script")
    if isinstance(script, dict):
        problem = script_problem(str(script.get("source", "")))
        if problem:
            out.append(
                Finding(
                    code="plan_unsafe_script",
                    tier="hard_fail",
                    object=act.body["dest"],
                    message=f"{where}: {problem}",
                )
            )
    src = act.body["source"]
    guarded = None
    if rules.index_forbidden(src):
        guarded = "forbidden"
    elif rules.index_protected(src) and not approval_covers(decl, f"protected:{src}"):
        guarded = "protected (no approval covers 'protected:" + src + "')"
    if guarded:
        out.append(
            Finding(
                code="plan_guarded_source",
                tier="hard_fail",
                object=src,
                message=f"{where}: reindexes from {src}, which is {guarded}; a reindex may not read a forbidden "
                "index, nor a protected one without approval",
            )
        )
    elif not rules.index_protected(src) and not rules.index_allowed(src):
        out.append(
            Finding(
                code="plan_out_of_scope",
                tier="hard_fail",
                object=src,
                message=f"{where}: reindexes from {src}, outside the allowed index patterns",
            )
        )
    return out


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
