"""``kfm-migrations validate``: bundles, type folders, the migrations root, fixtures.

Each bundle is also planned statically, as ``plan`` would (planning never connects), so CI
catches a script that does not parse (``file:line:column``) and one that targets forbidden,
protected or out-of-scope objects (the plan's hard failures) before anyone runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from airflow_kfm_migrations.contracts.models import Registry
from airflow_kfm_migrations.declaration import requires
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import DECLARATION_FILE, Bundle, display, load_bundle
from airflow_kfm_migrations.declaration.registry import (
    REGISTRY_REL,
    SKIP_STAGE,
    check_against_base,
    check_coverage,
    check_entries,
    discover_bundles,
    load_registry,
)
from airflow_kfm_migrations.engine.preflight import bundle_problems
from airflow_kfm_migrations.errors import InputError, InvalidInput, KfmError, PolicyError
from airflow_kfm_migrations.kinds import KINDS
from airflow_kfm_migrations.stores.base import open_store

FIXTURE_EXPECTED = "expected.txt"


@dataclass
class Result:
    target: str
    kind: str  # bundle | registry | fixture
    migration_id: str | None = None
    digest: str | None = None
    problems: list[InputError] = field(default_factory=list)
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return max((p.exit_code for p in self.problems), default=0)


def validate_bundle(path: Path, *, check_requires: bool = True) -> Result:
    """One bundle; ``check_requires``: judge its ``requires`` within its migrations root too
    (``validate_root`` judges every bundle's at once instead)."""
    res = Result(display(path), "bundle")
    try:
        bundle = load_bundle(path)
    except InvalidInput as exc:
        res.problems = list(exc.problems)
        return res
    except InputError as exc:
        res.problems = [exc]
        return res
    res.migration_id = bundle.migration_id
    res.digest = bundle.digest
    res.problems = bundle_problems(bundle) + plan_problems(bundle)
    if check_requires:
        res.problems += requires.bundle_problems(bundle)
    return res


def plan_problems(bundle: Bundle) -> list[InputError]:
    """The static plan's refusals: a script that does not parse (exit 2), and each hard
    failure of the plan (exit 1), as ``<bundle>: plan.<code>: <message>``."""
    if bundle.type not in KINDS:
        return []  # a declared-only type has no runner, and no plan
    try:
        plan = open_store(bundle.type, "-", plan_only=True).plan(bundle)
    except InvalidInput as exc:
        return list(exc.problems)
    except InputError as exc:
        return [exc]
    except KfmError as exc:
        return [PolicyError(display(bundle.root), "plan", str(exc))]
    out: list[InputError] = []
    for f in plan.findings:
        if f.tier == "hard_fail":
            where = "" if not f.object or f.object in f.message else f" ({f.object})"
            out.append(PolicyError(display(bundle.root), f"plan.{f.code}", f.message + where))
    return out


def validate_registry_file(path: Path) -> Result:
    res = Result(display(path), "registry")
    try:
        reg = load_registry(path)
    except InvalidInput as exc:
        res.problems = list(exc.problems)
        return res
    res.problems = check_entries(reg, display(path))
    res.note = f"{len(reg.migrations)} entries"
    return res


def validate_root(root: Path, base: str | None) -> list[Result]:
    results: list[Result] = []
    reg_path = root / REGISTRY_REL
    reg_res = validate_registry_file(reg_path)
    if reg_res.ok:
        reg = load_registry(reg_path)
        reg_res.problems.extend(check_coverage(reg, root, display(reg_path)))
        reg_res.problems.extend(check_promotions(reg, root, display(reg_path)))
    if base:
        try:
            reg_res.problems.extend(check_against_base(root, base))
        except InputError as exc:
            reg_res.problems.append(exc)
    results.append(reg_res)
    bundles = [validate_bundle(bundle, check_requires=False) for bundle in discover_bundles(root)]
    by_file = {display(Path(r.target) / DECLARATION_FILE): r for r in bundles}
    for problem in requires.problems(requires.read_root(root), requires.known_ids(root)):
        if problem.file in by_file:
            by_file[problem.file].problems.append(problem)
    results.extend(bundles)
    fixtures = root / "registry" / "fixtures"
    if fixtures.is_dir():
        results.extend(validate_fixtures(fixtures))
    return results


def check_promotions(reg: Registry, root: Path, label: str) -> list[InputError]:
    """Each ``executed_prod`` event follows an ``executed_stage`` one since the last
    rollback, or the bundle's declaration records an approval covering ``skip:executed_stage``."""
    problems: list[InputError] = []
    for i, entry in enumerate(reg.migrations):
        staged = False
        for j, ev in enumerate(entry.events):
            if ev.status == "rolled_back":
                staged = False
            elif ev.status == "executed_stage":
                staged = True
            elif ev.status == "executed_prod" and not staged and not _skip_approved(root / entry.path):
                problems.append(
                    PolicyError(
                        label,
                        f"migrations.{i}.events.{j}.status",
                        "executed_prod without an executed_stage event since the last rollback, and the "
                        f"declaration records no approval covering '{SKIP_STAGE}'",
                    )
                )
    return problems


def _skip_approved(folder: Path) -> bool:
    try:
        return approval_covers(load_bundle(folder).declaration, SKIP_STAGE) is not None
    except KfmError:
        return False


def _fixture_target(case: Path) -> Path | None:
    reg = case / "migrations.v1.json"
    if reg.exists():
        return reg
    subdirs = [p for p in sorted(case.iterdir()) if p.is_dir() and not p.is_symlink()]
    return subdirs[0] if len(subdirs) == 1 else None


def validate_fixtures(fixtures: Path) -> list[Result]:
    """Valid fixtures must pass; every invalid one must fail with its expected reason."""
    results = []
    valid = fixtures / "valid"
    if valid.is_dir():
        for case in sorted(p for p in valid.iterdir() if p.is_dir()):
            r = validate_bundle(case)
            r.kind = "fixture"
            results.append(r)
    invalid = fixtures / "invalid"
    if invalid.is_dir():
        for case in sorted(p for p in invalid.iterdir() if p.is_dir()):
            results.append(check_invalid_fixture(case))
    return results


def run_target(target: Path) -> Result:
    if target.is_file() and target.suffix == ".json":
        return validate_registry_file(target)
    return validate_bundle(target)


def check_invalid_fixture(case: Path) -> Result:
    res = Result(display(case), "fixture")
    expected_file = case / FIXTURE_EXPECTED
    target = _fixture_target(case)
    if not expected_file.exists() or target is None:
        res.problems = [
            InputError(
                display(case),
                "-",
                f"an invalid fixture needs {FIXTURE_EXPECTED} and one bundle folder (or migrations.v1.json)",
            )
        ]
        return res
    expected = expected_file.read_text(encoding="utf-8").strip()
    inner = run_target(target)
    text = "\n".join(p.line() for p in inner.problems)
    if inner.ok:
        res.problems = [InputError(display(case), "-", "invalid fixture was accepted")]
    elif expected not in text:
        res.problems = [InputError(display(case), "-", f"failed, but without the expected reason {expected!r}: {text}")]
    else:
        res.note = f"refused as expected ({expected})"
    return res


def validate_paths(paths: list[Path], base: str | None = None) -> list[Result]:
    results: list[Result] = []
    for path in paths:
        if not path.exists() and not path.is_symlink():
            results.append(
                Result(display(path), "path", problems=[InputError(display(path), "-", "no such file or directory")])
            )
        elif path.is_file():
            if path.suffix == ".json":
                results.append(validate_registry_file(path))
            elif path.name == DECLARATION_FILE:
                results.append(validate_bundle(path.parent))
            else:
                results.append(
                    _not_a_target(path, "not a migration folder, migration.yml, registry file or migrations root")
                )
        elif (path / REGISTRY_REL).exists():
            results.extend(validate_root(path, base))
        elif (path / DECLARATION_FILE).exists() or path.is_symlink():
            results.append(validate_bundle(path))
        elif path.name == "fixtures" and ((path / "valid").is_dir() or (path / "invalid").is_dir()):
            results.extend(validate_fixtures(path))
        elif (path / FIXTURE_EXPECTED).exists():
            results.append(check_invalid_fixture(path))
        else:
            subs = [p for p in sorted(path.iterdir()) if p.is_dir() and (p / DECLARATION_FILE).exists()]
            if not subs:
                results.append(
                    _not_a_target(
                        path, "no migration bundles here (expected a bundle, a type folder or a migrations root)"
                    )
                )
            results.extend(validate_bundle(p) for p in subs)
    return results


def _not_a_target(path: Path, reason: str) -> Result:
    return Result(display(path), "path", problems=[InputError(display(path), "-", reason)])
