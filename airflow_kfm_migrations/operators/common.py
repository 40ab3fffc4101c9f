"""Glue shared by the operators: settings, bundle/conn resolution, artifact storage, logs.

Operators stay thin: each resolves its connection through the provider hook, calls one
core step, writes artifacts and pushes only digests and small summaries to XCom.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_kfm_migrations.config import Settings
from airflow_kfm_migrations.config import settings as config_settings

if TYPE_CHECKING:  # imported when used: a DAG file parse reads settings only
    from airflow_kfm_migrations.contracts.models import RegistryEntry
    from airflow_kfm_migrations.declaration.bundle import Bundle


def airflow_option(key: str) -> str | None:
    """One option of Airflow's ``[kfm_migrations]`` section, or None."""
    try:
        from airflow_kfm_migrations.operators.compat import conf

        value = conf.get("kfm_migrations", key, fallback=None)
    except Exception:  # broad on purpose: no Airflow config here (plain Python); the defaults apply
        return None
    return str(value) if value else None


def settings() -> Settings:
    """The settings in force, ``KFM_*`` first, then ``[kfm_migrations]``, then defaults."""
    return config_settings(airflow_option)


def resolve(migration_id: str) -> tuple[Settings, RegistryEntry | None, Bundle]:
    from airflow_kfm_migrations.declaration.bundle import load_bundle
    from airflow_kfm_migrations.declaration.registry import find_entry, load_registry

    s = settings()
    entry = find_entry(load_registry(s.registry_path), migration_id) if s.registry_path.exists() else None
    folder = s.bundles_root / entry.path if entry else s.bundles_root / migration_id
    return s, entry, load_bundle(folder)


def conn_id_for(entry: RegistryEntry | None, bundle: Bundle, override: str | None = None) -> str:
    conn = override or (entry.conn_id if entry else None) or bundle.declaration.runner.conn_id
    if not conn:
        from airflow_kfm_migrations.errors import RefusedError

        raise RefusedError(f"{bundle.migration_id}: no Airflow connection id (registry conn_id or runner.conn_id)")
    return conn


def local_artifacts(s: Settings, bundle: Bundle) -> Path:
    """Where the core writes: a local folder. Remote roots are staged here and uploaded."""
    root = s.artifacts_root
    if not root:
        return bundle.root
    if "://" in root and not root.startswith("file://"):
        base = Path(os.environ.get("AIRFLOW_HOME", Path.home() / "airflow")) / "kfm-staging"
        return base / bundle.migration_id
    return Path(root.removeprefix("file://")) / bundle.migration_id


def upload(s: Settings, bundle: Bundle, local: Path) -> str:
    """Copy the run's artifacts to ``artifacts_root`` through ObjectStoragePath (s3://, gs://...)."""
    root = s.artifacts_root
    if not root or "://" not in root or root.startswith("file://"):
        return str(local)
    from airflow.sdk import ObjectStoragePath

    dest = ObjectStoragePath(root) / bundle.migration_id
    for f in sorted(local.rglob("*")):
        if f.is_file():
            target = dest / f.relative_to(local).as_posix()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    return str(dest)


def table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """A plain-text table for task logs (rich, without colour codes)."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for h in header:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    buf = StringIO()
    Console(file=buf, width=140, color_system=None).print(t)
    return buf.getvalue()


def summary_tables(result: Any) -> str:
    parts = []
    if result.plan is not None:
        parts.append(
            table(
                "plan",
                [(str(p.index), p.kind, p.statement, ", ".join(p.targets)) for p in result.plan.statements],
                ("#", "kind", "statement", "targets"),
            )
        )
    if result.summary is not None:
        parts.append(
            table(
                "limits",
                [
                    (lc.name, str(lc.declared), str(lc.observed), "ok" if lc.ok else "EXCEEDED")
                    for lc in result.summary.limits
                ],
                ("limit", "declared", "observed", ""),
            )
        )
        parts.append(
            table(
                "findings",
                [(f.tier, f.code, f.object or "", f.message) for f in result.summary.findings],
                ("tier", "code", "object", "message"),
            )
        )
    parts.append(f"verdict: {result.status}" + (f" ({result.reason})" if result.reason else ""))
    return "\n".join(parts)
