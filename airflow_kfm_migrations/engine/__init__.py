"""The store-agnostic governed lifecycle: what the CLI and the Airflow operators both call."""

from __future__ import annotations

from airflow_kfm_migrations.engine.backfill import run_backfill
from airflow_kfm_migrations.engine.lifecycle import RunOptions, RunResult, rollback_migration, run_migration

__all__ = ["RunOptions", "RunResult", "rollback_migration", "run_backfill", "run_migration"]
