"""Registry → one Airflow DAG per entry (``kfm_migration__<migration_id>``).

Parse-time discipline: no database, network or hook at parse time; only the registry
and each bundle's declaration are read. When a task runs, ``get_parsing_context()``
names its DAG and only that one is built. A broken bundle yields a DAG whose preflight
fails with the reason; it never breaks the other DAGs of the file.

Parse speed (issue 4), for a registry of a thousand entries:

- the registry and the declarations are read through :mod:`.decl_cache`: every file is read
  and hashed, and only new or changed ones are parsed and validated again;
- every DAG is built with the ``DAG`` constructor. Its tasks differ from one DAG to the next
  only in ``migration_id``, ``conn_id``, ``owner`` and the assets of ``apply``. So the first
  DAG of each shape gets its tasks from the operator constructors, and the next DAGs of
  that shape get copies of them with those four fields replaced (:class:`_TaskCopier`). A copy
  equals what the constructors build; ``tests/test_dag_factory_speed.py`` compares the
  serialized DAGs and the operators' state. A task that runs always comes from the
  constructors, because only its own DAG is built then.

  A copy writes attributes Airflow keeps private to its operators (``_BaseOperator__init_kwargs``,
  ``_dag``, ...), so copies are made only on the Airflow minor versions that test compared
  (:data:`COPIES_VERIFIED_ON`); on any other Airflow every task comes from the constructors:
  the same DAGs, parsed more slowly (issue #14).

Embedding (issue #14): :func:`governed_tasks` builds the governed tasks of one migration in
whatever DAG or TaskGroup is being defined; the factory's DAGs use it at their root, and
:func:`airflow_kfm_migrations.task_group.kfm_migration_group` inside a TaskGroup of a user's
DAG. The ``bundles_root`` and ``registry_path`` given to :func:`build_dags` are carried on
every task, so a task run resolves the same folders as the parse. A root that leads to no
registry becomes one DAG, :data:`CONFIG_DAG_ID`, whose doc and only task say which setting to
fix; the DAG file itself never breaks. :data:`ROLLBACK_DAG_ID` is the companion DAG that
rolls back an applied migration by hand (one for the whole registry).
"""

from __future__ import annotations

import copy
import enum
import functools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.kinds import KINDS

DAG_PREFIX = "kfm_migration__"
# Airflow "major.minor" versions on which tests/test_dag_factory_speed.py showed the task copies
# equal to what the constructors build. Add a version here only after that test passed on it.
COPIES_VERIFIED_ON = frozenset({"3.3"})
_PER_ENTRY = ("migration_id", "conn_id", "owner")
# Operator arguments that are the same for every DAG of one build_dags call (shared by copies).
_CARRIED = ("bundles_root", "registry_path", "artifacts_root", "environment", "fail_on_drift")
ROLLBACK_DAG_ID = "kfm_migration_rollback"
CONFIG_DAG_ID = "kfm_migrations_config_error"


def _doc_md(entry: Any, facts: dict[str, Any] | None) -> str:
    lines = [
        f"### {entry.migration_id}",
        "",
        f"**Intent:** {facts['intent']}" if facts else "",
        "",
        f"**Status:** `{entry.status}` · **Owner:** {entry.owner} · **Type:** {entry.type}",
        "",
    ]
    if facts is not None:
        lines += ["**Scope**", "", "| field | values |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in facts["scope_rows"]]
        lines += ["", "**Limits**", "", "| limit | declared |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in facts["limit_rows"]]
        lines += ["", f"**Change class:** {facts['change_class']} · reviewers: {', '.join(facts['reviewers'])}"]
    return "\n".join(lines)


def _assets(entry: Any) -> list[Any]:
    """The outlets of ``apply``: the migration's asset alias. The task adds an event through it
    for each object a committed run changed, and none otherwise (``operators/lineage.py``)."""
    if entry.type not in KINDS:
        return []
    from airflow_kfm_migrations.operators.lineage import asset_alias

    return [asset_alias(entry.migration_id)]


@functools.cache
def _configured_defaults() -> dict[str, Any]:
    """The DAG arguments whose defaults come from the Airflow config, read once per parse
    rather than once per DAG (~0.3 ms each time): the same values the DAG would read."""
    from airflow_kfm_migrations.operators.compat import conf

    return {
        "max_active_tasks": conf.getint("core", "max_active_tasks_per_dag"),
        "max_consecutive_failed_dag_runs": conf.getint("core", "max_consecutive_failed_dag_runs_per_dag"),
        "disable_bundle_versioning": conf.getboolean("dag_processor", "disable_bundle_versioning"),
    }


def _new_dag(entry: Any, facts: dict[str, Any] | None, broken: str | None, environment: str) -> Any:
    from airflow.sdk import DAG, Param

    tags = ["kfm-migration", entry.type]
    if facts is not None:
        tags.append(facts["change_class"])
    return DAG(
        dag_id=DAG_PREFIX + entry.migration_id,
        schedule=entry.schedule if entry.type in KINDS and KINDS[entry.type].schedulable else None,
        catchup=False,
        max_active_runs=1,
        tags=tags,
        params={
            "environment": Param(environment, enum=["dev", "stage", "prod"]),
            "dry_run": Param(False, type="boolean"),
        },
        doc_md=_doc_md(entry, facts) + (f"\n\n**Broken bundle:** {broken}" if broken else ""),
        description=(facts["intent"] if facts else f"broken bundle: {broken}")[:200],
        **_configured_defaults(),
    )


def _add_tasks(
    dag: Any, entry: Any, conn_id: str, outlets: list[Any], backfill: bool, carried: dict[str, Any] | None = None
) -> None:
    """The tasks of one migration DAG, through the operator constructors."""
    # The owner goes to each task directly: DAG-level default_args would be deep-copied into
    # every operator at parse time (measured: most of a 1,000-DAG file's overhead).
    governed_tasks(
        entry.migration_id, conn_id, outlets=outlets, backfill=backfill, dag=dag, owner=entry.owner, **(carried or {})
    )


def governed_tasks(
    migration_id: str, conn_id: str | None = None, *, outlets: Any = (), backfill: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """The governed tasks of one migration, wired as in every migration DAG, in the DAG or
    TaskGroup being defined (or the ``dag=``/``task_group=`` in ``kwargs``): preflight ->
    baseline_pre -> apply -> [backfill ->] baseline_post -> diff_gate; rollback when one of
    apply and after fails (``one_failed``); receipt always last (``all_done``). ``kwargs`` go
    to every operator (``owner``, the settings of :class:`~.operators.base.MigrationOperator`).
    Returns the tasks by their short name."""
    from airflow.sdk import TriggerRule

    from airflow_kfm_migrations.operators import (
        ApplyOperator,
        BackfillOperator,
        BaselineOperator,
        DiffGateOperator,
        PreflightOperator,
        ReceiptOperator,
        RollbackOperator,
    )

    common = {"migration_id": migration_id, "conn_id": conn_id, **kwargs}
    pre = PreflightOperator(task_id="preflight", **common)
    b_pre = BaselineOperator(task_id="baseline_pre", phase="pre", **common)
    apply = ApplyOperator(task_id="apply", outlets=list(outlets), **common)
    b_post = BaselineOperator(task_id="baseline_post", phase="post", **common)
    gate = DiffGateOperator(task_id="diff_gate", **common)
    rollback = RollbackOperator(task_id="rollback", trigger_rule=TriggerRule.ONE_FAILED, **common)
    receipt = ReceiptOperator(task_id="receipt", trigger_rule=TriggerRule.ALL_DONE, **common)
    chain = [pre, b_pre, apply, b_post, gate]
    if backfill:
        # Batches commit one by one with their progress: a retry resumes, never repeats a batch.
        chain.insert(3, BackfillOperator(task_id="backfill", **common))
    for a, b in zip(chain, chain[1:], strict=False):
        a >> b
    chain[2:] >> rollback
    [gate, rollback] >> receipt
    return {t.task_id.rpartition(".")[2]: t for t in (*chain, rollback, receipt)}


_IMMUTABLE = (str, int, float, bool, type(None), timedelta, enum.Enum)
_SPECIAL = frozenset(("_dag", "task_group", "params", "_BaseOperator__init_kwargs", "outlets", *_PER_ENTRY))


def _copy_plan(task: Any) -> dict[str, str] | None:
    """How to copy each attribute of ``task``: share it (immutable), copy the container
    (set/list/dict of immutable values), or handle it specially. None: some attribute is of a
    kind this does not know, so the task is not copied (the constructors build the DAG)."""
    plan: dict[str, str] = {}
    for k, v in vars(task).items():
        if k == "_log":
            plan[k] = "drop"
        elif k in _SPECIAL:
            plan[k] = "special"
        elif isinstance(v, _IMMUTABLE):
            plan[k] = "share"
        elif type(v) in (set, list, dict) and all(
            isinstance(x, _IMMUTABLE) for x in ([*v.keys(), *v.values()] if isinstance(v, dict) else v)
        ):
            plan[k] = "container"
        elif type(v) is tuple and all(isinstance(x, _IMMUTABLE) for x in v):
            plan[k] = "share"
        else:
            return None
    init_kwargs = vars(task).get("_BaseOperator__init_kwargs")
    if not isinstance(init_kwargs, dict) or not set(init_kwargs) <= {
        "task_id",
        "dag",
        "task_group",
        "params",
        "outlets",
        "trigger_rule",
        "phase",
        *_PER_ENTRY,
        *_CARRIED,
    }:
        return None
    return plan


def _params_spec(params: Any) -> list[tuple[str, Any, Any]]:
    """What the tasks' copies of the DAG params derive from (``ParamsDict.__eq__`` would
    validate every value against its JSON schema)."""
    return [(k, params.get_param(k).value, params.get_param(k).schema) for k in params]


_PARAM_ATTRS = frozenset(("value", "description", "schema", "source"))


def _plain(v: Any) -> bool:
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    if isinstance(v, list):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, str | int | float | bool)


def _params_copier(params: Any) -> Any:
    """A function returning a deep copy of ``params``, each task's own (a ``Param`` is mutable:
    ``resolve`` stores the value). ``copy.deepcopy`` is the fallback. JSON-plain params (the
    factory's) are copied as ``copy.deepcopy`` copies a ``Param`` (a new instance given a deep
    copy of the state), the state being decoded from JSON: about 10x faster."""
    from airflow.sdk import Param

    state = [[k, vars(params.get_param(k))] for k in params]
    text = json.dumps(state)
    if not (
        all(type(params.get_param(k)) is Param and st.keys() == _PARAM_ATTRS and _plain(st) for k, st in state)
        and json.loads(text) == state
    ):
        return copy.deepcopy
    cls, suppress, new_param = type(params), params.suppress_exception, Param.__new__

    def copy_params(_params: Any) -> Any:  # always the params it was made from
        out = {}
        for k, st in json.loads(text):
            p = out[k] = new_param(Param)
            vars(p).update(st)
        return cls(out, suppress)

    return copy_params


class _Prototype:
    """One task of the prototype DAG, prepared for copying."""

    def __init__(self, task: Any) -> None:
        plan = _copy_plan(task)
        if plan is None:
            raise TypeError(f"{task!r} cannot be copied")
        self.cls: Any = type(task)
        self.task_id: str = task.task_id
        self.shared = {k: v for k, v in vars(task).items() if plan[k] == "share"}
        self.containers = [(k, type(v), v) for k, v in vars(task).items() if plan[k] == "container"]
        self.params = task.params
        self.copy_params = _params_copier(task.params)
        self.init_kwargs: dict[str, Any] = dict(task._BaseOperator__init_kwargs)
        self.outlets = "outlets" in self.init_kwargs


class _TaskCopier:
    """The tasks of a DAG built by :func:`_add_tasks`, copied into DAGs of the same shape.

    What the operator constructors do per task, and what a copy does instead:

    - resolve arguments through ``default_args`` and the DAG params at every wrapped
      ``__init__`` level (a deep copy of the params each time), then set ~60 attributes one
      by one through ``BaseOperator.__setattr__``: the copy takes the prototype's attributes
      and gives the task its own deep copy of the params and its own containers;
    - ``>>``: the copy takes the prototype's ``upstream_task_ids`` / ``downstream_task_ids``
      (task ids, the same in every DAG of the shape);
    - register with the task group and the DAG (``TaskGroup.add`` then ``DAG.add_task``
      through the ``dag`` setter, ~10 attribute writes through ``__setattr__``): the copy
      makes the entries these leave (the group's ``children``, the DAG's ``task_dict`` and
      ``used_group_ids``) directly. Their checks hold by construction: the DAG is new and
      has the prototype's params, dates and ``fail_fast``, whose tasks passed the checks.
    """

    def __init__(self, prototype: Any) -> None:
        self.shape = self._shape(prototype)
        self.tasks = [_Prototype(task) for task in prototype.tasks]

    @staticmethod
    def _shape(dag: Any) -> tuple[Any, ...]:
        return (_params_spec(dag.params), dag.start_date, dag.end_date, dag.fail_fast)

    def fits(self, dag: Any) -> bool:
        """``dag`` is new and of the prototype's shape (else its tasks come from the constructors)."""
        group = dag.task_group
        return not (dag.task_dict or group.children or group.used_group_ids) and self._shape(dag) == self.shape

    def fill(self, dag: Any, entry: Any, conn_id: str, outlets: list[Any]) -> None:
        """Copies of the prototype's tasks for ``entry``, in ``dag`` (which :meth:`fits`)."""
        group = dag.task_group
        values = {"migration_id": entry.migration_id, "conn_id": conn_id, "owner": entry.owner}
        for proto in self.tasks:
            new = proto.cls.__new__(proto.cls)
            state = dict(proto.shared)
            for k, kind, v in proto.containers:
                state[k] = kind(v)
            params = proto.copy_params(proto.params)
            init_kwargs = dict(proto.init_kwargs)
            init_kwargs.update(values, dag=dag, task_group=group, params=type(params)(params))
            if proto.outlets:
                init_kwargs["outlets"] = outlets
            state.update(values)
            state.update(
                params=params,
                outlets=list(outlets) if proto.outlets else [],
                _BaseOperator__init_kwargs=init_kwargs,
                _dag=dag,
                task_group=group,
            )
            vars(new).update(state)
            task_id = proto.task_id
            group.children[task_id] = new
            dag.task_dict[task_id] = new
            group.used_group_ids.add(task_id)


@functools.cache
def copies_verified() -> bool:
    """May :class:`_TaskCopier` be used on the running Airflow (see the module doc)?"""
    from airflow import __version__

    return ".".join(__version__.split(".")[:2]) in COPIES_VERIFIED_ON


def build_dag(
    entry: Any, bundles_root: Path, environment: str, *, facts_reader: Any = None, carried: dict[str, Any] | None = None
) -> Any:
    """One migration's DAG, through the constructors."""
    dag, _conn_id, _outlets, _backfill = _dag_for(entry, bundles_root, environment, facts_reader)
    _add_tasks(dag, entry, _conn_id, _outlets, _backfill, carried)
    return dag


def _dag_for(entry: Any, bundles_root: Path, environment: str, facts_reader: Any) -> tuple[Any, str, list[Any], bool]:
    facts, broken, conn_id, outlets, backfill = migration_parts(entry, bundles_root, facts_reader)
    return _new_dag(entry, facts, broken, environment), conn_id, outlets, backfill


def migration_parts(
    entry: Any, bundles_root: Path, facts_reader: Any = None
) -> tuple[dict[str, Any] | None, str | None, str, list[Any], bool]:
    """What the tasks of a registry entry (a ``decl_cache.EntryFacts``) are built from, read at
    parse time: (declaration facts or None, why the bundle is broken or None, connection id,
    ``apply``'s outlets, whether a backfill is declared). Never raises for a broken bundle."""
    from airflow_kfm_migrations.decl_cache import DeclarationFacts

    reader = facts_reader or DeclarationFacts(bundles_root, enabled=False)
    facts = None
    broken = None
    try:
        facts = reader.get(bundles_root / entry.path)
    except Exception as exc:  # broad on purpose: one broken bundle must never break the DAG file's parse;
        # its DAG is built anyway and fails in preflight with this line
        broken = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    default_conn = KINDS[entry.type].default_conn_id if entry.type in KINDS else f"kfm_{entry.type}"
    conn_id = entry.conn_id or (facts["runner_conn_id"] if facts else None) or default_conn
    return facts, broken, conn_id, _assets(entry), bool(facts and facts["backfill"])


def build_dags(
    registry_path: str | Path | None = None,
    bundles_root: str | Path | None = None,
    environment: str | None = None,
    *,
    rollback_dag_id: str | None = ROLLBACK_DAG_ID,
    copy_tasks: bool = True,
    cache: bool = True,
) -> dict[str, Any]:
    """All DAGs of the registry, or only the one a running task needs.

    ``registry_path`` and ``bundles_root`` win over ``[kfm_migrations]`` and ``KFM_*`` and are
    carried on every task (a ``bundles_root`` given alone brings its own registry,
    ``<bundles_root>/registry/migrations.v1.json``); ``environment`` is the default of each
    DAG's ``environment`` param. ``rollback_dag_id`` names the companion rollback DAG (None:
    none). ``copy_tasks=False`` builds every task through the constructors (also the case on an
    Airflow not in :data:`COPIES_VERIFIED_ON`), ``cache=False`` parses every declaration: the
    results are the same, only slower (see the module doc)."""
    from airflow.sdk import get_parsing_context

    from airflow_kfm_migrations.decl_cache import DeclarationFacts
    from airflow_kfm_migrations.operators.common import roots_problem, settings

    s = settings(bundles_root=bundles_root, registry_path=registry_path)
    reg_path, root = s.registry_path, s.bundles_root
    env = environment or s.environment
    wanted = get_parsing_context().dag_id
    carried = {k: str(v) for k, v in (("bundles_root", bundles_root), ("registry_path", registry_path)) if v}
    if bundles_root:
        carried["bundles_root"] = str(root)  # absolute: a worker's working folder may differ
    problem = roots_problem(s, root_given=bool(bundles_root), registry_given=bool(registry_path))
    if problem:
        return {} if wanted and wanted != CONFIG_DAG_ID else {CONFIG_DAG_ID: _config_dag(problem, carried)}
    copy_tasks = copy_tasks and copies_verified()
    # No cache when a task runs: its DAG alone is built, and a cache written then would hold
    # one declaration only.
    reader = DeclarationFacts(root, enabled=cache and not wanted)
    entries = reader.registry(reg_path)
    copiers: dict[bool, _TaskCopier | None] = {}
    dags: dict[str, Any] = {}
    for entry in entries:
        dag_id = DAG_PREFIX + entry.migration_id
        if wanted and wanted != dag_id:
            continue
        dag, conn_id, outlets, backfill = _dag_for(entry, root, env, reader)
        copier = copiers.get(backfill)
        if copier is not None and copier.fits(dag):
            copier.fill(dag, entry, conn_id, outlets)
        else:
            _add_tasks(dag, entry, conn_id, outlets, backfill, carried)
            if copy_tasks and backfill not in copiers:
                try:
                    copiers[backfill] = _TaskCopier(dag)
                except TypeError:  # an attribute of unknown kind: constructors for this shape
                    copiers[backfill] = None
        dags[dag_id] = dag
    if rollback_dag_id and entries and (not wanted or wanted == rollback_dag_id):
        dags[rollback_dag_id] = _rollback_dag(rollback_dag_id, [e.migration_id for e in entries], env, carried)
    reader.save()
    return dags


def _config_dag(problem: str, carried: dict[str, Any]) -> Any:
    """The one DAG of a DAG file whose bundles_root or registry_path leads nowhere: its doc
    says which setting to fix, and its task fails with that line when it runs."""
    from airflow.sdk import DAG

    from airflow_kfm_migrations.operators import PreflightOperator

    dag = DAG(
        dag_id=CONFIG_DAG_ID,
        schedule=None,
        catchup=False,
        tags=["kfm-migration"],
        doc_md=f"### kfm-migrations is not configured\n\n**Configuration error:** {problem}",
        description=problem,
        **_configured_defaults(),
    )
    PreflightOperator(task_id="preflight", migration_id="", dag=dag, **carried)
    return dag


ROLLBACK_DOC = """### Roll back an applied migration

Trigger with `migration_id`, `environment` and `reason`. The same core as
`kfm-migrations rollback`: the store's ledger must show the migration applied; its rollback
artifact runs under the store's lock, and the store must equal the apply's pre-baseline, or
nothing is committed. The run writes a receipt (the reason in its policy notes) and the
ledger records the rollback. A migration the ledger does not show applied is refused: the
run fails, with a receipt."""


def _rollback_dag(dag_id: str, migration_ids: list[str], environment: str, carried: dict[str, Any]) -> Any:
    from airflow.sdk import DAG, Param

    from airflow_kfm_migrations.operators import ManualRollbackOperator

    dag = DAG(
        dag_id=dag_id,
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["kfm-migration", "rollback"],
        params={
            "migration_id": Param(type="string", enum=sorted(migration_ids), description="The migration to roll back"),
            "environment": Param(environment, enum=["dev", "stage", "prod"]),
            "reason": Param(type="string", minLength=1, description="Why: kept in the rollback's receipt"),
        },
        doc_md=ROLLBACK_DOC,
        description="Roll back an applied migration, with a receipt",
        **_configured_defaults(),
    )
    ManualRollbackOperator(
        task_id="rollback",
        dag=dag,
        migration_id="{{ params.migration_id }}",
        reason="{{ params.reason }}",
        **carried,
    )
    return dag
