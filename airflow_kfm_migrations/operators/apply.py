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

        _s, bundle, opts = self.run_options(context)
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

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Called by the OpenLineage provider (``[openlineage]`` extra) when the task succeeded:
        the objects the run changed as output datasets (see ``operators/lineage.py``)."""
        from airflow_kfm_migrations.operators.lineage import operator_lineage

        return operator_lineage(getattr(self, "published", None))
