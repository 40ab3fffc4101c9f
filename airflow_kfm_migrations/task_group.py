"""The governed tasks of one migration inside a TaskGroup of your own DAG (issue #14).

    from airflow.sdk import DAG
    from airflow_kfm_migrations.task_group import kfm_migration_group

    with DAG("nightly_load", schedule="@daily") as dag:
        extract >> kfm_migration_group("PG-MIG-2026-02-28-01", "pg_main") >> load

The group holds the tasks of a factory DAG, with the same dependencies and trigger rules:
``preflight -> baseline_pre -> apply -> [backfill ->] baseline_post -> diff_gate``,
``rollback`` (``one_failed``) and ``receipt`` (``all_done``, the group's only leaf: it fails
whenever the migration did not succeed, so what follows the group runs only after a
verified success). The tasks pull each other's XComs inside the group (``g.apply``), so a
DAG may hold several groups.

Parse time reads what the DAG factory reads, no more: the registry and the migration's
declaration, through the parse cache (read only; the DAG factory's parses keep it), to learn
whether a ``backfill`` task is needed and the ``apply`` outlets. Nothing connects. A
``migration_id`` with a Jinja template (``"{{ params.migration_id }}"``) is only known when
the task runs: then ``group_id`` is required, and ``backfill``/``outlets`` are what you pass.
A bundle or a ``bundles_root`` that cannot be read at parse time never breaks the DAG file:
the group's tooltip says why, and its ``preflight`` fails with that line when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def kfm_migration_group(
    migration_id: str,
    conn_id: str | None = None,
    *,
    group_id: str | None = None,
    bundles_root: str | Path | None = None,
    registry_path: str | Path | None = None,
    artifacts_root: str | None = None,
    environment: str | None = None,
    fail_on_drift: bool | None = None,
    backfill: bool | None = None,
    outlets: list[Any] | None = None,
    tooltip: str | None = None,
    **group_kwargs: Any,
) -> Any:
    """A TaskGroup with the governed tasks of ``migration_id``, in the DAG being defined
    (``with DAG(...)`` or inside a ``@dag`` function; or pass ``dag=``). Returns the group, so
    ``upstream >> group >> downstream`` works.

    - ``conn_id``: the Airflow connection; None: the registry entry's, the declaration's
      ``runner.conn_id``, then the kind's default (``kfm_postgis``...), as in the factory.
    - ``group_id``: default ``migration_id`` (required when ``migration_id`` is templated).
    - ``bundles_root``, ``registry_path``, ``artifacts_root``, ``fail_on_drift``: win over
      ``KFM_*`` and ``[kfm_migrations]``, at parse and when the tasks run (carried on every
      task). A ``bundles_root`` given alone brings its own registry.
    - ``environment``: the run's environment (dev, stage, prod); None: the DAG run's
      ``params.environment`` if the DAG has one, else ``KFM_ENVIRONMENT`` /
      ``[kfm_migrations] environment``, else dev. ``"{{ params.env }}"`` works too.
    - ``backfill``, ``outlets``: None: from the declaration (parse time).
    - ``migration_id``, ``conn_id``, ``environment``, ``bundles_root``, ``registry_path`` and
      ``artifacts_root`` are template fields of every task.
    - ``group_kwargs`` go to ``TaskGroup`` (``dag``, ``parent_group``, ``default_args``,
      ``prefix_group_id``, ``group_display_name``, ``ui_color``...).
    """
    from airflow.sdk import TaskGroup

    from airflow_kfm_migrations.dag_factory import governed_tasks

    templated = _templated(migration_id)
    if group_id is None:
        if templated:
            raise ValueError("kfm_migration_group: give group_id when migration_id is a template")
        group_id = migration_id
    carried: dict[str, Any] = {
        "environment": environment,
        "bundles_root": bundles_root,
        "registry_path": registry_path,
        "artifacts_root": artifacts_root,
        "fail_on_drift": fail_on_drift,
    }
    for key in ("bundles_root", "registry_path"):
        value = carried[key]
        if value and not _templated(value):
            carried[key] = str(Path(value).resolve())  # absolute: a worker's working folder may differ
    carried = {k: v for k, v in carried.items() if v is not None}
    note = None
    if not templated and not any(_templated(v) for v in (bundles_root, registry_path)):
        found_backfill, found_outlets, note = _parse_facts(migration_id, bundles_root, registry_path)
        backfill = found_backfill if backfill is None else backfill
        outlets = found_outlets if outlets is None else outlets
    group = TaskGroup(group_id=group_id, tooltip=tooltip or note or "", **group_kwargs)
    if group_kwargs.get("dag") is not None:  # a DAG given rather than being defined
        carried["dag"] = group_kwargs["dag"]
    with group:
        governed_tasks(
            migration_id, conn_id, outlets=outlets or [], backfill=bool(backfill), task_group=group, **carried
        )
    return group


def _parse_facts(
    migration_id: str, bundles_root: str | Path | None, registry_path: str | Path | None
) -> tuple[bool, list[Any], str | None]:
    """(backfill declared, apply's outlets, a note for the tooltip) of a migration, read at
    parse time; on any problem (False, [], the one line saying why), never an exception."""
    from airflow_kfm_migrations.dag_factory import migration_parts
    from airflow_kfm_migrations.decl_cache import DeclarationFacts, EntryFacts
    from airflow_kfm_migrations.operators.common import roots_problem, settings

    s = settings(bundles_root=bundles_root, registry_path=registry_path)
    problem = roots_problem(
        s, root_given=bool(bundles_root), registry_given=bool(registry_path), migration_id=migration_id
    )
    if problem:
        return False, [], problem
    reader = DeclarationFacts(s.bundles_root)  # the parse cache, read only: never saved from here
    try:
        entry = None
        if s.registry_path.is_file():
            entry = next((e for e in reader.registry(s.registry_path) if e.migration_id == migration_id), None)
        if entry is None:
            kind = reader.get(s.bundles_root / migration_id)["type"]
            entry = EntryFacts(migration_id, kind, migration_id, "", "", None, None)
    except Exception as exc:  # broad on purpose: the DAG file must parse; preflight fails with the reason
        return False, [], f"{migration_id}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    facts, broken, _conn_id, outlets, backfill = migration_parts(entry, s.bundles_root, reader)
    if broken:
        return False, [], f"{migration_id}: broken bundle: {broken}"
    return backfill, outlets, facts["intent"] if facts else None
