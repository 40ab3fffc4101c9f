from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator


class MigrationOperator(BaseOperator):
    """Common fields: which migration, which connection (default: registry / runner)."""

    template_fields: tuple[str, ...] = ("migration_id", "conn_id")

    def __init__(self, *, migration_id: str, conn_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.migration_id = migration_id
        self.conn_id = conn_id

    def run_options(self, context: Any) -> Any:
        from airflow_kfm_migrations.engine import RunOptions
        from airflow_kfm_migrations.operators.common import conn_id_for, local_artifacts, resolve
        from airflow_kfm_migrations.util.secret_scan import redact

        s, entry, bundle = resolve(self.migration_id)
        params = context.get("params", {}) or {}
        ti = context.get("ti")
        actor = f"airflow:{getattr(ti, 'dag_id', '?')}/{getattr(ti, 'run_id', '?')}"
        opts = RunOptions(
            conn_id=conn_id_for(entry, bundle, self.conn_id),
            environment=str(params.get("environment") or s.environment),
            artifacts_dir=local_artifacts(s, bundle),
            dry_run=bool(params.get("dry_run", False)),
            fail_on_drift=s.fail_on_drift,
            actor=actor,
            registry_path=s.registry_path if s.registry_path.exists() else None,
            use_hook=True,
            log=lambda line: self.log.info("%s", redact(line)),
        )
        return s, bundle, opts
