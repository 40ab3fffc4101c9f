"""Airflow operators: thin shells over the core lifecycle (one code path with the CLI)."""

from airflow_kfm_migrations.operators.apply import ApplyOperator
from airflow_kfm_migrations.operators.backfill import BackfillOperator
from airflow_kfm_migrations.operators.baseline import BaselineOperator
from airflow_kfm_migrations.operators.diff_gate import DiffGateOperator
from airflow_kfm_migrations.operators.preflight import PreflightOperator
from airflow_kfm_migrations.operators.receipt import ReceiptOperator
from airflow_kfm_migrations.operators.rollback import ManualRollbackOperator, RollbackOperator

__all__ = [
    "ApplyOperator",
    "BackfillOperator",
    "BaselineOperator",
    "DiffGateOperator",
    "ManualRollbackOperator",
    "PreflightOperator",
    "ReceiptOperator",
    "RollbackOperator",
]
