"""Which finding codes the package emits, read from its source, and how that compares with
the catalogue (``contracts/finding_codes.py``).

Used by ``python -m airflow_kfm_migrations.contracts.reference`` (which fails on any
difference) and by ``tests/test_reference.py``. Pure standard library plus the catalogue:
the source is parsed, never imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from airflow_kfm_migrations.contracts.finding_codes import FINDING_CODES

PACKAGE_DIR = Path(__file__).resolve().parent.parent
# These describe codes rather than emit them.
_NOT_EMITTERS = ("contracts/finding_codes.py", "contracts/reference.py", "contracts/finding_scan.py")
_REVIEW_TOKEN = re.compile(r"^review:([a-z][a-z0-9_]*)(:.*)?$", re.S)


@dataclass(frozen=True)
class CodeSite:
    """A place in the source that emits (or approves) a finding code."""

    code: str  # the code, or a regular expression when ``pattern``
    pattern: bool
    tier: str | None  # None: a backfill Stop or an approval token (no tier of its own)
    construct: str  # Finding, the name of another code-carrying call (e.g. BackfillStop), or review-token
    where: str  # path:line


@dataclass
class CodeScan:
    sites: list[CodeSite] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)  # constructs whose code cannot be read statically

    def codes(self) -> set[str]:
        return {s.code for s in self.sites if not s.pattern}


def _values(node: ast.expr) -> list[tuple[str, bool]] | None:
    """The strings ``node`` can evaluate to: (text, False), or (regex, True) for f-strings and
    concatenations with parts unknown. None when it cannot be read statically."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [(node.value, False)]
    if isinstance(node, ast.IfExp):
        a, b = _values(node.body), _values(node.orelse)
        return None if a is None or b is None else a + b
    if isinstance(node, ast.JoinedStr):
        rx = "".join(
            re.escape(v.value) if isinstance(v, ast.Constant) and isinstance(v.value, str) else ".+"
            for v in node.values
        )
        return [(rx, True)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _values(node.left), _values(node.right)
        lrx = [re.escape(t) if not p else t for t, p in left] if left else [".+"]
        rrx = [re.escape(t) if not p else t for t, p in right] if right else [".+"]
        return [(a + b, True) for a in lrx for b in rrx]
    return None


def _callee(node: ast.Call) -> tuple[str | None, str | None]:
    """(name, owner): ``Finding(...)`` -> ("Finding", None); ``m.Finding(...)`` -> ("Finding", "m");
    ``Finding.model_validate(...)`` -> ("model_validate", "Finding")."""
    f = node.func
    if isinstance(f, ast.Name):
        return f.id, None
    if isinstance(f, ast.Attribute):
        owner = (
            f.value.id
            if isinstance(f.value, ast.Name)
            else (f.value.attr if isinstance(f.value, ast.Attribute) else None)
        )
        return f.attr, owner
    return None, None


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _dict_value(node: ast.expr, key: str) -> ast.expr | None:
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values, strict=True):
            if isinstance(k, ast.Constant) and k.value == key:
                return v
    return None


@dataclass(frozen=True)
class _Helper:
    """A function that passes one of its parameters on as a finding code."""

    name: str
    code_param: str
    code_index: int  # position among the parameters (self/cls excluded)
    tier: ast.expr | None
    tier_param: str | None
    tier_index: int | None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if names and names[0] in {"self", "cls"}:
        names = names[1:]
    return names + [a.arg for a in fn.args.kwonlyargs]


def _code_classes(trees: list[tuple[str, ast.AST]]) -> dict[str, int]:
    """Classes of the package whose ``__init__`` takes a ``code`` (e.g. the backfill's stop
    exception): class name -> position of ``code`` among the parameters (self excluded)."""
    out: dict[str, int] = {}
    for _label, tree in trees:
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__" and "code" in _params(item):
                    out[node.name] = _params(item).index("code")
    return out


Emitter = tuple[ast.Call, str, ast.expr | None, ast.expr | None, ast.AST | None]


def _emitters(tree: ast.AST, code_classes: dict[str, int]) -> Iterator[Emitter]:
    """(call, construct, code expr, tier expr, enclosing function) for every call that emits a
    code: a ``Finding`` (by name, by ``model_construct`` or ``model_validate`` of a dict), a
    class whose ``__init__`` takes ``code``, or any call with a ``code=`` keyword."""
    stack: list[ast.AST] = []

    def walk(node: ast.AST) -> Iterator[Emitter]:
        is_fn = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if is_fn:
            stack.append(node)
        if isinstance(node, ast.Call):
            name, owner = _callee(node)
            fn = stack[-1] if stack else None
            construct = "Finding" if name == "Finding" or owner == "Finding" else (name or "call")
            if name == "model_validate" and owner == "Finding":
                doc = node.args[0] if node.args else None
                code = _dict_value(doc, "code") if doc is not None else None
                yield node, "Finding", code, (_dict_value(doc, "tier") if doc is not None else None), fn
            elif name in code_classes and name != "Finding":
                index = code_classes[name]
                code = _keyword(node, "code") or (node.args[index] if index < len(node.args) else None)
                yield node, name, code, _keyword(node, "tier"), fn
            elif name == "Finding" or (owner, name) == ("Finding", "model_construct") or _keyword(node, "code"):
                yield node, construct, _keyword(node, "code"), _keyword(node, "tier"), fn
        for child in ast.iter_child_nodes(node):
            yield from walk(child)
        if is_fn:
            stack.pop()

    yield from walk(tree)


def _review_tokens(tree: ast.AST) -> Iterator[tuple[str, int]]:
    inside_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside_fstrings:
            hit = _REVIEW_TOKEN.match(node.value)
            if hit:
                yield hit.group(1), node.lineno


def scan_codes(package_dir: Path = PACKAGE_DIR) -> CodeScan:
    """Every finding code the package source emits, read from its syntax trees.

    Read: ``Finding(code=..., tier=...)`` (also ``x.Finding``, ``Finding.model_construct``
    and ``Finding.model_validate({...})``); any other call with a ``code=`` keyword; calls of
    any class of the package whose ``__init__`` takes a ``code`` (the backfill's stop
    exception), by keyword or position; the literal approval tokens ``"review:<code>"``; and
    helper functions that pass one of their parameters on as the code (their call sites are
    read instead). A code given as a string, a conditional expression of strings, an f-string
    or a concatenation is understood (the last two as patterns); anything else is reported in
    ``unresolved``.
    """
    sources: list[tuple[str, str]] = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir).as_posix()
        if rel not in _NOT_EMITTERS:
            sources.append((f"{package_dir.name}/{rel}", path.read_text(encoding="utf-8")))
    key = tuple(sources)
    if key not in _SCANS:
        _SCANS.clear()
        _SCANS[key] = _scan(sources)
    return _SCANS[key]


_SCANS: dict[tuple[tuple[str, str], ...], CodeScan] = {}  # the last scan, by the source it read


def _scan(sources: list[tuple[str, str]]) -> CodeScan:
    scan = CodeScan()
    trees: list[tuple[str, ast.AST]] = [(label, ast.parse(text, filename=label)) for label, text in sources]

    code_classes = _code_classes(trees)
    helpers: dict[str, _Helper] = {}

    def add(values: list[tuple[str, bool]], tiers: list[str | None], construct: str, where: str) -> None:
        for text, is_pattern in values:
            for tier in tiers:
                scan.sites.append(CodeSite(text, is_pattern, tier, construct, where))

    def tiers_of(expr: ast.expr | None, construct: str, where: str) -> list[str | None] | None:
        if construct != "Finding" and expr is None:
            return [None]  # a backfill stop and the like: no tier of its own
        if expr is None:
            scan.unresolved.append(f"{where}: Finding without a tier")
            return None
        got = _values(expr)
        if got is None or any(p for _, p in got):
            return None
        return [t for t, _ in got]

    for label, tree in trees:
        for call, construct, code, tier, fn in _emitters(tree, code_classes):
            where = f"{label}:{call.lineno}"
            if code is None:
                scan.unresolved.append(f"{where}: {construct}(...) without a readable code")
                continue
            params = _params(fn) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
            if (
                isinstance(code, ast.Name)
                and code.id in params
                and isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            ):
                tier_param = tier.id if isinstance(tier, ast.Name) and tier.id in params else None
                helpers[fn.name] = _Helper(
                    fn.name,
                    code.id,
                    params.index(code.id),
                    None if tier_param else tier,
                    tier_param,
                    params.index(tier_param) if tier_param else None,
                )
                continue
            values = _values(code)
            tiers = tiers_of(tier, construct, where)
            if values is None or tiers is None:
                scan.unresolved.append(f"{where}: {construct}(code={ast.unparse(code)}) cannot be read statically")
                continue
            add(values, tiers, construct, where)
        for code_name, line in _review_tokens(tree):
            scan.sites.append(CodeSite(code_name, False, None, "review-token", f"{label}:{line}"))

    if helpers:  # second pass: the call sites of helper functions
        for label, tree in trees:
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                name, _owner = _callee(node)
                h = helpers.get(name or "")
                if h is None:
                    continue
                where = f"{label}:{node.lineno}"
                code = _keyword(node, h.code_param) or (
                    node.args[h.code_index] if h.code_index < len(node.args) else None
                )
                tier_expr: ast.expr | None = h.tier
                if h.tier_param is not None and h.tier_index is not None:
                    tier_expr = _keyword(node, h.tier_param) or (
                        node.args[h.tier_index] if h.tier_index < len(node.args) else None
                    )
                values = _values(code) if code is not None else None
                tiers = tiers_of(tier_expr, "Finding", where)
                if values is None or tiers is None:
                    scan.unresolved.append(f"{where}: {name}(...) passes a code that cannot be read statically")
                    continue
                add(values, tiers, "Finding", where)
    return scan


def code_problems(scan: CodeScan) -> list[str]:
    """Emitted codes the catalogue lacks (or lacks with that tier), catalogue codes nothing
    emits, and constructs whose code could not be read."""
    problems = list(scan.unresolved)
    for s in scan.sites:
        if s.pattern:
            matched = [c for c in FINDING_CODES if re.fullmatch(s.code, c)]
            if not matched:
                problems.append(f"{s.where}: no catalogued code matches the code pattern {s.code!r}")
            for c in matched:
                if s.tier is not None and s.tier not in FINDING_CODES[c].tiers:
                    problems.append(f"{s.where}: {c} is emitted as {s.tier}, not catalogued with that tier")
            continue
        entry = FINDING_CODES.get(s.code)
        if entry is None:
            problems.append(f"{s.where}: finding code {s.code!r} is not in contracts/finding_codes.py")
        elif s.construct == "review-token" and "review_required" not in entry.tiers:
            problems.append(f"{s.where}: 'review:{s.code}' approves a code that is never review_required")
        elif s.tier is not None and s.tier not in entry.tiers:
            problems.append(f"{s.where}: {s.code} is emitted as {s.tier}, not catalogued with that tier")
    exact = {s.code for s in scan.sites if not s.pattern and s.construct != "review-token"}
    patterns = [s.code for s in scan.sites if s.pattern]
    for code in FINDING_CODES:
        if code not in exact and not any(re.fullmatch(p, code) for p in patterns):
            problems.append(f"contracts/finding_codes.py: {code!r} is catalogued but nothing emits it")
    return sorted(set(problems))
