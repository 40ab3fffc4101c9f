"""PostgreSQL / PostGIS store: static plan (pglast), catalog baselines, the transactional
guard, compensating rollback, advisory locks and the in-store ledger.

Transactional runs do everything between the lock and COMMIT in one transaction, so a
refused, failed or killed run leaves nothing behind. Declared non-transactional runs
(``transactional: false``) apply statement by statement and are compensated by the
rollback artifact when the post-commit gate fails.

This module is the ``Store`` the engine opens; the work is done by its neighbours:
``plan`` (static plan), ``capture`` (baselines, reusing earlier ones through ``state``),
``evaluate`` (the gate's findings), ``session`` (a run under the locks), ``ledger``,
``backfill`` and ``backfill_checks`` (declared backfills), ``client`` (connections),
``scope``, and the catalog queries (``catalog``, ``catalog_family``, ``catalog_global``,
``catalog_sql``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from airflow_kfm_migrations.contracts.models import (
    Baseline,
    DiffSummary,
    Finding,
    LimitCheck,
    PostgisDeclaration,
    WriteCount,
)
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.stores.base import BatchEvent, LedgerRecord, Plan
from airflow_kfm_migrations.stores.postgis import capture, estimates, evaluate, ledger, plan, state
from airflow_kfm_migrations.stores.postgis.backfill import Engine
from airflow_kfm_migrations.stores.postgis.backfill_checks import static_problems
from airflow_kfm_migrations.stores.postgis.client import (
    Connect,
    connector,
    db_error,
    never_connect,
)
from airflow_kfm_migrations.stores.postgis.held import HeldConnection
from airflow_kfm_migrations.stores.postgis.session import PgSession, open_session


class PostgisStore:
    kind: ClassVar[str] = "postgis"

    def __init__(self, connect: Connect, conn_id: str) -> None:
        self._connect = connect
        self.conn_id = conn_id
        self.captures = capture.Captures(conn_id)
        self._held: HeldConnection | None = None

    def connect(self) -> Any:
        """A connection: a new one, or inside ``held()`` the held one, lent."""
        return self._held.borrow() if self._held is not None else self._connect()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Every session, ledger read and baseline in the block shares one connection (the
        ``ConnectionHolding`` capability; see ``held``). The catalog states the captures
        adopt stay in memory meanwhile, and the newest is saved once, at the end."""
        if self._held is not None:
            yield
            return
        self._held = HeldConnection(self._connect)
        try:
            with self.captures.saving_once():
                yield
        finally:
            held, self._held = self._held, None
            held.close()

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_conn_id(cls, conn_id: str, *, use_hook: bool = False) -> PostgisStore:
        # One way to reach the store, with or without Airflow running the task: the provider's hook.
        return cls(connector(conn_id), conn_id)

    @classmethod
    def for_planning(cls, conn_id: str) -> PostgisStore:
        """A store that plans statically and never connects."""
        return cls(never_connect, conn_id)

    def rehearsable(self, bundle: Bundle) -> bool:
        return bool(bundle.declaration.transactional)

    # -- the Backfilling capability ------------------------------------------------

    def backfill_problems(self, bundle: Bundle) -> list[str]:
        return static_problems(bundle)

    def backfill_engine(
        self, bundle: Bundle, log: Callable[[str], None], progress: Callable[[BatchEvent], None] | None
    ) -> Engine:
        conn = self.connect()
        conn.autocommit = False
        return Engine(conn, bundle, log, progress)

    # -- plan -----------------------------------------------------------------

    def plan(self, bundle: Bundle) -> Plan:
        return plan.static_plan(bundle, self.kind)

    def estimated_rows(self, names: list[str]) -> dict[str, int | None]:
        """The RowEstimating capability: the planner's row estimates, read-only."""
        return estimates.estimated_rows(self._connect, self.conn_id, names)

    # -- baselines ------------------------------------------------------------

    def capture(self, cur: Any, decl: PostgisDeclaration) -> Baseline:
        """A catalog snapshot through ``cur`` (inside whatever transaction it is in)."""
        return self.captures.capture(cur, decl)

    def adopt(self, st: state.CatalogState | None) -> None:
        """Start later captures from ``st`` (see ``Captures.adopt``)."""
        self.captures.adopt(st)

    @property
    def reused(self) -> int:
        """Family objects the last capture took from an earlier one."""
        return self.captures.reused

    # The newest state known to be committed, and the last capture's (tests look at them).
    @property
    def _prior(self) -> state.CatalogState | None:
        return self.captures.prior

    @property
    def _last(self) -> state.CatalogState | None:
        return self.captures.last

    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str:
        decl = bundle.declaration
        assert isinstance(decl, PostgisDeclaration)
        return capture.scope_fingerprint(decl, baseline)

    # -- ledger ---------------------------------------------------------------

    def ledger_entry(self, migration_id: str, run_id: str) -> dict[str, Any] | None:
        """The ledger row of one run, read without locks or writes (for ``verify --conn-id``)."""
        return ledger.read_entry(self.connect, self.conn_id, migration_id, run_id)

    def ledger_entries(self, migration_id: str | None = None) -> list[LedgerRecord]:
        """Every ledger row (of ``migration_id``), newest first, read without locks or writes."""
        return ledger.entries(self.connect, self.conn_id, migration_id)

    def observe(self, bundle: Bundle) -> Baseline:
        """A baseline of the committed state, in a read-only transaction rolled back after."""
        import psycopg

        decl = bundle.declaration
        assert isinstance(decl, PostgisDeclaration)
        try:
            with self.connect() as conn:
                conn.read_only = True
                try:
                    with conn.cursor() as cur:
                        return self.captures.capture(cur, decl)
                finally:
                    conn.rollback()
                    conn.read_only = None
        except psycopg.Error as exc:
            raise RefusedError(f"cannot read the store on {self.conn_id}: {db_error(exc)}") from None

    # -- session --------------------------------------------------------------

    def session(self, bundle: Bundle, run_id: str) -> AbstractContextManager[PgSession]:
        # Outside held(), the capture state is written on a connection of its own, while the
        # run writes its receipt; inside, on the held one, after the run.
        share = self._connect if self._held is None else None
        return open_session(self.captures, self.connect, self.conn_id, bundle, run_id, share)

    # -- gate -----------------------------------------------------------------

    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]:
        return evaluate.evaluate(bundle, pre, post, writes, facts)

    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]:
        tables = {f"{c.schema_}/{c.table}" for c in summary.changes if c.table and c.kind != "rows"}
        tables |= {w.table.replace(".", "/", 1) for w in summary.writes}
        return sorted(tables)  # schema/table: KINDS["postgis"].asset_uri names them
