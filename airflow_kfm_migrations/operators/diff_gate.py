from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.operators.base import MigrationOperator


class DiffGateOperator(MigrationOperator):
    """Re-check from the committed state: the live schema fingerprint must equal the
    post-state the ledger recorded for the last successful run (after a search alias flip
    that is the flipped state). Anything else is drift since the guarded commit."""

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.operators.baseline import committed_view
        from airflow_kfm_migrations.operators.compat import AirflowFailException

        applied = self.pull(context, "apply", key="apply") or {}
        if (context.get("params") or {}).get("dry_run"):
            self.log.info("dry run: nothing was committed")
            return {"verdict": "pass"}
        _s, bundle, opts = self.run_options(context)
        baseline, record = committed_view(bundle, opts)
        if record is None:
            raise AirflowFailException("diff gate: the ledger has no record of this migration")
        expected, observed = record.post_schema_fingerprint, baseline.schema_fingerprint
        if expected != observed:
            msg = (
                f"diff gate: committed schema fingerprint {observed[:16]} differs from the recorded post-state "
                f"{expected[:16]} (run {record.run_id[:12]}): the store changed after the governed commit"
            )
            if applied.get("status") == "noop" and not opts.fail_on_drift:
                self.log.warning("%s; reported as drift (fail_on_drift is off)", msg)
                return {"verdict": "drift", "schema_fingerprint": observed}
            raise AirflowFailException(msg)
        self.log.info("committed state equals the recorded post-state (%s)", observed[:16])
        return {"verdict": "pass", "schema_fingerprint": observed}
