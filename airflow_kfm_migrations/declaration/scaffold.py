"""``kfm-migrations new``: scaffold the next free migration id for today."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path

import yaml

from airflow_kfm_migrations.contracts.models import TYPE_PREFIX
from airflow_kfm_migrations.declaration.registry import REGISTRY_REL, add_entry, load_json_strict
from airflow_kfm_migrations.errors import InputError

FORWARD = {
    "postgis": (
        "forward.sql",
        "-- Forward change. Runs in one transaction under the governed runner.\n"
        "SET search_path = public;\n-- e.g. CREATE INDEX ... ON my_table (...);\n",
    ),
    "search": ("forward.json", '{\n  "actions": []\n}\n'),
    "graph": (
        "forward.cypher",
        "// Forward change. Schema and data statements run in separate transactions.\n"
        "RETURN 'replace this placeholder with the forward change' AS todo;\n",
    ),
}
ROLLBACK = {
    "postgis": (
        "rollback.sql",
        "-- Undo forward.sql exactly; verified against the pre-baseline.\n"
        "SET search_path = public;\n-- e.g. DROP INDEX IF EXISTS ...;\n",
    ),
    "search": ("rollback.json", '{\n  "actions": []\n}\n'),
    "graph": (
        "rollback.cypher",
        "// Undo forward.cypher exactly; verified against the pre-baseline.\n"
        "RETURN 'replace this placeholder with the rollback' AS todo;\n",
    ),
}
SCOPE = {
    "postgis": {
        "allowed_schemas": ["public"],
        "allowed_tables": [],
        "forbidden_schemas": ["kfm_governance"],
        "forbidden_tables": [],
        "protected_schemas": [],
        "protected_tables": [],
    },
    "search": {
        "allowed_index_patterns": [],
        "forbidden_index_patterns": [".kfm-governance*"],
        "allowed_aliases": [],
        "forbidden_aliases": [],
        "protected_indices": [],
    },
    "graph": {
        "allowed_labels": [],
        "forbidden_labels": ["KfmMigration", "KfmLock"],
        "allowed_relationship_types": [],
        "forbidden_relationship_types": [],
        "protected_labels": [],
    },
}
LIMITS = {
    "postgis": {
        "max_table_count_touched": 1,
        "max_index_count_delta": 0,
        "max_row_backfill": 0,
        "max_constraint_delta": 0,
    },
    "search": {"max_index_count_delta": 1, "max_docs_reindexed": 0},
    "graph": {"max_nodes_changed": 0, "max_relationships_changed": 0, "max_schema_delta": 0},
}
CONN = {"postgis": "kfm_postgis", "search": "kfm_search", "graph": "kfm_graph"}
TOOL = {"postgis": "psycopg", "search": "opensearch-py", "graph": "neo4j"}

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
    if mtype not in FORWARD:
        raise InputError("-", "--type", "must be postgis, search or graph")
    if not root.is_dir():
        raise InputError(str(root), "--root", "migrations root does not exist")
    mid = next_id(root, mtype, datetime.now(UTC).date())
    folder = root / mtype / mid
    intent = intent or f"Describe why {mid} changes the {mtype} store"
    if len(intent) < 10:
        raise InputError("-", "--intent", "say what the migration does in at least 10 characters")
    fwd_name, fwd_body = FORWARD[mtype]
    rb_name, rb_body = ROLLBACK[mtype]
    declaration = {
        "migration_id": mid,
        "type": mtype,
        "intent": intent,
        "scope": SCOPE[mtype],
        "limits": LIMITS[mtype],
        "requires_rollback": True,
        "approvals": {"required_reviewers": ["kfm-platform"], "change_class": "standard"},
        "runner": {"tool": TOOL[mtype], "conn_id": CONN[mtype], "environment": []},
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
            "conn_id": CONN[mtype],
            "events": [
                {"status": "draft", "at": datetime.now(UTC).isoformat(), "actor": actor, "ref": "kfm-migrations new"}
            ],
        },
    )
    return folder
