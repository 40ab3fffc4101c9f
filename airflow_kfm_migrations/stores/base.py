"""The store protocol: one subpackage per store kind implements it (pgroll's layout).

A store knows how to plan statically, take baselines, run the forward and rollback
artifacts under its own locks, and keep a ledger of applied migrations inside the store.
Everything store-agnostic (diff, gate, receipts, registry) lives outside ``stores/``.

``Store`` and ``StoreSession`` declare everything the engine calls on every kind. Abilities
only some kinds have are capability protocols (``Backfilling``, ``LockBreaking``,
``GarbageCollecting``, ``LegacyFingerprints``, ``Cancellable``), checked with ``isinstance``
at the one place that needs them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from airflow_kfm_migrations.contracts.models import Baseline, DiffSummary, Finding, LimitCheck, WriteCount
from airflow_kfm_migrations.declaration.bundle import Bundle


@dataclass(frozen=True)
class PlannedStatement:
    index: int
    kind: str  # DDL | DML | other
    statement: str  # node type, e.g. IndexStmt / create_index
    targets: tuple[str, ...]
    transactional: bool
    note: str | None = None
    # Where the statement is written and what it says, for a reviewer (None: not known).
    file: str | None = None  # display path of the script
    line: int | None = None  # 1-based line where the statement starts
    text: str | None = None  # the statement as written (comments before it left out)
    lock: str | None = None  # the lock it takes and what that blocks, from the store's lock table

    @property
    def where(self) -> str | None:
        """``file:line``, or None when the position is not known."""
        if self.file is None:
            return None
        return f"{self.file}:{self.line}" if self.line is not None else self.file


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
                    "file": s.file,
                    "line": s.line,
                    "text": s.text,
                    "lock": s.lock,
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
    actor: str | None = None  # who ran it (the receipt's actor); None in entries older than the field


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


@runtime_checkable
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
    def rollback_findings(self, pre: Baseline, post: Baseline) -> list[Finding]:
        """Hard fails that forbid committing a rollback (or compensation) whose script took
        the store from ``pre`` to ``post``, beyond what the fingerprint comparison checks: for
        PostGIS, a database- or cluster-level object the script changed (the fingerprint it
        is compared by leaves those out, since other sessions change them too). [] when none."""
        ...

    def recovered(self) -> str | None:
        """What this session cleaned up from a run that died holding the lock (a sentence for
        the receipt), or None: most sessions recover nothing."""
        ...

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        """Store the receipt's digest with the ledger entry of ``run_id`` (after commit)."""
        ...

    def commit(self) -> None: ...
    def abort(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    kind: ClassVar[str]
    conn_id: str

    @classmethod
    def from_conn_id(cls, conn_id: str, *, use_hook: bool = False) -> Self:
        """A store reached through an Airflow connection id."""
        ...

    @classmethod
    def for_planning(cls, conn_id: str) -> Self:
        """A store that only plans: it never connects."""
        ...

    def plan(self, bundle: Bundle) -> Plan: ...
    def rehearsable(self, bundle: Bundle) -> bool:
        """True when ``abort`` after ``apply`` leaves no trace, so --dry-run may apply."""
        ...

    def ledger_entry(self, migration_id: str, run_id: str) -> dict[str, Any] | None:
        """The ledger entry a run wrote, or None (read-only; verify's independent witness)."""
        ...

    def ledger_entries(self, migration_id: str | None = None) -> list[LedgerRecord]:
        """Every ledger entry (of ``migration_id``, or of all migrations), newest first; read
        without locks or writes (``history``, ``status``, ``requires``). [] without a ledger."""
        ...

    def observe(self, bundle: Bundle) -> Baseline:
        """A baseline of the committed state now, read without the lock and without writing
        (``status`` compares its scope fingerprint with the ledger's, for drift)."""
        ...

    def session(self, bundle: Bundle, run_id: str) -> AbstractContextManager[StoreSession]: ...
    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]: ...
    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str: ...
    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]:
        """The objects a committed run changed, as paths under the store (PostGIS
        ``schema/table``, search index or alias name, graph label); ``KINDS[kind].asset_uri``
        turns one into the asset URI of the connection's endpoint."""
        ...


# ----------------------------------------------------------------- capabilities


@dataclass(frozen=True)
class BatchEvent:
    """What the progress bar and the task log show after each committed backfill batch."""

    phase: str  # forward | reverse
    batch_no: int
    batches_run: int
    rows: int  # rows written by this batch, all tables
    rows_total: int  # rows written by the whole backfill so far (all runs), all tables
    keys: int  # keys of the target table covered so far in this run
    estimate: int | None  # keys this run expects to cover (None: unknown)
    elapsed_s: float
    final: bool = False

    @property
    def rate(self) -> float:
        return self.keys / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.estimate is None or self.rate <= 0:
            return None
        return max(0.0, (self.estimate - self.keys) / self.rate)


class BackfillEngine(Protocol):
    """Batches of a declared backfill, one short transaction each, with durable progress.

    Handed out by a ``Backfilling`` store; the engine's orchestration (``engine/backfill``)
    drives it. Status values it records in the ledger: ``PENDING`` while batches remain,
    ``succeeded`` when complete, ``ROLLED_BACK`` once reversed."""

    PENDING: ClassVar[str]
    ROLLED_BACK: ClassVar[str]
    key: str

    def lock(self) -> None: ...
    def unlock(self) -> None: ...
    def close(self) -> None: ...
    def ledger(self) -> tuple[int, str, str, dict[str, str]] | None: ...
    def check_key(self) -> str | None: ...
    def key_summary(self) -> str: ...
    def reverse_pending(self) -> int: ...
    def last_progress(self) -> tuple[int, str | None, int] | None:
        """(last batch, its last key, rows so far) of this backfill; None when never started."""
        ...

    def complete_if_done(self) -> bool: ...
    def start(self, *, mark_pending: bool) -> tuple[int, str | None, int]: ...
    def run_forward(self, last: tuple[int, str | None, int]) -> int: ...
    def reverse(self) -> tuple[bool, str | None, int]: ...
    def verify_after_reverse(self) -> tuple[bool, str]: ...
    def retire(self, run_id: str, status: str) -> None: ...
    def metrics(self, phase: str, started: float) -> dict[str, int | float | str]: ...
    def summary(self, state: str) -> dict[str, Any]: ...


@runtime_checkable
class Backfilling(Protocol):
    """Stores that run declared backfills (PostGIS)."""

    def backfill_problems(self, bundle: Bundle) -> list[str]:
        """Static checks of the declared backfill (no connection)."""
        ...

    def backfill_engine(
        self, bundle: Bundle, log: Callable[[str], None], progress: Callable[[BatchEvent], None] | None
    ) -> BackfillEngine: ...


@runtime_checkable
class BackfillSession(Protocol):
    """Sessions of a ``Backfilling`` store: the backfill checks made in the guard's transaction."""

    def check_backfill_key(self) -> tuple[str | None, str]:
        """(problem or None, a description of the key) once the schema part ran."""
        ...

    def backfill_rollback_checks(self, run_id: str) -> list[tuple[str, bool, str | None]]:
        """Checks (name, passed, detail) made inside the rollback transaction; retires progress."""
        ...


@runtime_checkable
class LegacyFingerprints(Protocol):
    """Sessions of kinds whose schema fingerprint changed meaning in an upgrade (PostGIS): a
    rollback of an apply recorded before the upgrade compares the ledger's fingerprint with
    the one the earlier release would compute."""

    def legacy_restored(
        self, apply_pre: Baseline | None, post: Baseline, schema: str, protected: str
    ) -> tuple[bool, bool]:
        """(schema, protected objects) of ``post`` as the earlier release that recorded the
        fingerprints ``schema`` and ``protected`` (with ``apply_pre``, that apply's
        pre-baseline, when at hand) would judge them: restored or not."""
        ...


@runtime_checkable
class RowEstimating(Protocol):
    """Stores that can say, read-only, about how many rows a table holds (PostGIS: the
    planner's statistics), for the reviewer's view of a plan."""

    def estimated_rows(self, names: list[str]) -> dict[str, int | None]:
        """``schema.table`` -> estimated rows (None: never analysed); absent: no such table."""
        ...


@runtime_checkable
class LockBreaking(Protocol):
    """Kinds whose lock can outlive its holder (a document, a node): ``break-lock``."""

    def lock_holder(self, bundle: Bundle) -> LockHolder | None:
        """Who holds the lock that a run of ``bundle`` would take, or None."""
        ...

    def break_lock(self, bundle: Bundle, holder: LockHolder, *, run_id: str, reason: str) -> None:
        """Remove exactly ``holder``'s lock; raise LockedError when it changed meanwhile."""
        ...


@dataclass(frozen=True)
class LockHolder:
    owner: str  # the run id holding the lock
    since: str  # ISO 8601
    age_seconds: float
    stale: bool
    migration: str | None = None
    token: Any = None  # what the store needs to break exactly this hold (e.g. seq_no/primary_term)


@dataclass(frozen=True)
class GcDecision:
    index: str
    keep_until: str
    action: str  # deleted | would_delete | kept | gone
    why: str


@runtime_checkable
class GarbageCollecting(Protocol):
    """Sessions of kinds that keep old objects for a rollback (search: the old index)."""

    def last_entry(self) -> dict[str, Any] | None: ...
    def collect_garbage(self, now: datetime, *, dry_run: bool = False) -> list[GcDecision]: ...


@runtime_checkable
class Cancellable(Protocol):
    """Sessions that can stop their server-side work when the run is asked to stop
    (Airflow's ``on_kill``; see :mod:`airflow_kfm_migrations.util.cancel`)."""

    def cancel(self) -> None:
        """Called from another thread while the run's own thread is blocked in the store: ask
        the server to stop what the run is doing now (the running statement, the reindex
        task), and make the run's next step fail. The run then ends through its usual failure
        path (rollback, abort or compensation, lock released, receipt). Idempotent; never raises."""
        ...


@runtime_checkable
class ConnectionHolding(Protocol):
    """Stores that can keep one connection for many runs (``migrate``, ``status``): inside
    ``held()``, every session, ledger read and baseline of the store uses it, and each
    session leaves it as a new one would find it."""

    def held(self) -> AbstractContextManager[None]: ...


def open_store(kind: str, conn_id: str, *, use_hook: bool = False, plan_only: bool = False) -> Store:
    """The store of ``kind`` (a KINDS entry), imported on first use so that a kind whose
    client libraries are not installed only fails the runs that need it."""
    from airflow_kfm_migrations.errors import RefusedError
    from airflow_kfm_migrations.kinds import KINDS

    spec = KINDS.get(kind)
    if spec is None:
        raise RefusedError(f"no governed runner for type {kind!r}; scope cannot be enforced, refusing")
    module, _, cls = spec.store.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise RefusedError(_install_hint(kind, [exc.name or module])) from None
    if not plan_only:
        reason = missing_packages(kind, use_hook=use_hook)
        if reason:
            raise RefusedError(reason)
    klass: type[Store] = getattr(mod, cls)
    if plan_only:
        return klass.for_planning(conn_id)
    return klass.from_conn_id(conn_id, use_hook=use_hook)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a broken install
        return False


def _install_hint(kind: str, missing: list[str]) -> str:
    from airflow_kfm_migrations.kinds import KINDS

    spec = KINDS[kind]
    extras = [extra for extra, _c, _h in spec.clients] or [spec.extra]
    how = " or ".join(f"pip install 'airflow-kfm-migrations[{e}]'" for e in extras)
    return f"the {kind} store needs packages that are not installed ({', '.join(missing)}); {how}"


def missing_packages(kind: str, *, use_hook: bool = False) -> str | None:
    """Why a run of ``kind`` cannot start here (its client packages are not installed, with
    the ``pip install`` that fixes it, one line), or None. Planning needs none of them."""
    from airflow_kfm_migrations.kinds import KINDS

    spec = KINDS.get(kind)
    if spec is None or not spec.clients:
        return None
    missing: list[str] = []
    for _extra, client, hooks in spec.clients:
        gone = [m for m in (*client, *(hooks if use_hook else ())) if not _importable(m)]
        if not gone:
            return None
        missing += [m for m in gone if m not in missing]
    return _install_hint(kind, missing)


def iter_nonempty(items: list[str]) -> Iterator[str]:
    yield from (i for i in items if i)
