"""The search gate's store-specific part: what changed between the pre- and post-baseline,
the alias actions still held back, and the documents written, judged against the declared
scope, approvals and limits.

Writes are judged twice: as the reindex tasks counted them (by dest), and as the cluster
saw them (the write counters of every index in both baselines). A protected index (without
approval) or a forbidden one whose counters moved during the run is a hard fail
(``foreign_index_written``), whoever wrote: a run that reaches such an index by a path the
plan did not see, or another client writing into it meanwhile, both leave its state
unverifiable. Other indices are not judged by their counters: the run's own dest indices
are written legitimately, the governance index and the indices the run created are not in
the pre-baseline, and an allowed or unrelated index may take live writes from other
clients while the run lasts; refusing the run for those would be a false refusal."""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, Finding, LimitCheck, SearchDeclaration, WriteCount
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.evidence.limits import limit_checks
from airflow_kfm_migrations.stores.search.capture import written_between
from airflow_kfm_migrations.stores.search.scope import SearchScopeRules


def evaluate(
    bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
) -> tuple[list[Finding], list[LimitCheck]]:
    decl = bundle.declaration
    assert isinstance(decl, SearchDeclaration)
    rules = SearchScopeRules(decl)
    findings: list[Finding] = []
    index_delta = 0
    for c in diff_objects(pre, post):
        name = c.table or ""
        if c.kind == "doc_count":
            continue  # guarded indices: the protected check; others follow live traffic
        if c.kind == "index":
            if c.change in {"added", "removed"}:
                index_delta += 1
            forbidden, guarded, allowed = (
                rules.index_forbidden(name),
                rules.index_protected(name),
                rules.index_allowed(name),
            )
        elif c.kind == "alias":
            forbidden, guarded, allowed = rules.alias_forbidden(name), False, rules.alias_allowed(name)
        else:  # templates: no action can change them, so any change is someone else's
            forbidden, guarded, allowed = False, False, False
        if forbidden:
            findings.append(
                Finding(
                    code="forbidden_object_changed",
                    tier="hard_fail",
                    object=c.id,
                    message=f"{c.kind} {c.change} in forbidden scope",
                )
            )
        elif guarded:
            continue  # protected objects: gate.protected_findings decides
        elif not allowed:
            findings.append(
                Finding(
                    code="out_of_scope_change",
                    tier="hard_fail",
                    object=c.id,
                    message=f"{c.kind} {c.change} outside the allowed scope",
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
    # The alias flip happens after the gate: judge the held-back actions here.
    for spec in facts.get("pending_aliases", []):
        ((op, body),) = spec.items()
        ix, al = body["index"], body["alias"]
        obj = f"alias:{al}"
        if rules.alias_forbidden(al) or rules.index_forbidden(ix):
            findings.append(
                Finding(
                    code="forbidden_object_changed",
                    tier="hard_fail",
                    object=obj,
                    message=f"pending alias {op} {al} -> {ix} touches forbidden scope",
                )
            )
        elif rules.index_protected(ix) and not approval_covers(decl, f"protected:{ix}"):
            findings.append(
                Finding(
                    code="protected_domain_changed",
                    tier="hard_fail",
                    object=obj,
                    message=f"pending alias {op} {al} -> protected {ix}; needs 'protected:{ix}'",
                )
            )
        elif not rules.alias_allowed(al) or not (rules.index_allowed(ix) or rules.index_protected(ix)):
            findings.append(
                Finding(
                    code="out_of_scope_change",
                    tier="hard_fail",
                    object=obj,
                    message=f"pending alias {op} {al} -> {ix} outside the allowed scope",
                )
            )
        else:
            findings.append(
                Finding(
                    code="alias_flip_pending",
                    tier="informational",
                    object=obj,
                    message=f"alias {op} {al} -> {ix} is flipped atomically at commit",
                )
            )
    for w in writes:
        n = w.inserted + w.updated + w.deleted
        if not n:
            continue
        if rules.index_forbidden(w.table):
            findings.append(
                Finding(
                    code="forbidden_write",
                    tier="hard_fail",
                    object=w.table,
                    message=f"{n} document(s) written into a forbidden index",
                )
            )
        elif rules.index_protected(w.table):
            if not approval_covers(decl, f"protected:{w.table}"):
                findings.append(
                    Finding(
                        code="protected_write",
                        tier="hard_fail",
                        object=w.table,
                        message=f"{n} document(s) written into a protected index",
                    )
                )
        elif not rules.index_allowed(w.table):
            findings.append(
                Finding(
                    code="out_of_scope_write",
                    tier="hard_fail",
                    object=w.table,
                    message=f"{n} document(s) written outside the allowed scope",
                )
            )
    findings += _counter_findings(decl, rules, pre, post)
    if facts.get("recovered"):
        findings.append(
            Finding(
                code="interrupted_run_recovered",
                tier="informational",
                message=str(facts["recovered"]),
            )
        )
    docs = int(facts.get("docs_reindexed", 0))
    limits, exceeded = limit_checks(decl.limits, {"max_index_count_delta": index_delta, "max_docs_reindexed": docs})
    findings.extend(exceeded)
    return findings, limits


def _counter_findings(decl: SearchDeclaration, rules: SearchScopeRules, pre: Baseline, post: Baseline) -> list[Finding]:
    """Protected (unapproved) and forbidden indices written between the two baselines."""
    before = pre.extra.get("write_counters") or {}
    after = post.extra.get("write_counters") or {}
    out: list[Finding] = []
    for ix, what in sorted(written_between(before, after).items()):
        if rules.index_forbidden(ix):
            kind = "forbidden"
        elif rules.index_protected(ix) and not approval_covers(decl, f"protected:{ix}"):
            kind = "protected"
        else:
            continue
        out.append(
            Finding(
                code="foreign_index_written",
                tier="hard_fail",
                object=ix,
                message=f"{kind} index {ix} was written during the run ({what}); the run's writes belong in "
                "the indices it creates or its reindex dests",
            )
        )
    return out
