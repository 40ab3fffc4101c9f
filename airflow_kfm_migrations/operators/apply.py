from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.operators.base import MigrationOperator


class ApplyOperator(MigrationOperator):
    """The governed run. On PostGIS the transactional guard runs whole inside this task:
    forward statements, in-transaction post-baseline, diff and gate, then COMMIT or ROLLBACK.
    A receipt is written whatever happens."""

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.engine import run_migration
        from airflow_kfm_migrations.operators.common import summary_tables
        from airflow_kfm_migrations.operators.compat import AirflowFailException
        from airflow_kfm_migrations.operators.lineage import publish
        from airflow_kfm_migrations.util.cancel import Cancellation

        _s, bundle, opts = self.run_options(context)
        opts.cancel = self.cancellation = Cancellation()
        result = run_migration(bundle, opts)
        self.log.info("%s", summary_tables(result))
        xcom = {
            "status": result.status,
            "receipt_digest": result.receipt_digest or "",
            "bundle_digest": bundle.digest,
            "pre_schema_fingerprint": result.pre.schema_fingerprint if result.pre else "",
            "post_schema_fingerprint": result.post.schema_fingerprint if result.post else "",
            "changes": len(result.summary.changes) if result.summary else 0,
        }
        context["ti"].xcom_push(key="apply", value=xcom)
        self.published = publish(self, context, bundle, opts, result)  # asset events: committed changes only
        if result.exit_code != 0:
            raise AirflowFailException(f"{bundle.migration_id}: {result.status}: {result.reason}")
        return xcom

    def on_kill(self) -> None:
        """Airflow kills the task (the task instance marked failed, a worker shutting down):
        its SIGTERM handler calls this in the task's main thread while ``execute`` is blocked
        in the store. The running statement or reindex task is cancelled on the server; the
        run then fails closed (rolled back, or what it built deleted and no alias moved), its
        lock released, with a receipt saying it was killed, before Airflow's SIGKILL."""
        from airflow_kfm_migrations.util.cancel import KILLED_BY_AIRFLOW

        cancellation = getattr(self, "cancellation", None)
        if cancellation is not None:
            cancellation.cancel(KILLED_BY_AIRFLOW)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Called by the OpenLineage provider (``[openlineage]`` extra) when the task succeeded:
        the objects the run changed as output datasets (see ``operators/lineage.py``)."""
        from airflow_kfm_migrations.operators.lineage import operator_lineage

        return operator_lineage(getattr(self, "published", None))
