from __future__ import annotations

from typing import Any

from .base import MigrationOperator


class DiffGateOperator(MigrationOperator):
    """Re-check from the committed state: the store after commit must equal the post-state
    the guard approved (or, for a no-op, the recorded one). Anything else is drift."""

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException

        ti = context["ti"]
        applied = ti.xcom_pull(task_ids="apply", key="apply") or {}
        post = ti.xcom_pull(task_ids="baseline_post") or {}
        expected = applied.get("post_schema_fingerprint")
        observed = post.get("schema_fingerprint")
        if applied.get("status") == "noop" or (context.get("params") or {}).get("dry_run"):
            self.log.info("nothing committed by this run (%s); committed state %s", applied.get("status"), observed)
            return {"verdict": "pass", "schema_fingerprint": observed or ""}
        if not expected or not observed:
            raise AirflowFailException("diff gate: missing fingerprints from apply or baseline_post")
        if expected != observed:
            raise AirflowFailException(
                f"diff gate: committed schema fingerprint {observed[:16]} differs from the approved post-state "
                f"{expected[:16]}: something changed the store after the guarded commit"
            )
        self.log.info("committed state equals the approved post-state (%s)", observed[:16])
        return {"verdict": "pass", "schema_fingerprint": observed}
