"""``kfm-migrations new``: scaffold the next free migration id for today.

It needs a migrations root with a registry (``kfm-migrations init`` makes one): ``new`` in
a folder without one refuses with one line rather than start a second, unnoticed root
(a mistyped ``--root``). Nothing is left half-made: the bundle is written into a hidden
folder and moved into place, and removed again if its registry entry cannot be added.
"""

from __future__ import annotations

import re
import shutil
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import yaml

from airflow_kfm_migrations.declaration.bundle import display
from airflow_kfm_migrations.declaration.registry import REGISTRY_REL, add_entry, load_json_strict, load_registry
from airflow_kfm_migrations.errors import InputError
from airflow_kfm_migrations.kinds import KINDS, TYPE_PREFIX

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
        raise InputError(
            display(root), "--root", f"no migrations root here; create one with: kfm-migrations init {root}"
        )
    if not (root / REGISTRY_REL).is_file():
        raise InputError(
            display(root / REGISTRY_REL), "--root", f"no registry here; create one with: kfm-migrations init {root}"
        )
    load_registry(root / REGISTRY_REL)  # a broken registry refuses before anything is written
    if intent is not None and len(intent) < 10:
        raise InputError("-", "--intent", "say what the migration does in at least 10 characters")
    mid = next_id(root, mtype, datetime.now(UTC).date())
    folder = root / mtype / mid
    intent = intent or f"Describe why {mid} changes the {mtype} store"
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
    files = {
        "migration.yml": yaml.safe_dump(declaration, sort_keys=False),
        fwd_name: fwd_body,
        rb_name: rb_body,
        "notes.md": NOTES.format(mid=mid, intent=intent),
    }
    entry = {
        "migration_id": mid,
        "type": mtype,
        "path": f"{mtype}/{mid}",
        "owner": owner,
        "status": "draft",
        "conn_id": kind.default_conn_id,
        "events": [
            {"status": "draft", "at": datetime.now(UTC).isoformat(), "actor": actor, "ref": "kfm-migrations new"}
        ],
    }
    type_dir = root / mtype
    made_type_dir = not type_dir.is_dir()
    try:
        type_dir.mkdir(exist_ok=True)
        _place(folder, files)
    except OSError as exc:
        if made_type_dir:
            shutil.rmtree(type_dir, ignore_errors=True)
        raise InputError(display(folder), "-", f"cannot create the bundle: {exc.strerror or exc}") from None
    try:
        add_entry(root / REGISTRY_REL, entry)
    except BaseException as exc:
        shutil.rmtree(folder, ignore_errors=True)
        if made_type_dir:
            shutil.rmtree(type_dir, ignore_errors=True)
        if isinstance(exc, OSError):
            raise InputError(
                display(root / REGISTRY_REL), "-", f"cannot add the entry: {exc.strerror or exc}"
            ) from None
        raise
    return folder


def _place(folder: Path, files: dict[str, str]) -> None:
    """Write ``files`` into a hidden folder beside ``folder``, then move it into place."""
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # the mode the umask gives, as the moved folder keeps it
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        if folder.exists():
            raise FileExistsError(17, "the bundle folder already exists")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
