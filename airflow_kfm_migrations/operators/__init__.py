"""Airflow operators: thin shells over the core lifecycle (one code path with the CLI)."""

from .apply import ApplyOperator
from .backfill import BackfillOperator
from .baseline import BaselineOperator
from .diff_gate import DiffGateOperator
from .preflight import PreflightOperator
from .receipt import ReceiptOperator
from .rollback import RollbackOperator

__all__ = [
    "ApplyOperator",
    "BackfillOperator",
    "BaselineOperator",
    "DiffGateOperator",
    "PreflightOperator",
    "ReceiptOperator",
    "RollbackOperator",
]
