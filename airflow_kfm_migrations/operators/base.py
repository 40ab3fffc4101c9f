from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

ENVIRONMENTS = ("dev", "stage", "prod")


class MigrationOperator(BaseOperator):
    """Common fields: which migration, which connection (default: registry / runner), and the
    settings a task may carry itself.

    ``environment``, ``bundles_root``, ``registry_path``, ``artifacts_root`` and
    ``fail_on_drift`` given here win over ``KFM_*`` and ``[kfm_migrations]`` when the task
    runs (None: those apply). The environment of a run is, first found: this ``environment``
    (after templating; empty counts as not given), the DAG run's ``params.environment``,
    ``KFM_ENVIRONMENT``, ``[kfm_migrations] environment``, ``dev``.

    XComs of the other governed tasks are pulled relative to this task's TaskGroup
    (:meth:`sibling`): a task in group ``g`` reads ``g.apply``.

    A run started with :meth:`run_options` stops when Airflow kills the task (:meth:`on_kill`).
    """

    template_fields: tuple[str, ...] = (
        "migration_id",
        "conn_id",
        "environment",
        "bundles_root",
        "registry_path",
        "artifacts_root",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "execute" in cls.__dict__:  # a URL artifacts_root: a private stage per task (operators/artifacts.py)
            from airflow_kfm_migrations.operators.artifacts import staged_execute

            cls.execute = staged_execute(cls.__dict__["execute"])  # type: ignore[method-assign]

    def __init__(
        self,
        *,
        migration_id: str,
        conn_id: str | None = None,
        environment: str | None = None,
        bundles_root: str | None = None,
        registry_path: str | None = None,
        artifacts_root: str | None = None,
        fail_on_drift: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.set_fields(migration_id, conn_id, environment, bundles_root, registry_path, artifacts_root, fail_on_drift)

    def set_fields(
        self,
        migration_id: str,
        conn_id: str | None,
        environment: str | None,
        bundles_root: str | None,
        registry_path: str | None,
        artifacts_root: str | None,
        fail_on_drift: bool | None,
    ) -> None:
        """The fields above (for subclasses that call ``BaseOperator.__init__`` directly)."""
        self.migration_id = migration_id
        self.conn_id = conn_id
        self.environment = environment
        self.bundles_root = None if bundles_root is None else str(bundles_root)
        self.registry_path = None if registry_path is None else str(registry_path)
        self.artifacts_root = artifacts_root
        self.fail_on_drift = fail_on_drift

    def sibling(self, name: str) -> str:
        """The task id of the governed task ``name`` (``apply``, ``preflight``...) next to this
        one: in the same TaskGroup (``g.apply``), or at the DAG's root (``apply``)."""
        group = self.task_group
        return group.child_id(name) if group is not None else name

    def pull(self, context: Any, name: str, key: str | None = None) -> Any:
        """The XCom ``name`` pushed in this run (its return value, or ``key``), or None."""
        ti = context["ti"]
        task_id = self.sibling(name)
        return ti.xcom_pull(task_ids=task_id) if key is None else ti.xcom_pull(task_ids=task_id, key=key)

    def resolved(self) -> Any:
        """(settings, registry entry, bundle) with this task's settings; a ``bundles_root`` or
        ``registry_path`` leading nowhere fails the task with the one line naming the setting."""
        from airflow_kfm_migrations.errors import RefusedError
        from airflow_kfm_migrations.operators.common import resolve
        from airflow_kfm_migrations.operators.compat import AirflowFailException

        try:
            return resolve(
                self.migration_id,
                bundles_root=self.bundles_root or None,
                registry_path=self.registry_path or None,
                artifacts_root=self.artifacts_root or None,
                fail_on_drift=self.fail_on_drift,
            )
        except RefusedError as exc:
            line = f"{self.migration_id}: {exc.reason}" if self.migration_id else exc.reason
            raise AirflowFailException(line) from None

    def environment_of(self, s: Any, params: Any) -> str:
        """The environment of this run (precedence in the class doc), checked."""
        from airflow_kfm_migrations.operators.compat import AirflowFailException

        if self.environment:
            env, source = str(self.environment).strip(), "the environment= argument"
        elif params.get("environment"):
            env, source = str(params["environment"]), "params.environment"
        else:
            env, source = s.environment, "KFM_ENVIRONMENT / [kfm_migrations] environment"
        if env not in ENVIRONMENTS:
            raise AirflowFailException(
                f"{self.migration_id}: environment {env!r} ({source}) is not one of dev, stage, prod"
            )
        return env

    def run_options(self, context: Any) -> Any:
        from airflow_kfm_migrations.engine import RunOptions
        from airflow_kfm_migrations.operators.common import conn_id_for, local_artifacts
        from airflow_kfm_migrations.util.cancel import Cancellation
        from airflow_kfm_migrations.util.secret_scan import redact

        s, entry, bundle = self.resolved()
        params = context.get("params", {}) or {}
        ti = context.get("ti")
        actor = f"airflow:{getattr(ti, 'dag_id', '?')}/{getattr(ti, 'run_id', '?')}"
        opts = RunOptions(
            conn_id=conn_id_for(entry, bundle, self.conn_id),
            environment=self.environment_of(s, params),
            artifacts_dir=local_artifacts(s, bundle),
            dry_run=bool(params.get("dry_run", False)),
            fail_on_drift=s.fail_on_drift,
            actor=actor,
            registry_path=s.registry_path if s.registry_path.exists() else None,
            use_hook=True,
            log=lambda line: self.log.info("%s", redact(line)),
        )
        opts.cancel = self.cancellation = Cancellation()  # set by on_kill
        return s, bundle, opts

    def on_kill(self) -> None:
        """Airflow kills the task (the task instance marked failed or cleared, a worker
        shutting down): its SIGTERM handler calls this in the task's main thread while
        ``execute`` is blocked in the store. The running statement, reindex task or backfill
        batch is cancelled on the server; the run then fails closed (rolled back, or what it
        built deleted and compensated, no alias moved), its lock released, with a receipt
        saying it was killed, before Airflow's SIGKILL (docs/operations.md)."""
        from airflow_kfm_migrations.util.cancel import KILLED_BY_AIRFLOW

        cancellation = getattr(self, "cancellation", None)
        if cancellation is not None:
            cancellation.cancel(KILLED_BY_AIRFLOW)
