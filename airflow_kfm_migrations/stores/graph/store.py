"""Neo4j graph store: static plan of Cypher scripts, schema/count/protected-node baselines,
a lock node, the in-store ledger of ``:KfmMigration`` nodes, and compensating rollback.

Neo4j cannot mix schema and data writes in one transaction and cannot roll schema back,
so sessions are non-transactional: every statement runs in its own transaction, and the
lifecycle compensates with the rollback artifact when the gate fails. Before the first
write every forward and rollback statement is compiled with ``EXPLAIN`` (schema
statements are checked against the live schema instead): a statement the server rejects,
or whose plan names a forbidden, unapproved protected or out-of-scope label or relationship
type, refuses the run with the graph unchanged. No statement that commits before the gate
can change a protected node (see ``session`` and ``guard``). The ``:KfmLock`` and
``:KfmMigration`` nodes (and their schema) are governance state: they never appear in
baselines or accounting. A killed run is recovered by running the command again (see
``GraphSession``).

This module is the ``Store`` the engine opens; the work is done by its neighbours:
``plan`` (static plan), ``capture`` (baselines), ``evaluate`` (the gate's findings),
``session`` (a run under the lock), ``guard`` (protected nodes held during batched
statements), ``lock`` (lock node, in-flight record, break-lock), ``ledger``, ``client``
(connections), ``digests``, ``scope``, ``cypher``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, ClassVar

from airflow_kfm_migrations.contracts.models import (
    Baseline,
    DiffSummary,
    Finding,
    GraphDeclaration,
    LimitCheck,
    WriteCount,
)
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.stores.base import LedgerRecord, LockHolder, Plan
from airflow_kfm_migrations.stores.graph import capture, evaluate, ledger, lock, plan
from airflow_kfm_migrations.stores.graph.client import (
    Connect,
    RunQuery,
    connector,
    neo_error,
)
from airflow_kfm_migrations.stores.graph.session import GraphSession


class GraphStore:
    kind: ClassVar[str] = "graph"

    def __init__(self, connect: Connect | None, conn_id: str, database: str | None = None) -> None:
        self._connector = connect
        self.conn_id = conn_id
        self.database = database
        self._reader = capture.BaselineReader()  # remembers the tokens the last baseline found in use
        self._held: Any = None  # the driver ``held()`` keeps open

    @contextmanager
    def held(self) -> Iterator[None]:
        """One driver (and its connection pool) for every session and read in the block."""
        if self._held is not None or self._connector is None:
            yield
            return
        self._held = self._connector()
        try:
            yield
        finally:
            driver, self._held = self._held, None
            with suppress(Exception):  # broad: closing a driver whose connection is already gone
                driver.close()

    def _driver(self) -> tuple[Any, bool]:
        """(driver, whether the caller closes it)."""
        if self._held is not None:
            return self._held, False
        return self.connect(), True

    # -- construction ---------------------------------------------------------

    def rehearsable(self, bundle: Bundle) -> bool:
        return False  # Neo4j schema changes cannot be rolled back: dry runs stop after the plan

    @classmethod
    def for_planning(cls, conn_id: str) -> GraphStore:
        """A store that plans only and never connects."""
        return cls(None, conn_id)

    @classmethod
    def from_conn_id(cls, conn_id: str, *, use_hook: bool = False) -> GraphStore:
        # One way to reach the store, with or without Airflow running the task: the provider's hook.
        connect, database = connector(conn_id)
        return cls(connect, conn_id, database)

    def connect(self) -> Any:
        """A new ``neo4j.Driver`` for this store's connection; the caller closes it."""
        if self._connector is None:
            raise RefusedError("this graph store was opened for planning only")
        return self._connector()

    def ledger_entry(self, migration_id: str, run_id: str) -> dict[str, Any] | None:
        """The ledger node of one run, read without locks or writes (for ``verify --conn-id``)."""
        return ledger.read_entry(self.connect(), self.database, self.conn_id, migration_id, run_id)

    def ledger_entries(self, migration_id: str | None = None) -> list[LedgerRecord]:
        """Every ledger node (of ``migration_id``), newest first, read without locks or writes."""
        driver, own = self._driver()
        try:
            return ledger.entries(driver, self.database, self.conn_id, migration_id)
        finally:
            if own:
                with suppress(Exception):  # broad: closing a driver whose connection is already gone
                    driver.close()

    def observe(self, bundle: Bundle) -> Baseline:
        """A baseline of the graph now, read in READ sessions without the lock."""
        decl = bundle.declaration
        assert isinstance(decl, GraphDeclaration)
        driver, own = self._driver()

        def run(query: str, **params: Any) -> list[dict[str, Any]]:
            with driver.session(
                database=self.database, default_access_mode="READ", notifications_min_severity="OFF"
            ) as s:
                return [dict(r) for r in s.run(query, params)]

        try:
            return self.capture(run, decl)
        except RefusedError:
            raise
        except Exception as exc:  # broad: any driver or server failure refuses, reported policy-safe
            raise RefusedError(f"cannot read the graph on {self.conn_id}: {neo_error(exc)}") from None
        finally:
            if own:
                with suppress(Exception):  # broad: closing a driver whose connection is already gone
                    driver.close()

    # -- plan and baselines ---------------------------------------------------

    def plan(self, bundle: Bundle) -> Plan:
        return plan.static_plan(bundle, self.kind)

    def capture(self, run: RunQuery, decl: GraphDeclaration) -> Baseline:
        """A baseline through ``run(query, **params) -> records as dicts`` (see ``BaselineReader``)."""
        return self._reader.capture(run, decl)

    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str:
        return capture.scope_fingerprint(bundle, baseline)

    # -- session --------------------------------------------------------------

    @contextmanager
    def session(self, bundle: Bundle, run_id: str) -> Iterator[GraphSession]:
        decl = bundle.declaration
        assert isinstance(decl, GraphDeclaration)
        driver, own = self._driver()
        s = GraphSession(driver, bundle, run_id, conn_id=self.conn_id, database=self.database, capture=self.capture)
        try:
            s.open()
            yield s
        finally:
            try:
                s.release()
            finally:
                if own:
                    with suppress(Exception):  # broad: closing a driver whose connection is already gone
                        driver.close()

    # -- gate -----------------------------------------------------------------

    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]:
        return evaluate.evaluate(bundle, pre, post, facts)

    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]:
        labels: set[str] = set()
        for c in summary.changes:
            if c.schema_ == "node" and c.table:
                labels.update(x for x in c.table.split("|") if x)
        return sorted(labels)  # KINDS["graph"].asset_uri names them

    # -- break-lock (LockBreaking) --------------------------------------------

    def lock_holder(self, bundle: Bundle) -> LockHolder | None:
        """Who holds the graph's store lock (one per graph, whatever the migration), or None."""
        return lock.lock_holder(self.connect, self.database, self.conn_id)

    def break_lock(self, bundle: Bundle, holder: LockHolder, *, run_id: str, reason: str) -> None:
        """Remove the store lock if ``holder`` still holds it (the in-flight record is kept);
        LockedError when it changed since it was read."""
        lock.break_lock(self.connect, self.database, self.conn_id, holder)
