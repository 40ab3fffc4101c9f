from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.operators.base import MigrationOperator


class PreflightOperator(MigrationOperator):
    """Checks that write nothing: declaration, policy, registry status/approvals, static plan,
    and the declaration's ``requires``, each applied in the target store (read from its ledger)."""

    ui_color = "#e8f4fd"

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_kfm_migrations.engine.preflight import preflight, requirements_check
        from airflow_kfm_migrations.engine.run import RunRecorder
        from airflow_kfm_migrations.errors import KfmError
        from airflow_kfm_migrations.operators.common import table
        from airflow_kfm_migrations.operators.compat import AirflowFailException
        from airflow_kfm_migrations.stores.base import missing_packages, open_store

        try:
            _s, bundle, opts = self.run_options(context)
            run = RunRecorder(bundle, opts, "apply")
            reason = preflight(run)
            if reason is None:
                # A kind whose store extra is not installed here fails now, naming the pip install.
                reason = missing_packages(bundle.type, use_hook=opts.use_hook)
            if reason is None:
                plan = open_store(bundle.type, opts.conn_id, plan_only=True).plan(bundle)
                self.log.info(
                    "%s",
                    table(
                        "plan",
                        [(str(p.index), p.kind, p.statement, ", ".join(p.targets)) for p in plan.statements],
                        ("#", "kind", "statement", "targets"),
                    ),
                )
                hard = [f for f in plan.findings if f.tier == "hard_fail"]
                reason = f"static plan refused: {hard[0].message}" if hard else None
            if reason is None and getattr(bundle.declaration, "requires", None):
                # The one check that reads the store (its ledger, without locks or writes).
                store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
                reason = requirements_check(run, store)
        except KfmError as exc:
            raise AirflowFailException(f"preflight refused {self.migration_id}: {exc}") from None
        if reason:
            raise AirflowFailException(f"preflight refused {self.migration_id}: {reason}")
        return {"bundle_digest": bundle.digest, "environment": opts.environment}
