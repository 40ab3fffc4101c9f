"""The graph's governance state: the ``:KfmLock`` and ``:KfmMigration`` nodes and their schema.

They never appear in baselines or accounting, and a migration may never touch them: the
scope treats their labels as forbidden and the plan refuses statements on their schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOCK_LABEL = "KfmLock"
LEDGER_LABEL = "KfmMigration"
GOVERNANCE_LABELS = frozenset({LOCK_LABEL, LEDGER_LABEL})
LOCK_KEY = "store"  # (:KfmLock {key: 'store'}): the one store lock
INFLIGHT_PREFIX = "inflight:"  # (:KfmLock {key: 'inflight:<migration id>'}): an apply under way
GOVERNANCE_SCHEMA = frozenset({"kfm_lock_key", "kfm_migration_id"})


def ensure_schema(write: Callable[..., Any]) -> None:
    """The lock key's uniqueness (what makes taking the lock atomic) and the ledger's index."""
    write(f"CREATE CONSTRAINT kfm_lock_key IF NOT EXISTS FOR (l:{LOCK_LABEL}) REQUIRE l.key IS UNIQUE")
    write(f"CREATE INDEX kfm_migration_id IF NOT EXISTS FOR (m:{LEDGER_LABEL}) ON (m.migration_id)")
