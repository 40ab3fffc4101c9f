"""``kfm-migrations plan --format markdown``: a static plan as a comment to paste into a pull
request. It shows what a reviewer needs to approve the change without opening the bundle:

- each statement with its ``file:line`` and its text (trimmed), its targets and, for
  PostGIS, the lock it takes and what that lock blocks (the documented lock table,
  ``docs/reference/postgis-locks.md``);
- with a connection, the estimated rows of each table the plan names, read-only from the
  store's statistics (a ``RowEstimating`` store);
- the declared scope and limits beside the targets the plan detected;
- the findings with their tiers, and the plan's verdict.

Planning never connects; only the row estimates do, and only when asked.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from airflow_kfm_migrations.declaration.bundle import Bundle, display
from airflow_kfm_migrations.stores.base import Plan, PlannedStatement, RowEstimating, open_store

MAX_LINES = 12  # of a statement's text in the comment
MAX_CHARS = 1200
_LANG = {".sql": "sql", ".json": "json", ".cypher": "cypher", ".cql": "cypher"}
_TIER_ORDER = {"hard_fail": 0, "review_required": 1, "informational": 2}


def estimate_rows(bundle: Bundle, plan: Plan, conn_id: str, *, use_hook: bool = False) -> dict[str, int | None] | None:
    """Estimated rows of every table the plan names (targets and locked tables), read-only
    through ``conn_id``; None when the store kind cannot estimate."""
    store = open_store(bundle.type, conn_id, use_hook=use_hook)
    if not isinstance(store, RowEstimating):
        return None
    return store.estimated_rows(touched_names(plan))


def touched_names(plan: Plan) -> list[str]:
    """The ``schema.name`` targets of every statement, in plan order, without duplicates."""
    seen: dict[str, None] = {}
    for st in plan.statements:
        for t in st.targets:
            if "." in t and ":" not in t and " " not in t and "(" not in t:
                seen.setdefault(t, None)
    return list(seen)


def trimmed(text: str) -> str:
    """A statement's text for the comment: at most MAX_LINES lines and MAX_CHARS characters."""
    lines = text.strip().splitlines()
    out = "\n".join(lines[:MAX_LINES])
    cut = len(lines) > MAX_LINES
    if len(out) > MAX_CHARS:
        out, cut = out[:MAX_CHARS], True
    return out + ("\n… (trimmed)" if cut else "")


def _cell(text: Any) -> str:
    """A table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _where(st: PlannedStatement, folder: str) -> str:
    """``file:line`` with the file relative to the bundle folder (``forward.sql:3``)."""
    if st.file is None:
        return "-"
    file = st.file.removeprefix(folder + "/")
    return f"{file}:{st.line}" if st.line is not None else file


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _scope_rows(bundle: Bundle) -> list[tuple[str, str]]:
    scope = bundle.declaration.scope.model_dump(mode="json")
    rows = []
    for key, value in scope.items():
        if isinstance(value, list) and value:
            rows.append((key, ", ".join(_code(v) for v in value)))
    return rows


def plan_markdown(
    bundle: Bundle, plan: Plan, *, estimates: dict[str, int | None] | None = None, conn_id: str | None = None
) -> str:
    """The plan as GitHub-flavoured markdown (one comment)."""
    root = bundle_label(bundle)
    hard = [f for f in plan.findings if f.tier == "hard_fail"]
    review = [f for f in plan.findings if f.tier == "review_required"]
    verdict = (
        f"❌ **refused**: {len(hard)} hard failure(s)"
        if plan.refused
        else (f"⚠️ needs review: {len(review)} finding(s)" if review else "✅ **ok**")
    )
    out = [
        f"### Migration plan `{plan.migration_id}` ({plan.store})",
        "",
        f"> {_cell(bundle.declaration.intent)}",
        "",
        f"Static plan: {verdict} · {len(plan.statements)} statement(s) · bundle `{root}` · "
        f"sha256 `{bundle.digest[:16]}`",
        "",
    ]
    out += _statements_section(plan, display(bundle.root))
    out += _tables_section(plan, estimates, conn_id)
    out += _scope_section(bundle, plan)
    out += _findings_section(plan)
    out += [
        "",
        "<sub>kfm-migrations plan --format markdown · the static plan is advisory; the observed diff at "
        "run time decides</sub>",
        "",
    ]
    return "\n".join(out)


def bundle_label(bundle: Bundle) -> str:
    """``<type>/<id>``: how the bundle is named inside its migrations root."""
    return f"{bundle.type}/{bundle.root.name}"


def _statements_section(plan: Plan, root: str) -> list[str]:
    out = ["#### Statements", ""]
    if not plan.statements:
        return [*out, "_No statements._", ""]
    has_lock = any(st.lock for st in plan.statements)
    head = "| # | where | statement | targets |" + (" lock |" if has_lock else "") + " in transaction |"
    out += [head, "|" + "---|" * (head.count("|") - 1)]
    for st in plan.statements:
        targets = ", ".join(_code(t) for t in st.targets) or "—"
        row = f"| {st.index} | {_code(_where(st, root))} | {st.kind} {_code(st.statement)} | {targets} |"
        if has_lock:
            row += f" {_cell(st.lock or '—')} |"
        row += f" {'yes' if st.transactional else '**no**'} |"
        out.append(row)
    out.append("")
    texts = [st for st in plan.statements if st.text]
    if texts:
        out += ["<details open><summary>Statement text</summary>", ""]
        for st in texts:
            assert st.text is not None
            lang = _LANG.get(PurePosixPath(st.file or "").suffix.lower(), "")
            body = trimmed(st.text)
            fence = _fence(body)
            note = f" — {_cell(st.note)}" if st.note else ""
            out += [f"**{st.index}.** {_code(_where(st, root))}{note}", "", f"{fence}{lang}", body, fence, ""]
        out += ["</details>", ""]
    return out


def _tables_section(plan: Plan, estimates: dict[str, int | None] | None, conn_id: str | None) -> list[str]:
    names = touched_names(plan)
    if not names:
        return []
    out = ["#### Tables touched", ""]
    if estimates is None:
        hint = (
            "this store kind has no row estimates"
            if conn_id
            else "run `plan --format markdown --conn-id ID` for estimated rows (read-only)"
        )
        return [*out, *(f"- {_code(n)}" for n in names), "", f"_{hint}._", ""]
    out += ["| table | estimated rows |", "|---|---:|"]
    for n in names:
        if n not in estimates:
            continue
        rows = estimates[n]
        out.append(f"| {_code(n)} | {'never analysed' if rows is None else f'{rows:,}'} |")
    missing = [n for n in names if n not in estimates]
    out.append("")
    if missing:
        out += [f"Not a table there (an index, a new object, or absent): {', '.join(_code(n) for n in missing)}", ""]
    out += [f"_Estimates from the planner's statistics on `{conn_id}` (`pg_class.reltuples`), read-only._", ""]
    return out


def _scope_section(bundle: Bundle, plan: Plan) -> list[str]:
    out = ["#### Scope: declared against detected", "", "| | |", "|---|---|"]
    for key, value in _scope_rows(bundle):
        out.append(f"| declared `{key}` | {value} |")
    detected = sorted({t for st in plan.statements for t in st.targets})
    out.append(f"| detected targets | {', '.join(_code(t) for t in detected) or '—'} |")
    outside = sorted({f.object for f in plan.findings if f.tier == "hard_fail" and f.object})
    if outside:
        out.append(f"| refused targets | {', '.join(_code(t) for t in outside)} |")
    limits = bundle.declaration.limits.model_dump(mode="json")
    if limits:
        out.append(f"| declared limits | {', '.join(f'{k}: {v}' for k, v in limits.items())} |")
    return [*out, ""]


def _findings_section(plan: Plan) -> list[str]:
    out = ["#### Findings", ""]
    if not plan.findings:
        return [*out, "_None._", ""]
    out += ["| tier | code | object | message |", "|---|---|---|---|"]
    for f in sorted(plan.findings, key=lambda f: _TIER_ORDER.get(f.tier, 9)):
        tier = f"**{f.tier}**" if f.tier == "hard_fail" else f.tier
        out.append(f"| {tier} | `{f.code}` | {_cell(f.object or '—')} | {_cell(f.message)} |")
    return [*out, ""]
