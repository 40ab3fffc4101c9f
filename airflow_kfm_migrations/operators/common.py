"""Glue shared by the operators: settings, bundle/conn resolution, artifact storage, logs.

Operators stay thin: each resolves its connection through the provider hook, calls one
core step, writes artifacts and pushes only digests and small summaries to XCom.
"""

from __future__ import annotations

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


def settings(
    *,
    bundles_root: str | Path | None = None,
    registry_path: str | Path | None = None,
    artifacts_root: str | None = None,
    fail_on_drift: bool | None = None,
) -> Settings:
    """The settings in force: an argument given here (an operator's, ``build_dags``'s) first,
    then ``KFM_*``, then ``[kfm_migrations]``, then the defaults.

    A ``bundles_root`` given here brings its own registry, ``<bundles_root>/registry/
    migrations.v1.json``, unless ``registry_path`` is given too: a configured registry belongs
    to the configured root."""
    import dataclasses

    from airflow_kfm_migrations.config import REGISTRY_REL

    s = config_settings(airflow_option)
    changes: dict[str, Any] = {}
    if bundles_root:
        changes["bundles_root"] = Path(bundles_root).resolve()
        changes["registry_path"] = changes["bundles_root"] / REGISTRY_REL
    if registry_path:
        changes["registry_path"] = Path(registry_path)
    if artifacts_root:
        changes["artifacts_root"] = str(artifacts_root)
    if fail_on_drift is not None:
        changes["fail_on_drift"] = bool(fail_on_drift)
    return dataclasses.replace(s, **changes) if changes else s


_VARIABLES = {"bundles_root": "KFM_BUNDLES_ROOT", "registry_path": "KFM_REGISTRY_PATH"}
FIX_ROOT = (
    "set [kfm_migrations] bundles_root, KFM_BUNDLES_ROOT or the bundles_root= argument "
    "to the folder that holds registry/migrations.v1.json"
)


def source_of(name: str, given: bool) -> str:
    """Where the value of ``bundles_root`` or ``registry_path`` in force came from."""
    import os

    if given:
        return f"the {name}= argument"
    variable = _VARIABLES[name]
    if os.environ.get(variable):
        return variable
    if airflow_option(name):
        return f"[kfm_migrations] {name}"
    return f"the default: neither [kfm_migrations] {name} nor {variable} is set"


def roots_problem(
    s: Settings, *, root_given: bool = False, registry_given: bool = False, migration_id: str | None = None
) -> str | None:
    """One line naming the setting to fix when ``bundles_root`` (or a ``registry_path`` set
    explicitly) does not lead to a registry; None when it does. With ``migration_id``, a
    bundle folder ``<bundles_root>/<migration_id>`` outside any registry is enough (dev runs)."""
    if not s.bundles_root.is_dir():
        return f"bundles_root {s.bundles_root} is not a folder ({source_of('bundles_root', root_given)}): {FIX_ROOT}"
    if s.registry_path.is_file():
        return None
    import os

    explicit = registry_given or (
        not root_given and bool(os.environ.get("KFM_REGISTRY_PATH") or airflow_option("registry_path"))
    )
    if explicit:
        return (
            f"registry_path {s.registry_path} is not a file ({source_of('registry_path', registry_given)}): set "
            "[kfm_migrations] registry_path, KFM_REGISTRY_PATH or the registry_path= argument to the registry "
            "file, or leave it unset for <bundles_root>/registry/migrations.v1.json"
        )
    if migration_id and (s.bundles_root / migration_id).is_dir():
        return None
    return (
        f"bundles_root {s.bundles_root} has no registry/migrations.v1.json "
        f"({source_of('bundles_root', root_given)}): {FIX_ROOT}"
    )


def resolve(
    migration_id: str,
    *,
    bundles_root: str | Path | None = None,
    registry_path: str | Path | None = None,
    artifacts_root: str | None = None,
    fail_on_drift: bool | None = None,
) -> tuple[Settings, RegistryEntry | None, Bundle]:
    """The settings in force (arguments first, see :func:`settings`), the migration's registry
    entry (None outside any registry) and its bundle. A ``bundles_root`` or ``registry_path``
    that leads nowhere raises ``RefusedError`` with one line naming the setting to fix."""
    from airflow_kfm_migrations.declaration.bundle import load_bundle
    from airflow_kfm_migrations.declaration.registry import find_entry, load_registry
    from airflow_kfm_migrations.errors import RefusedError

    s = settings(
        bundles_root=bundles_root,
        registry_path=registry_path,
        artifacts_root=artifacts_root,
        fail_on_drift=fail_on_drift,
    )
    problem = roots_problem(
        s, root_given=bool(bundles_root), registry_given=bool(registry_path), migration_id=migration_id
    )
    if problem:
        raise RefusedError(problem)
    entry = find_entry(load_registry(s.registry_path), migration_id) if s.registry_path.exists() else None
    folder = s.bundles_root / entry.path if entry else s.bundles_root / migration_id
    return s, entry, load_bundle(folder)


def conn_id_for(entry: RegistryEntry | None, bundle: Bundle, override: str | None = None) -> str:
    """The task's connection id, else the registry entry's, the declaration's ``runner.conn_id``,
    the kind's default (``kfm_postgis``...): the order the DAG factory uses."""
    from airflow_kfm_migrations.kinds import KINDS

    kind = KINDS.get(bundle.type)
    conn = (
        override
        or (entry.conn_id if entry else None)
        or bundle.declaration.runner.conn_id
        or (kind.default_conn_id if kind else None)
    )
    if not conn:
        from airflow_kfm_migrations.errors import RefusedError

        raise RefusedError(f"{bundle.migration_id}: no Airflow connection id (registry conn_id or runner.conn_id)")
    return conn


def local_artifacts(s: Settings, bundle: Bundle) -> Path:
    """Where the core writes: the bundle (no ``artifacts_root``), ``<root>/<id>`` for a local
    folder, or, for a URL (``s3://conn_id@bucket/prefix``, ``gs://...``, ``file://...``), this
    task's private staging folder, fetched from and written back to the store
    (operators/artifacts.py)."""
    root = s.artifacts_root
    if not root:
        return bundle.root
    if "://" in root:
        from airflow_kfm_migrations.operators.artifacts import task_workdir

        return task_workdir(root, bundle.migration_id)
    return Path(root) / bundle.migration_id


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
