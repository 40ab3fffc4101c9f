from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.operators.base import MigrationOperator


class RollbackOperator(MigrationOperator):
    """Runs when an upstream task failed. A refused transactional apply already left the
    store unchanged; a committed change that failed a later check is rolled back and
    verified against the pre-baseline."""

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.engine import rollback_migration
        from airflow_kfm_migrations.operators.compat import AirflowFailException

        ti = context["ti"]
        applied = ti.xcom_pull(task_ids="apply", key="apply") or {}
        backfill = ti.xcom_pull(task_ids="backfill", key="backfill") or {}
        if backfill.get("status") in {"rolled_back", "rollback_failed"}:
            self.log.info(
                "the backfill already compensated the migration (%s); nothing more to roll back", backfill["status"]
            )
            return {"status": "already_compensated"}
        if applied.get("status") != "succeeded":
            self.log.info(
                "nothing was committed (apply status %r): the store is unchanged, no rollback needed",
                applied.get("status"),
            )
            return {"status": "not_needed"}
        _s, bundle, opts = self.run_options(context)
        result = rollback_migration(bundle, opts)
        self.log.info("rollback: %s %s", result.status, result.reason or "")
        if result.status != "rolled_back":
            raise AirflowFailException(f"rollback of {bundle.migration_id}: {result.status}: {result.reason}")
        return {"status": result.status, "receipt_digest": result.receipt_digest or ""}
