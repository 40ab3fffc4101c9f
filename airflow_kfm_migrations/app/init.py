"""``kfm-migrations init [ROOT]``: a new migrations root, ready for ``new`` and ``validate``.

It creates what the contract's layout needs and nothing else:

    ROOT/
      README.md                      what goes where, and the next commands
      registry/migrations.v1.json    the registry, empty and schema-valid
      registry/schemas/*.json        the JSON Schemas of every contract (for editors and CI)
      postgis/ search/ graph/        one folder per store kind

A registry that is already there is never overwritten (exit 2, nothing written). Files
that exist (a README) are kept. When anything fails, what this call created is removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from airflow_kfm_migrations.contracts import CONTRACTS, schema_text
from airflow_kfm_migrations.declaration.bundle import display
from airflow_kfm_migrations.declaration.registry import REGISTRY_REL, parse_registry
from airflow_kfm_migrations.errors import InputError
from airflow_kfm_migrations.kinds import KINDS

EMPTY_REGISTRY = {"schema_version": "migrations.v1", "migrations": []}

README = """# Migrations

Governed migrations for the rebuildable stores, run by `kfm-migrations` (CLI) or the
`kfm_migration__<id>` Airflow DAGs.

```
registry/migrations.v1.json   every migration: id, type, path, owner, status and its events
registry/schemas/             the JSON Schemas of the declaration, the registry and the records
{folders}
```

Next:

```sh
kfm-migrations new --root {root} --type postgis --intent "What the change does, and why"
kfm-migrations validate {root}
kfm-migrations plan {root}/postgis/<ID> --format markdown
```
"""


def init_root(root: Path) -> list[Path]:
    """Create the migrations root ``root``; returns what was created, registry last."""
    registry = root / REGISTRY_REL
    if registry.exists() or registry.is_symlink():
        raise InputError(display(registry), "-", "a registry is already there; init never overwrites one")
    if root.exists() and not root.is_dir():
        raise InputError(display(root), "-", "exists and is not a folder")
    parse_registry(EMPTY_REGISTRY, display(registry))  # schema-valid, or a bug
    created: list[Path] = []

    def mkdir(path: Path) -> None:
        if not path.is_dir():
            path.mkdir()
            created.append(path)

    def write(path: Path, text: str) -> None:
        if not path.exists():
            with path.open("x", encoding="utf-8") as fh:
                created.append(path)
                fh.write(text)

    try:
        for parent in reversed([root, *root.parents]):
            if not parent.exists():
                mkdir(parent)
        mkdir(root / "registry")
        mkdir(root / "registry" / "schemas")
        for name in CONTRACTS:
            write(root / "registry" / "schemas" / f"{name}.schema.json", schema_text(name))
        for kind in KINDS:
            mkdir(root / kind)
        folders = "\n".join(f"{k + '/':<30}{k} migrations: {k}/<ID>/ (kfm-migrations new --type {k})" for k in KINDS)
        write(root / "README.md", README.format(folders=folders, root=display(root)))
        write(registry, json.dumps(EMPTY_REGISTRY, indent=2) + "\n")
    except OSError as exc:
        _undo(created)
        raise InputError(display(root), "-", f"cannot create the migrations root: {exc.strerror or exc}") from None
    return created


def _undo(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            pass
