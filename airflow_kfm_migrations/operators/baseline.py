from __future__ import annotations

import uuid
from typing import Any

from airflow.sdk import BaseOperator

from airflow_kfm_migrations.operators.base import MigrationOperator


def committed_view(bundle: Any, opts: Any) -> tuple[Any, Any]:
    """(baseline of the committed state, last ledger record), read under the store's lock.

    The session is always aborted: reading changes nothing (PostgreSQL reads inside a
    transaction that is rolled back; search and graph take and release their lock).
    """
    from airflow_kfm_migrations.stores.base import open_store

    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    with store.session(bundle, uuid.uuid4().hex) as s:
        try:
            return s.baseline(), s.ledger_last()
        finally:
            s.abort()


class BaselineOperator(MigrationOperator):
    """Capture a baseline (``phase`` pre or post) of the committed state of the store.

    The governed run takes its own pre/post inside the apply step (in-transaction on
    PostgreSQL); these are the out-of-run views reviewers and the diff gate compare with.
    """

    template_fields = (*MigrationOperator.template_fields, "phase")

    def __init__(
        self,
        *,
        phase: str,
        migration_id: str,
        conn_id: str | None = None,
        environment: str | None = None,
        bundles_root: str | None = None,
        registry_path: str | None = None,
        artifacts_root: str | None = None,
        fail_on_drift: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if phase not in {"pre", "post"}:
            raise ValueError("phase must be 'pre' or 'post'")
        # BaseOperator directly: every wrapped __init__ level deep-copies the DAG params again,
        # which is most of a DAG file's parse time with a thousand migrations.
        BaseOperator.__init__(self, **kwargs)
        self.set_fields(migration_id, conn_id, environment, bundles_root, registry_path, artifacts_root, fail_on_drift)
        self.phase = phase

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.util.digest import write_json

        _s, bundle, opts = self.run_options(context)
        baseline, _ledger = committed_view(bundle, opts)
        path = opts.artifacts_dir / "baselines" / f"committed-{self.phase}.json"
        digest = write_json(path, baseline.model_dump(mode="json", by_alias=True))
        self.log.info(
            "%s baseline: %d objects, schema %s, protected %s",
            self.phase,
            len(baseline.objects),
            baseline.schema_fingerprint[:16],
            baseline.protected_fingerprint[:16],
        )
        return {
            "sha256": digest,
            "schema_fingerprint": baseline.schema_fingerprint,
            "protected_fingerprint": baseline.protected_fingerprint,
            "objects": len(baseline.objects),
        }
