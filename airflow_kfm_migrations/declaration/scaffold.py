"""``kfm-migrations new``: scaffold the next free migration id for today."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import yaml

from airflow_kfm_migrations.declaration.registry import REGISTRY_REL, add_entry, load_json_strict
from airflow_kfm_migrations.errors import InputError
from airflow_kfm_migrations.stores.kinds import KINDS, TYPE_PREFIX

NOTES = """# {mid}

## Intent
{intent}

## Risks
- What could go wrong, and how the declared scope and limits bound it.

## Rollback verification
- After rollback the schema and protected fingerprints must equal the pre-baseline.

## Review guidance
- What reviewers should look at in diffs/summary.json and diffs/touched.csv.
"""


def next_id(root: Path, mtype: str, today: date) -> str:
    prefix = f"{TYPE_PREFIX[mtype]}-MIG-{today.isoformat()}-"
    taken: set[int] = set()
    rx = re.compile(re.escape(prefix) + r"([0-9]{2})$")
    reg_path = root / REGISTRY_REL
    if reg_path.exists():
        data = load_json_strict(reg_path)
        for entry in data.get("migrations", []) if isinstance(data, dict) else []:
            m = rx.match(str(entry.get("migration_id", "")))
            if m:
                taken.add(int(m.group(1)))
    type_dir = root / mtype
    if type_dir.is_dir():
        for p in type_dir.iterdir():
            m = rx.match(p.name)
            if m:
                taken.add(int(m.group(1)))
    n = next(i for i in range(1, 100) if i not in taken) if len(taken) < 99 else None
    if n is None:
        raise InputError(str(root), "--type", f"no free id left for {prefix}NN today")
    return f"{prefix}{n:02d}"


def scaffold(root: Path, mtype: str, intent: str | None, owner: str, actor: str) -> Path:
    if mtype not in KINDS:
        raise InputError("-", "--type", "must be postgis, search or graph")
    if not root.is_dir():
        raise InputError(str(root), "--root", "migrations root does not exist")
    mid = next_id(root, mtype, datetime.now(UTC).date())
    folder = root / mtype / mid
    intent = intent or f"Describe why {mid} changes the {mtype} store"
    if len(intent) < 10:
        raise InputError("-", "--intent", "say what the migration does in at least 10 characters")
    kind = KINDS[mtype]
    fwd_name, fwd_body = kind.forward
    rb_name, rb_body = kind.rollback
    declaration = {
        "migration_id": mid,
        "type": mtype,
        "intent": intent,
        "scope": dict(kind.default_scope),
        "limits": dict(kind.default_limits),
        "requires_rollback": True,
        "approvals": {"required_reviewers": ["kfm-platform"], "change_class": "standard"},
        "runner": {"tool": kind.tool, "conn_id": kind.default_conn_id, "environment": []},
        "artifacts": {"forward": [fwd_name], "rollback": [rb_name]},
    }
    folder.mkdir(parents=True, exist_ok=False)
    (folder / "migration.yml").write_text(yaml.safe_dump(declaration, sort_keys=False), encoding="utf-8")
    (folder / fwd_name).write_text(fwd_body, encoding="utf-8")
    (folder / rb_name).write_text(rb_body, encoding="utf-8")
    (folder / "notes.md").write_text(NOTES.format(mid=mid, intent=intent), encoding="utf-8")
    add_entry(
        root / REGISTRY_REL,
        {
            "migration_id": mid,
            "type": mtype,
            "path": f"{mtype}/{mid}",
            "owner": owner,
            "status": "draft",
            "conn_id": kind.default_conn_id,
            "events": [
                {"status": "draft", "at": datetime.now(UTC).isoformat(), "actor": actor, "ref": "kfm-migrations new"}
            ],
        },
    )
    return folder
