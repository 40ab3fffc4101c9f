from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.operators.base import MigrationOperator


class ReceiptOperator(MigrationOperator):
    """Always runs last: makes sure the run has a receipt (a refusal before apply gets one
    here), verifies it, publishes it to ``artifacts_root`` and fails the DAG run whenever the
    migration did not succeed, so a rollback leaf can never turn a failure into success.

    With a URL ``artifacts_root`` it verifies what the store holds: the run's receipt, its
    chain and every output it lists are fetched into this task's own folder first, and the
    pointer ``receipts/receipt_ref.json`` written there names the receipt's URL."""

    artifacts_fetch = "all"  # operators/artifacts.py: the whole chain and the outputs checked

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.app.verify import verify
        from airflow_kfm_migrations.engine.run import RunRecorder
        from airflow_kfm_migrations.errors import InputError, VerifyMismatch
        from airflow_kfm_migrations.operators.artifacts import task_stage
        from airflow_kfm_migrations.operators.compat import AirflowFailException

        preflight = self.pull(context, "preflight")
        applied = self.pull(context, "apply", key="apply") or {}
        gate = self.pull(context, "diff_gate")
        rolled = self.pull(context, "rollback") or {}
        backfill = self.pull(context, "backfill", key="backfill")
        _s, bundle, opts = self.run_options(context)
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
        stage = task_stage()  # None unless artifacts_root is a URL
        where = f"{opts.artifacts_dir}/receipts/run_receipt.json"
        if not opts.dry_run:
            try:
                checked = verify(opts.artifacts_dir, bundle=bundle.root)
            except (VerifyMismatch, InputError) as exc:
                shown = stage.named(exc) if stage is not None else exc
                raise AirflowFailException(f"{bundle.migration_id}: the receipt does not verify: {shown}") from None
            self.log.info("receipt verified (%d digests)", len(checked))
            if stage is not None:
                import json

                stage.push()  # the receipt (a refusal's, written above) before its pointer
                doc = json.loads((opts.artifacts_dir / "receipts" / "run_receipt.json").read_bytes())
                where = stage.write_ref(doc)
        self.log.info("receipt: %s  verdict: %s", where, status)
        if problems or status not in {"succeeded", "noop"}:
            raise AirflowFailException(f"{bundle.migration_id} did not succeed ({status}): {'; '.join(problems)}")
        return {"status": status, "receipt_digest": applied.get("receipt_digest", "")}
