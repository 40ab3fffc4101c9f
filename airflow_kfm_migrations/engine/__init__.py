"""The store-agnostic governed lifecycle: what the CLI and the Airflow operators both call."""

from __future__ import annotations

from airflow_kfm_migrations.engine.backfill import run_backfill
from airflow_kfm_migrations.engine.lifecycle import run_migration
from airflow_kfm_migrations.engine.rollback import rollback_migration
from airflow_kfm_migrations.engine.run import RunOptions, RunRecorder, RunResult

__all__ = ["RunOptions", "RunRecorder", "RunResult", "rollback_migration", "run_backfill", "run_migration"]
