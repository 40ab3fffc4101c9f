"""The store protocol: one module per store kind implements it (pgroll's layout).

A store knows how to plan statically, take baselines, run the forward and rollback
artifacts under its own locks, and keep a ledger of applied migrations inside the store.
Everything store-agnostic (diff, gate, receipts, registry) lives outside ``stores/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..bundle import Bundle
from ..contracts.models import Baseline, DiffSummary, Finding, LimitCheck, WriteCount


@dataclass(frozen=True)
class PlannedStatement:
    index: int
    kind: str  # DDL | DML | other
    statement: str  # node type, e.g. IndexStmt / create_index
    targets: tuple[str, ...]
    transactional: bool
    note: str | None = None


@dataclass(frozen=True)
class Plan:
    migration_id: str
    store: str
    statements: tuple[PlannedStatement, ...]
    findings: tuple[Finding, ...] = ()

    @property
    def refused(self) -> bool:
        return any(f.tier == "hard_fail" for f in self.findings)

    def as_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "store": self.store,
            "statements": [
                {
                    "index": s.index,
                    "kind": s.kind,
                    "statement": s.statement,
                    "targets": list(s.targets),
                    "transactional": s.transactional,
                    "note": s.note,
                }
                for s in self.statements
            ],
            "findings": [f.model_dump(mode="json", exclude_none=True) for f in self.findings],
            "refused": self.refused,
        }


@dataclass(frozen=True)
class LedgerRecord:
    migration_id: str
    operation: str  # apply | rollback
    status: str
    bundle_digest: str
    artifacts: dict[str, str]  # relpath -> sha256
    environment: str
    run_id: str
    pre_schema_fingerprint: str
    pre_protected_fingerprint: str
    post_schema_fingerprint: str
    post_scope_fingerprint: str
    applied_at: str = ""
    receipt_digest: str | None = None


@dataclass
class ApplyOutcome:
    """What running a script did. ``facts`` are store-specific, policy-safe numbers the
    gate needs (e.g. estimated rows of tables that gained an index)."""

    ok: bool
    writes: list[WriteCount] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    statements_run: int = 0
    metrics: dict[str, int | float | str] = field(default_factory=dict)


class StoreSession(Protocol):
    """Work done while holding the store's lock.

    Transactional sessions (PostgreSQL) keep one transaction open from the lock to
    ``commit``/``abort``: nothing ``apply`` did is visible or durable before ``commit``.
    Non-transactional sessions apply durably, and the lifecycle compensates with the
    rollback artifact when the gate fails.
    """

    transactional: bool

    def ledger_last(self) -> LedgerRecord | None: ...
    def baseline(self) -> Baseline: ...
    def apply(self) -> ApplyOutcome: ...
    def rollback(self) -> ApplyOutcome: ...
    def facts(self, pre: Baseline, post: Baseline) -> dict[str, Any]: ...
    def record(self, record: LedgerRecord) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class Store(Protocol):
    kind: ClassVar[str]
    conn_id: str

    def plan(self, bundle: Bundle) -> Plan: ...
    def rehearsable(self, bundle: Bundle) -> bool:
        """True when ``abort`` after ``apply`` leaves no trace, so --dry-run may apply."""
        ...

    def session(self, bundle: Bundle, run_id: str) -> AbstractContextManager[StoreSession]: ...
    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]: ...
    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str: ...
    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]: ...


def iter_nonempty(items: list[str]) -> Iterator[str]:
    yield from (i for i in items if i)
