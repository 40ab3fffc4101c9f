from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator

from airflow_kfm_migrations.operators.base import MigrationOperator


class BackfillOperator(MigrationOperator):
    """The batched backfill, after ``apply`` committed the schema part. Same core as the CLI
    (``backfill.run_backfill``). Each batch commits with its progress row, so an Airflow retry
    resumes after the last committed batch and never repeats one; after completion it is a
    no-op. Progress goes to the task log at most every ``KFM_BACKFILL_LOG_SECONDS``.

    Interruptions (lock timeouts past the retries, lost connections, errors) are retried by
    Airflow; a governance stop (scope, ``max_rows``) has already compensated the migration and
    fails without retry."""

    ui_color = "#fdf3e8"

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
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=30))
        BaseOperator.__init__(self, **kwargs)  # one wrapped level, as in BaselineOperator
        self.set_fields(migration_id, conn_id, environment, bundles_root, registry_path, artifacts_root, fail_on_drift)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.engine.backfill import run_backfill
        from airflow_kfm_migrations.operators.compat import AirflowException, AirflowFailException

        ti = context["ti"]
        applied = self.pull(context, "apply", key="apply") or {}
        if applied.get("status") not in {"succeeded", "noop"}:
            raise AirflowFailException(f"backfill: the schema part did not succeed ({applied.get('status')})")
        _s, bundle, opts = self.run_options(context)
        result = run_backfill(bundle, opts)
        self.log.info("backfill: %s%s", result.status, f" ({result.reason})" if result.reason else "")
        xcom = {
            "status": result.status,
            "receipt_digest": result.receipt_digest or "",
            "resumable": bool(getattr(result, "resumable", False)),
        }
        ti.xcom_push(key="backfill", value=xcom)
        if result.status in {"succeeded", "noop"}:
            return xcom
        if xcom["resumable"]:
            raise AirflowException(f"{bundle.migration_id}: backfill interrupted, a retry resumes: {result.reason}")
        raise AirflowFailException(f"{bundle.migration_id}: backfill {result.status}: {result.reason}")
