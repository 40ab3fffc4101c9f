"""The protected guard: while a statement that commits as it goes runs (``CALL { … } IN
TRANSACTIONS``), another transaction of the run holds the write lock of every node of every
protected label (no approval covering it), so that no batch can change, delete or re-link a
protected node before anything could check it.

How it works, on Neo4j 5:

- The guard is an explicit transaction tagged ``{kfm_run_id, kfm_guard}``. For each guarded
  label it runs ``MATCH (p:L) SET p:L``: re-adding a label a node has changes nothing, but
  takes the node's exclusive lock until the transaction ends. Writing a node's properties or
  labels, deleting it, and creating or deleting a relationship attached to it all need that
  lock; reads need none. The guard checks that the server holds at least one lock more per
  node than before (``SHOW TRANSACTIONS … activeLockCount``), or refuses.
- A watcher thread polls ``SHOW TRANSACTIONS``. A transaction of the run (by its metadata,
  or its batches by ``outerTransactionId``) that waits for the guard, directly or behind
  another writer that does, is a write to a protected node: the watcher terminates the
  run's statement (its outer transaction, so ``ON ERROR CONTINUE`` cannot skip past it) and
  the session reports ``batched_protected_write``. The batch that waited is rolled back;
  batches committed before it never touched a protected node.
- The watcher also stops the statement when the guard transaction is gone (ended by the
  server), and ends the guard's own wait for locks after ``acquire_seconds``.
- Leaving the context rolls the guard back: it never wrote anything.

Other writers that touch protected nodes wait for the guard; they go on when it ends.
"""

from __future__ import annotations

import re
import threading
import time
from contextlib import suppress
from typing import Any

from airflow_kfm_migrations.stores.graph.cypher import quote

POLL_SECONDS = 0.1
_BLOCKED = re.compile(r"Blocked by:\s*\[([^\]]*)\]")
SHOW = (
    "SHOW TRANSACTIONS YIELD transactionId AS id, status, metaData AS meta, outerTransactionId AS outer, "
    "activeLockCount AS locks"
)


class GuardError(Exception):
    """The guard could not hold the protected nodes: the statement must not run."""


class ProtectedGuard:
    """``with ProtectedGuard(...) as guard:`` run the early-committing statement (tagged with
    ``kfm_run_id``); then ``guard.tripped`` says why it was stopped, or None."""

    def __init__(
        self,
        driver: Any,
        database: str | None,
        run_id: str,
        labels: list[str],
        *,
        statement: int,
        acquire_seconds: float,
    ) -> None:
        self.driver = driver
        self.database = database
        self.run_id = run_id
        self.labels = labels
        self.token = f"{run_id}:{statement}"
        self.acquire_seconds = acquire_seconds
        self.nodes = 0  # protected nodes held
        self.tripped: str | None = None  # why the run's statement was stopped
        self.watch_error: str | None = None
        self._acquired = False
        self._acquire_timed_out = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: Any = None
        self._tx: Any = None

    def _new_session(self) -> Any:
        kw: dict[str, Any] = {"notifications_min_severity": "OFF"}
        if self.database:
            kw["database"] = self.database
        return self.driver.session(**kw)

    # -- the guard transaction --------------------------------------------------

    def __enter__(self) -> ProtectedGuard:
        import neo4j.exceptions as nx

        self._thread = threading.Thread(target=self._watch, name=f"kfm-guard-{self.token}", daemon=True)
        self._session = self._new_session()
        try:
            self._tx = self._session.begin_transaction(metadata={"kfm_run_id": self.run_id, "kfm_guard": self.token})
            self._tx.run("RETURN 1").consume()  # the transaction exists on the server from here
            before = self._own_locks()
            self._thread.start()
            for label in self.labels:
                row = self._tx.run(f"MATCH (p:{quote(label)}) SET p:{quote(label)} RETURN count(p) AS n").single()
                self.nodes += int(row["n"]) if row else 0
            after = self._own_locks()
        except (nx.Neo4jError, nx.DriverError) as exc:
            self._close()
            if self._acquire_timed_out:
                raise GuardError(
                    f"another transaction held protected nodes for more than {self.acquire_seconds:g}s"
                ) from None
            raise GuardError(f"{type(exc).__name__}: {getattr(exc, 'code', None) or 'no status code'}") from None
        if before is None or after is None or after - before < self.nodes:
            self._close()
            raise GuardError(
                f"the server does not show the locks of the {self.nodes} protected node(s) "
                f"(active locks {before} before, {after} after)"
            )
        self._acquired = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=10)
        with suppress(Exception):  # broad: a guard whose connection is gone was rolled back by the server
            if self._tx is not None:
                self._tx.rollback()
        with suppress(Exception):  # broad: as above
            if self._session is not None:
                self._session.close()
        self._tx = self._session = None

    def _own_locks(self) -> int | None:
        with self._new_session() as s:
            rows = [dict(r) for r in s.run(SHOW)]
        mine = [r for r in rows if self._is_guard(r)]
        return int(mine[0]["locks"]) if mine else None

    # -- the watcher ------------------------------------------------------------

    def _watch(self) -> None:
        deadline = time.monotonic() + self.acquire_seconds
        try:
            with self._new_session() as s:
                while not self._stop.wait(POLL_SECONDS):
                    rows = {r["id"]: r for r in (dict(x) for x in s.run(SHOW))}
                    guard = next((i for i, r in rows.items() if self._is_guard(r)), None)
                    if not self._acquired:
                        if guard is not None and time.monotonic() > deadline:
                            self._acquire_timed_out = True
                            s.run("TERMINATE TRANSACTIONS $ids", ids=[guard]).consume()
                            return
                        continue
                    why = self._trip_reason(rows, guard)
                    if why:
                        self.tripped = why
                        ours = [i for i, r in rows.items() if self._ours(r) and not r.get("outer")]
                        if ours:
                            s.run("TERMINATE TRANSACTIONS $ids", ids=ours).consume()
                        return
        except Exception as exc:  # broad: a watcher that cannot watch leaves the locks held; the statement then waits
            self.watch_error = type(exc).__name__

    def _is_guard(self, row: dict[str, Any]) -> bool:
        return (row.get("meta") or {}).get("kfm_guard") == self.token

    def _ours(self, row: dict[str, Any]) -> bool:
        meta = row.get("meta") or {}
        return meta.get("kfm_run_id") == self.run_id and "kfm_guard" not in meta

    def _trip_reason(self, rows: dict[str, dict[str, Any]], guard: str | None) -> str | None:
        ours = {i for i, r in rows.items() if self._ours(r)}
        ours |= {i for i, r in rows.items() if r.get("outer") in ours}
        if not ours:
            return None
        if guard is None:
            return "the protected guard's transaction ended while the statement ran"
        for i in sorted(ours):
            path = self._waits_for_guard(rows, i, guard)
            if path is not None:
                if len(path) == 1:
                    return "it waited for the lock of a protected node"
                return f"it waited behind transaction {path[0]}, which waits for the lock of a protected node"
        return None

    @staticmethod
    def _waits_for_guard(rows: dict[str, dict[str, Any]], start: str, guard: str) -> list[str] | None:
        """The chain of transactions ``start`` waits for up to the guard, or None."""
        seen = {start}
        todo: list[tuple[str, list[str]]] = [(start, [])]
        while todo:
            tx, path = todo.pop()
            m = _BLOCKED.search(str(rows.get(tx, {}).get("status") or ""))
            for blocker in (x.strip() for x in (m.group(1).split(",") if m else [])):
                if blocker == guard:
                    return [*path, guard]
                if blocker and blocker not in seen:
                    seen.add(blocker)
                    todo.append((blocker, [*path, blocker]))
        return None
