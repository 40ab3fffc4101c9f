"""The gate's judgement of a run's policy-enforcement posture (the ``posture`` fact that
``posture.collect`` gathers, and the reads ``reads`` judges).

review_required, unless an approval covers ``review:<code>`` (or ``review:<code>:<object>``):
``trigger_dropped``, ``trigger_disabled``, ``rule_dropped``, ``rule_disabled``,
``policy_loosened``, ``policy_permissive_added``, ``security_definer_added``,
``owner_changed``, ``grant_widened`` (functions, types, columns), ``default_privileges_widened``,
``body_dynamic_sql``, ``body_unanalysable``.

hard_fail, whatever the approvals: ``body_references_guarded``: code the run created or
changed (a function, procedure, trigger and its function, view, rule, policy expression,
column default or check constraint, and the user-defined functions they call) refers to a
forbidden or protected relation, schema or function.

**When a policy is loosened.** A policy is compared with what it was (same table and
name). A change is *narrowing* only when it provably admits no more rows for no more roles:

- a PERMISSIVE policy (rows admitted are OR-ed across permissive policies): its roles are
  the same or fewer (or it applied to PUBLIC before), its command is the same (or was
  ALL), and its USING and its WITH CHECK (USING where there is no WITH CHECK) keep every
  AND-ed condition they had, adding others at most;
- a RESTRICTIVE policy (AND-ed): its roles are the same or more (or now PUBLIC), its
  command the same (or now ALL), and its expressions keep every AND-ed condition;
- PERMISSIVE becoming RESTRICTIVE narrows; RESTRICTIVE becoming PERMISSIVE loosens.

Conditions are compared as the server writes them (``pg_get_expr``) and then parsed, each
AND-ed condition in one canonical form, so only rewriting a condition (even into an
equivalent one) counts as a change; an expression that does not parse counts as loosened.
Every other change is ``policy_loosened``, whether the table has RLS enabled or not.
"""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, Finding, PostgisDeclaration
from airflow_kfm_migrations.stores.postgis.bodies import conjuncts
from airflow_kfm_migrations.stores.postgis.scope import PgScope


def posture_findings(decl: PostgisDeclaration, pre: Baseline, facts: dict[str, Any]) -> list[Finding]:
    """Findings from the ``posture`` fact (none when the session gathered none)."""
    posture = facts.get("posture")
    if not posture:
        return []
    scope = PgScope(decl)
    out: list[Finding] = []
    out += _switch_findings(posture.get("switches", {}))
    out += _policy_findings(posture.get("policies", {}), pre.extra.get("rls", {}))
    owners = posture.get("owners", {})
    for oid_id, how in owners.get("security_definer", []):
        out.append(
            Finding(
                code="security_definer_added",
                tier="review_required",
                object=oid_id,
                message="function created SECURITY DEFINER" if how == "added" else "function made SECURITY DEFINER",
            )
        )
    for oid_id, was, now in owners.get("owners", []):
        out.append(
            Finding(
                code="owner_changed",
                tier="review_required",
                object=oid_id,
                message=f"owner changed from {was} to {now}" if was else f"created owned by {now}, not the run's role",
            )
        )
    for key, (before, after) in sorted(posture.get("acls", {}).items()):
        widened = acl_widened(key, before, after)
        if not widened:
            continue
        if key.startswith("default_acl:"):
            out.append(
                Finding(
                    code="default_privileges_widened",
                    tier="review_required",
                    object=key,
                    message=f"default privileges of future objects widened: {widened}",
                )
            )
        else:
            out.append(
                Finding(
                    code="grant_widened", tier="review_required", object=key, message=f"privileges widened: {widened}"
                )
            )
    for body in posture.get("bodies", []):
        out += _body_findings(scope, body)
    return out


def _switch_findings(switches: dict[str, list[list[str]]]) -> list[Finding]:
    out = []
    for oid_id, _was in switches.get("dropped", []):
        kind = "rule" if oid_id.startswith("rule:") else "trigger"
        out.append(
            Finding(
                code="rule_dropped" if kind == "rule" else "trigger_dropped",
                tier="review_required",
                object=oid_id,
                message=f"{kind} dropped from a table that is still there",
            )
        )
    for oid_id, was, now in switches.get("disabled", []):
        kind = "rule" if oid_id.startswith("rule:") else "trigger"
        out.append(
            Finding(
                code="rule_disabled" if kind == "rule" else "trigger_disabled",
                tier="review_required",
                object=oid_id,
                message=f"{kind} fires in fewer sessions than before (enabled {_ENABLED[was]} -> {_ENABLED[now]})",
            )
        )
    return out


_ENABLED = {"O": "origin", "A": "always", "R": "replica only", "D": "disabled"}
_COMMANDS = {"*": "ALL", "r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def _policy_findings(policies: dict[str, dict[str, Any]], rls_before: dict[str, list[bool]]) -> list[Finding]:
    out = []
    for pid, change in sorted(policies.items()):
        before, after = change.get("pre"), change.get("post")
        if after is None:
            continue  # dropped: policy_dropped
        if before is None:
            if after["permissive"] and rls_before.get(after["table"], [False])[0]:
                out.append(
                    Finding(
                        code="policy_permissive_added",
                        tier="review_required",
                        object=pid,
                        message=f"PERMISSIVE policy for {_COMMANDS.get(after['cmd'], after['cmd'])} to "
                        f"{', '.join(after['roles'])} added to {after['table']}, which has row-level security: "
                        "it admits rows the other policies did not",
                    )
                )
            continue
        why = policy_loosened(before, after)
        if why:
            out.append(Finding(code="policy_loosened", tier="review_required", object=pid, message=f"policy {why}"))
    return out


def policy_loosened(before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """Why ``after`` may admit more rows or roles than ``before``; None when it provably
    does not (the rule is in this module's docstring)."""
    if before["permissive"] and not after["permissive"]:
        return None
    if not before["permissive"] and after["permissive"]:
        return "changed from RESTRICTIVE to PERMISSIVE"
    permissive = after["permissive"]
    old_roles, new_roles = set(before["roles"]), set(after["roles"])
    if permissive and not ("public" in old_roles or new_roles <= old_roles):
        return f"now applies to more roles ({', '.join(sorted(new_roles - old_roles))})"
    if not permissive and not ("public" in new_roles or new_roles >= old_roles):
        return f"no longer restricts roles {', '.join(sorted(old_roles - new_roles))}"
    old_cmd, new_cmd = before["cmd"], after["cmd"]
    wider_cmd = old_cmd if permissive else new_cmd
    if old_cmd != new_cmd and wider_cmd != "*":
        return f"command changed from {_COMMANDS.get(old_cmd, old_cmd)} to {_COMMANDS.get(new_cmd, new_cmd)}"
    for label, old, new in (
        ("USING", before["using"], after["using"]),
        (
            "WITH CHECK",
            before["check"] if before["check"] is not None else before["using"],
            after["check"] if after["check"] is not None else after["using"],
        ),
    ):
        a, b = conjuncts(old), conjuncts(new)
        if a is None or b is None:
            return f"{label} expression could not be compared"
        if not b >= a:
            n = len(a - b)
            return f"{label} expression lost {n} of its AND-ed conditions (or rewrote {'them' if n > 1 else 'it'})"
    return None


def _privileges(acl: str | None) -> dict[str, set[str]]:
    """aclitem[] text -> grantee (PUBLIC for the empty one) -> privileges, a grant option
    as the letter and a star ('r', 'r*')."""
    out: dict[str, set[str]] = {}
    if not acl:
        return out
    for item in acl.strip("{}").split(","):
        item = item.strip().strip('"')
        if not item:
            continue
        grantee, _, rest = item.partition("=")
        privs, _, _grantor = rest.partition("/")
        got = out.setdefault(grantee or "PUBLIC", set())
        for i, ch in enumerate(privs):
            if ch == "*":
                continue
            got.add(ch)
            if i + 1 < len(privs) and privs[i + 1] == "*":
                got.add(ch + "*")
    return out


def _owners_of(acl: str | None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for item in (acl or "").strip("{}").split(","):
        grantee, _, rest = item.strip().strip('"').partition("=")
        if grantee and rest.partition("/")[2] == grantee:
            out.setdefault(grantee, set()).update(_privileges("{" + item + "}").get(grantee, set()))
    return out


def _defaults(key: str) -> dict[str, set[str]]:
    """What PUBLIC may do with an object whose ACL is NULL (the built-in defaults)."""
    kind = key.split(":", 1)[0]
    if kind == "default_acl":
        kind = {"f": "function", "T": "type"}.get(key.rsplit(".", 1)[-1], "")
    if kind == "function":
        return {"PUBLIC": {"X"}}
    if kind == "type":
        return {"PUBLIC": {"U"}}
    return {}


def acl_widened(key: str, before: str | None, after: str | None) -> str:
    """Privileges ``after`` gives that ``before`` did not (None: the built-in defaults, the
    owner keeping what it has), as 'grantee:letters'."""
    if before is None:
        base = _defaults(key)
        for g, p in _owners_of(after).items():
            base.setdefault(g, set()).update(p)
    else:
        base = _privileges(before)
    now = _privileges(after) if after is not None else _defaults(key)
    widened = []
    for g, p in sorted(now.items()):
        extra = p - base.get(g, set())
        if extra:
            widened.append(f"{g}:{''.join(sorted(extra))}")
    return ", ".join(widened)


def _body_findings(scope: PgScope, body: dict[str, Any]) -> list[Finding]:
    obj = body["object"]
    out = []
    refs: dict[str, list[str]] = {}

    def note(target: str, what: str, via: str | None) -> None:
        refs.setdefault(f"{what} {target}", []).append(f" (through {via})" if via else "")

    for s, n, via in body.get("relations", []):
        if scope.forbidden(s, n):
            note(f"{s}.{n}", "forbidden", via)
        elif scope.protected(s, n):
            note(f"{s}.{n}", "protected", via)
    for s, n, via in body.get("functions", []):
        if scope.forbidden(s, n):
            note(f"function {s}.{n}", "forbidden", via)
        elif scope.protected(s, n):
            note(f"function {s}.{n}", "protected", via)
    for s, via in body.get("schemas", []):
        if scope.forbidden(s, None):
            note(f"schema {s}", "forbidden", via)
        elif scope.protected(s, None):
            note(f"schema {s}", "protected", via)
    for what, vias in sorted(refs.items()):
        out.append(
            Finding(
                code="body_references_guarded",
                tier="hard_fail",
                object=obj,
                message=f"created or changed code refers to {what}{sorted(vias)[0]}: it would read or write it "
                "whenever it runs",
            )
        )
    dynamic = sorted({f"{d}{f' in {via}' if via else ''}" for d, via in body.get("dynamic", [])})
    if dynamic:
        out.append(
            Finding(
                code="body_dynamic_sql",
                tier="review_required",
                object=obj,
                message=f"created or changed code runs SQL built at run time, which cannot be analysed: "
                f"{'; '.join(dynamic[:3])}",
            )
        )
    unread = sorted({f"{r}{f' ({via})' if via else ''}" for r, via in body.get("unread", [])})
    if unread:
        out.append(
            Finding(
                code="body_unanalysable",
                tier="review_required",
                object=obj,
                message=f"created or changed code cannot be analysed: {'; '.join(unread[:3])}",
            )
        )
    return out
