from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.operators.base import MigrationOperator


class RollbackOperator(MigrationOperator):
    """Runs when an upstream task failed. A refused transactional apply already left the
    store unchanged; a committed change that failed a later check is rolled back and
    verified against the pre-baseline."""

    artifacts_fetch = "apply"  # operators/artifacts.py: the apply's receipt and outputs (its pre-baseline)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.engine import rollback_migration
        from airflow_kfm_migrations.operators.compat import AirflowFailException

        applied = self.pull(context, "apply", key="apply") or {}
        backfill = self.pull(context, "backfill", key="backfill") or {}
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


class ManualRollbackOperator(MigrationOperator):
    """Rolls back an applied migration on request, with a receipt: the one task of the
    ``kfm_migration_rollback`` DAG (``build_dags``). The same core as ``kfm-migrations
    rollback`` (``engine.rollback_migration``): the store's ledger must show the migration
    applied, the rollback artifact runs under the store's lock, and the store must equal the
    apply's pre-baseline, or nothing is committed. ``reason`` (templated, required) goes into
    the receipt's policy notes; the ledger records the rollback and the receipt's digest.

    The task fails (after the receipt is written and verified) unless the migration was
    rolled back: a migration the ledger does not show applied is refused."""

    template_fields = (*MigrationOperator.template_fields, "reason")
    artifacts_fetch = "apply"  # operators/artifacts.py: the apply's receipt and outputs (its pre-baseline)
    ui_color = "#fdecea"

    def __init__(self, *, reason: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.app.verify import verify
        from airflow_kfm_migrations.engine import rollback_migration
        from airflow_kfm_migrations.operators.compat import AirflowFailException
        from airflow_kfm_migrations.util.secret_scan import redact

        reason = " ".join(str(self.reason or "").split())
        if not reason:
            raise AirflowFailException(f"rollback of {self.migration_id}: give the reason (params.reason)")
        if not self.migration_id:
            raise AirflowFailException("rollback: choose the migration (params.migration_id)")
        _s, bundle, opts = self.run_options(context)
        result = rollback_migration(bundle, opts, reason=redact(reason)[:500])
        self.log.info("rollback: %s %s", result.status, result.reason or "")
        if result.receipt_path is not None:
            checked = verify(opts.artifacts_dir, bundle=bundle.root)
            self.log.info("receipt %s verified (%d digests)", result.receipt_path, len(checked))
        xcom = {"status": result.status, "receipt_digest": result.receipt_digest or "", "reason": result.reason or ""}
        if result.status != "rolled_back":
            verb = "refused" if result.status == "noop" else result.status
            raise AirflowFailException(f"rollback of {bundle.migration_id} {verb}: {result.reason}")
        return xcom
