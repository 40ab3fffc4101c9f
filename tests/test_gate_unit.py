"""The gate and the limit checks without a server: hand-built baselines, and a stand-in for
the store's ``evaluate`` (its findings are the gate's input; the gate is what is tested)."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import MIGRATIONS
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_kfm_migrations.contracts.models import (
    Baseline,
    BaselineObject,
    Finding,
    LimitCheck,
    PostgisLimits,
    RecordedApproval,
    WriteCount,
)
from airflow_kfm_migrations.declaration.bundle import Bundle, load_bundle
from airflow_kfm_migrations.engine.gate import blocking, protected_findings, resolve_approvals, verdict
from airflow_kfm_migrations.evidence.limits import limit_checks

EXAMPLE = MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def obj(oid: str, version: str = "1", *, protected: bool = False, schema: str | None = None,
        table: str | None = None, kind: str | None = None) -> BaselineObject:
    return BaselineObject(
        id=oid, kind=kind or oid.split(":")[0], schema=schema, table=table, digest=sha(oid + version),
        protected=protected,
    )


def baseline(*objects: BaselineObject, protected_fp: str = "p") -> Baseline:
    objs = sorted(objects, key=lambda o: o.id)
    return Baseline(
        schema_version="baseline.v1",
        store="postgis",
        migration_id="PG-MIG-2026-02-28-01",
        store_version="test",
        scope_digest=sha("scope"),
        counts={},
        objects=objs,
        schema_fingerprint=sha("|".join(o.id + o.digest for o in objs)),
        protected_fingerprint=sha(protected_fp),
    )


@dataclasses.dataclass
class EvaluateGives:
    """A stand-in store whose ``evaluate`` returns the given findings and limit checks, and
    records what the gate passed it."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    limits: list[LimitCheck] = dataclasses.field(default_factory=list)
    kind: str = "postgis"
    calls: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)

    def evaluate(self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount],
                 facts: dict[str, Any]) -> tuple[list[Finding], list[LimitCheck]]:
        self.calls.append((bundle, pre, post, writes, facts))
        return list(self.findings), list(self.limits)


def with_approvals(bundle: Bundle, *covers: list[str], change_class: str | None = None) -> Bundle:
    recorded = [
        RecordedApproval(by=f"reviewer-{i}", at=datetime(2026, 3, 1, tzinfo=UTC), ref=f"GOV-{i}", covers=c)
        for i, c in enumerate(covers)
    ]
    approvals = bundle.declaration.approvals.model_copy(
        update={"recorded": recorded, **({"change_class": change_class} if change_class else {})}
    )
    return dataclasses.replace(bundle, declaration=bundle.declaration.model_copy(update={"approvals": approvals}))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The contract's PostGIS example, copied (read-only here; approvals vary in memory)."""
    dst = tmp_path_factory.mktemp("gate") / EXAMPLE.name
    shutil.copytree(EXAMPLE, dst)
    return load_bundle(dst)


F_HARD = Finding(code="forbidden_write", tier="hard_fail", object="public.authority_sites", message="w")
F_REVIEW = Finding(code="policy_dropped", tier="review_required", object="policy:public.parcels.p", message="d")
F_INFO = Finding(code="object_created", tier="informational", object="index:public.parcels_i", message="c")

PRE = baseline(obj("relation:public.parcels", schema="public", table="parcels"))
POST = baseline(obj("relation:public.parcels", schema="public", table="parcels"),
                obj("index:public.parcels_i", schema="public", table="parcels"))


# ------------------------------------------------------------------ tiers


def test_no_findings_pass_and_the_summary_carries_the_diff(bundle: Bundle) -> None:
    store = EvaluateGives(limits=[LimitCheck(name="max_index_count_delta", declared=2, observed=1, ok=True)])
    writes = [WriteCount(table="public.parcels", updated=3), WriteCount(table="public.idle")]
    s = verdict(bundle, store, PRE, POST, writes, {"x": 1})
    assert s.verdict == "pass" and blocking(s) == []
    assert [(c.change, c.id) for c in s.changes] == [("added", "index:public.parcels_i")]
    assert [w.table for w in s.writes] == ["public.parcels"]  # tables nothing was written to are left out
    assert s.limits == store.limits
    assert (s.pre_schema_fingerprint, s.post_schema_fingerprint) == (PRE.schema_fingerprint, POST.schema_fingerprint)
    assert store.calls == [(bundle, PRE, POST, writes, {"x": 1})]


def test_facts_default_to_an_empty_dict(bundle: Bundle) -> None:
    store = EvaluateGives()
    verdict(bundle, store, PRE, POST, [])
    assert store.calls[0][4] == {}


@pytest.mark.parametrize(("finding", "expected"), [(F_HARD, "fail"), (F_REVIEW, "fail"), (F_INFO, "pass")])
def test_each_tier_alone(bundle: Bundle, finding: Finding, expected: str) -> None:
    s = verdict(bundle, EvaluateGives([finding]), PRE, POST, [])
    assert s.verdict == expected
    assert blocking(s) == ([finding] if expected == "fail" else [])
    assert s.findings == [finding]


def test_one_hard_fail_among_approved_reviews_still_fails(bundle: Bundle) -> None:
    b = with_approvals(bundle, ["review:policy_dropped", "review:forbidden_write"])
    s = verdict(b, EvaluateGives([F_REVIEW, F_HARD, F_INFO]), PRE, POST, [])
    assert s.verdict == "fail"
    # An approval never covers a hard fail, even one naming its code.
    assert [f.code for f in blocking(s)] == ["forbidden_write"]
    assert next(f for f in s.findings if f.code == "forbidden_write").approved_by is None


# ------------------------------------------------------------------ approvals


@pytest.mark.parametrize(
    ("covers", "approved"),
    [
        (["review:policy_dropped"], True),
        (["review:policy_dropped:policy:public.parcels.p"], True),
        (["review:policy_dropped:policy:public.parcels.other"], False),
        (["review:constraint_dropped"], False),
        (["policy_dropped"], False),
        (["protected:policy:public.parcels.p"], False),
        ([], False),
    ],
)
def test_a_review_finding_needs_an_approval_covering_its_code_or_its_object(
    bundle: Bundle, covers: list[str], approved: bool
) -> None:
    b = with_approvals(bundle, covers)
    s = verdict(b, EvaluateGives([F_REVIEW]), PRE, POST, [])
    assert s.verdict == ("pass" if approved else "fail")
    (f,) = s.findings
    assert f.approved_by == ("reviewer-0 (GOV-0)" if approved else None)


def test_the_first_covering_approval_is_named(bundle: Bundle) -> None:
    b = with_approvals(bundle, ["review:other"], ["review:policy_dropped"], ["review:policy_dropped"])
    (f,) = resolve_approvals(b, [F_REVIEW])
    assert f.approved_by == "reviewer-1 (GOV-1)"


def test_an_object_approval_needs_the_finding_to_name_an_object(bundle: Bundle) -> None:
    anonymous = F_REVIEW.model_copy(update={"object": None})
    b = with_approvals(bundle, ["review:policy_dropped:None", "review:policy_dropped:"])
    (f,) = resolve_approvals(b, [anonymous])
    assert f.approved_by is None


def test_resolve_approvals_touches_only_review_findings(bundle: Bundle) -> None:
    b = with_approvals(bundle, ["review:object_created", "review:forbidden_write"])
    assert resolve_approvals(b, [F_INFO, F_HARD]) == [F_INFO, F_HARD]


# ------------------------------------------------------------------ protected objects

PROT_PRE = baseline(
    obj("relation:public.authority_sites", schema="public", table="authority_sites", protected=True),
    obj("schema:governance", schema="governance", protected=True),
    obj("relation:public.parcels", schema="public", table="parcels"),
)


def _changed(oid: str) -> Baseline:
    objs = [
        obj(o.id, "2", protected=o.protected, schema=o.schema_, table=o.table) if o.id == oid else o
        for o in PROT_PRE.objects
    ]
    return baseline(*objs, protected_fp="changed")


@pytest.mark.parametrize(
    ("oid", "target"),
    [("relation:public.authority_sites", "public.authority_sites"), ("schema:governance", "governance")],
)
def test_a_changed_protected_object_is_a_hard_fail_whatever_the_store_says(
    bundle: Bundle, oid: str, target: str
) -> None:
    post = _changed(oid)
    s = verdict(bundle, EvaluateGives(), PROT_PRE, post, [])
    assert s.verdict == "fail"
    (f,) = s.findings
    assert (f.code, f.tier, f.object) == ("protected_domain_changed", "hard_fail", oid)
    assert f"'protected:{target}'" in f.message


@pytest.mark.parametrize("token_of", [lambda oid, target: target, lambda oid, target: oid])
@pytest.mark.parametrize(
    ("oid", "target"),
    [("relation:public.authority_sites", "public.authority_sites"), ("schema:governance", "governance")],
)
def test_a_protected_change_with_a_protected_approval_is_informational(
    bundle: Bundle, oid: str, target: str, token_of: Any
) -> None:
    b = with_approvals(bundle, [f"protected:{token_of(oid, target)}"])
    s = verdict(b, EvaluateGives(), PROT_PRE, _changed(oid), [])
    assert s.verdict == "pass"
    (f,) = s.findings
    assert (f.code, f.tier, f.object) == ("protected_change_approved", "informational", oid)
    # ... and no protected_fingerprint_changed on top, although the fingerprint moved.
    assert "protected_fingerprint_changed" not in {x.code for x in s.findings}


def test_a_bare_table_name_approves_only_what_the_declaration_protects_by_that_name(bundle: Bundle) -> None:
    """``protected:authority_sites`` would approve a same-named table in every schema: it
    counts only where the declaration itself protects the bare name."""
    change = _changed("relation:public.authority_sites")
    bare = with_approvals(bundle, ["protected:authority_sites"])
    assert [f.code for f in blocking(verdict(bare, EvaluateGives(), PROT_PRE, change, []))] == [
        "protected_domain_changed"
    ]
    scope = bare.declaration.scope.model_copy(update={"protected_tables": ["authority_sites"]})
    declared = dataclasses.replace(bare, declaration=bare.declaration.model_copy(update={"scope": scope}))
    assert verdict(declared, EvaluateGives(), PROT_PRE, change, []).verdict == "pass"


def test_a_review_approval_does_not_cover_a_protected_change(bundle: Bundle) -> None:
    b = with_approvals(bundle, ["review:protected_domain_changed", "protected:parcels"])
    s = verdict(b, EvaluateGives(), PROT_PRE, _changed("relation:public.authority_sites"), [])
    assert [f.code for f in blocking(s)] == ["protected_domain_changed"]


@pytest.mark.parametrize("change", ["removed", "added"])
def test_protected_objects_removed_or_added_count_too(bundle: Bundle, change: str) -> None:
    extra = obj("relation:public.authority_sites_2", schema="public", table="authority_sites_2", protected=True)
    pre, post = (baseline(*PROT_PRE.objects, extra), PROT_PRE) if change == "removed" else (
        PROT_PRE, baseline(*PROT_PRE.objects, extra))
    (f,) = protected_findings(bundle, pre, post)
    assert (f.code, f.object) == ("protected_domain_changed", extra.id) and change in f.message


def test_an_unprotected_change_is_left_to_the_store(bundle: Bundle) -> None:
    assert protected_findings(bundle, PROT_PRE, _changed("relation:public.parcels").model_copy(
        update={"protected_fingerprint": PROT_PRE.protected_fingerprint})) == []


def test_a_protected_fingerprint_that_moved_with_no_object_changed_is_a_hard_fail(bundle: Bundle) -> None:
    """Protected rows are digested into the fingerprint: a changed row shows only there."""
    post = PROT_PRE.model_copy(update={"protected_fingerprint": sha("rows changed")})
    s = verdict(with_approvals(bundle, ["protected:authority_sites"]), EvaluateGives(), PROT_PRE, post, [])
    assert s.verdict == "fail"
    assert [(f.code, f.tier, f.object) for f in s.findings] == [("protected_fingerprint_changed", "hard_fail", None)]


# ------------------------------------------------------------------ property

CODES = st.sampled_from(["policy_dropped", "grant_widened", "forbidden_write", "object_created"])
OBJECTS = st.sampled_from([None, "a", "b"])
FINDINGS = st.lists(
    st.builds(lambda c, t, o: Finding(code=c, tier=t, object=o, message="m"), CODES,
              st.sampled_from(["hard_fail", "review_required", "informational"]), OBJECTS),
    max_size=6,
)
TOKENS = st.lists(
    st.builds(lambda c, o: f"review:{c}" + (f":{o}" if o else ""), CODES, OBJECTS), max_size=4
)


@settings(max_examples=200, deadline=None)
@given(findings=FINDINGS, tokens=TOKENS)
def test_verdict_fails_exactly_when_a_hard_fail_or_an_uncovered_review_remains(
    bundle: Bundle, findings: list[Finding], tokens: list[str]
) -> None:
    b = with_approvals(bundle, tokens)
    s = verdict(b, EvaluateGives(findings), PRE, POST, [])

    def covered(f: Finding) -> bool:
        return f"review:{f.code}" in tokens or (f.object is not None and f"review:{f.code}:{f.object}" in tokens)

    must_fail = any(f.tier == "hard_fail" or (f.tier == "review_required" and not covered(f)) for f in findings)
    assert (s.verdict == "fail") is must_fail
    assert [(f.code, f.tier, f.object) for f in s.findings] == [(f.code, f.tier, f.object) for f in findings]
    for got, f in zip(s.findings, findings, strict=True):
        assert (got.approved_by is not None) is (f.tier == "review_required" and covered(f))
    assert blocking(s) == [f for f in s.findings if f.tier == "hard_fail" or
                           (f.tier == "review_required" and f.approved_by is None)]


# ------------------------------------------------------------------ limit checks


def test_limit_checks_compare_declared_and_observed() -> None:
    limits = PostgisLimits(max_table_count_touched=1, max_index_count_delta=2, max_row_backfill=0)
    checks, findings = limit_checks(limits, {"max_index_count_delta": 3, "max_table_count_touched": 1,
                                             "max_row_backfill": 0})
    assert [(c.name, c.declared, c.observed, c.ok) for c in checks] == [
        ("max_index_count_delta", 2, 3, False),
        ("max_table_count_touched", 1, 1, True),
        ("max_row_backfill", 0, 0, True),
    ]
    (f,) = findings
    assert (f.code, f.tier, f.object) == ("limit_exceeded", "hard_fail", "max_index_count_delta")
    assert f.message == "max_index_count_delta: observed 3 > declared 2"


def test_an_undeclared_limit_is_zero() -> None:
    _, findings = limit_checks(PostgisLimits(), {"max_constraint_delta": 1})
    assert [f.object for f in findings] == ["max_constraint_delta"]


def test_only_the_limits_observed_are_checked() -> None:
    assert limit_checks(PostgisLimits(max_index_count_delta=0), {}) == ([], [])


LIMIT_NAMES = list(PostgisLimits.model_fields)


@settings(max_examples=200, deadline=None)
@given(
    declared=st.fixed_dictionaries({n: st.integers(0, 50) for n in LIMIT_NAMES}),
    observed=st.dictionaries(st.sampled_from(LIMIT_NAMES), st.integers(0, 60)),
)
def test_limit_checks_property(declared: dict[str, int], observed: dict[str, int]) -> None:
    checks, findings = limit_checks(PostgisLimits(**declared), observed)
    assert [c.name for c in checks] == list(observed)
    for c in checks:
        assert (c.declared, c.observed) == (declared[c.name], observed[c.name])
        assert c.ok is (observed[c.name] <= declared[c.name])
    assert [f.object for f in findings] == [c.name for c in checks if not c.ok]
    assert all(f.code == "limit_exceeded" and f.tier == "hard_fail" for f in findings)
