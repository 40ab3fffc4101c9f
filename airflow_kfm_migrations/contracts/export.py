"""Write the generated JSON Schemas into the package and into migrations/registry/schemas.

python -m airflow_kfm_migrations.contracts.export [--check] [REPO_ROOT]
"""

from __future__ import annotations

import sys
from pathlib import Path

from airflow_kfm_migrations.contracts import CONTRACTS, schema_text


def targets(repo_root: Path) -> list[Path]:
    return [Path(__file__).parent / "schemas", repo_root / "migrations" / "registry" / "schemas"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    root = Path(args[0]) if args else Path.cwd()
    stale = []
    for folder in targets(root):
        folder.mkdir(parents=True, exist_ok=True)
        for name in CONTRACTS:
            path = folder / f"{name}.schema.json"
            text = schema_text(name)
            if path.exists() and path.read_text(encoding="utf-8") == text:
                continue
            stale.append(path)
            if not check:
                path.write_text(text, encoding="utf-8")
    for path in stale:
        print(("stale: " if check else "wrote: ") + str(path))
    return 1 if (check and stale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
