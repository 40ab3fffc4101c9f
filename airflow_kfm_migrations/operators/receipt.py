from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.operators.base import MigrationOperator


class ReceiptOperator(MigrationOperator):
    """Always runs last: makes sure the run has a receipt (a refusal before apply gets one
    here), verifies it, publishes it to ``artifacts_root`` and fails the DAG run whenever the
    migration did not succeed, so a rollback leaf can never turn a failure into success."""

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.app.verify import verify
        from airflow_kfm_migrations.engine.run import RunRecorder
        from airflow_kfm_migrations.operators.common import upload
        from airflow_kfm_migrations.operators.compat import AirflowFailException

        preflight = self.pull(context, "preflight")
        applied = self.pull(context, "apply", key="apply") or {}
        gate = self.pull(context, "diff_gate")
        rolled = self.pull(context, "rollback") or {}
        backfill = self.pull(context, "backfill", key="backfill")
        s, bundle, opts = self.run_options(context)
        status = applied.get("status")
        problems = []
        if not status:
            problems.append("preflight refused" if preflight is None else "baseline_pre failed")
            if not opts.dry_run:
                RunRecorder(bundle, opts, "apply").finish("failed", "refused before apply: " + problems[0])
            status = "failed"
        elif backfill is not None and backfill.get("status") not in {"succeeded", "noop"}:
            status = backfill.get("status") or "failed"
            problems.append(f"the backfill ended {status}")
        elif status == "succeeded" and gate is None:
            problems.append("the diff gate did not pass on the committed state")
        if rolled.get("status") == "rolled_back":
            status = "rolled_back"
            problems.append("rolled back after a failed post-commit check")
        if not opts.dry_run:
            checked = verify(opts.artifacts_dir, bundle=bundle.root)
            self.log.info("receipt verified (%d digests)", len(checked))
        where = upload(s, bundle, opts.artifacts_dir)
        self.log.info("receipt: %s/receipts/run_receipt.json  verdict: %s", where, status)
        if problems or status not in {"succeeded", "noop"}:
            raise AirflowFailException(f"{bundle.migration_id} did not succeed ({status}): {'; '.join(problems)}")
        return {"status": status, "receipt_digest": applied.get("receipt_digest", "")}
