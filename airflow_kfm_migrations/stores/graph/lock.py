"""The graph lock and the in-flight record, both ``:KfmLock`` nodes.

``(:KfmLock {key: 'store'})`` is the one store lock: taken atomically (the key is unique),
refreshed by a heartbeat before every statement, and broken by the next run when its
holder is dead (its process gone on this host) or stale (no sign of life for
``KFM_GRAPH_LOCK_STALE_SECONDS``). ``break-lock`` removes it by hand (``lock_holder`` and
``break_lock``).

``(:KfmLock {key: 'inflight:<migration id>'})`` records an apply under way with its
pre-baseline's fingerprints, until the run is recorded in the ledger or compensated; see
``GraphSession`` for how an interrupted run is recovered.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.errors import AdminRefused, LockedError, RefusedError
from airflow_kfm_migrations.stores.base import LockHolder
from airflow_kfm_migrations.stores.graph.client import Connect, RunQuery, WriteQuery
from airflow_kfm_migrations.stores.graph.governance import INFLIGHT_PREFIX, LOCK_KEY, LOCK_LABEL
from airflow_kfm_migrations.util.liveness import holder_gone, host_identity

STALE_ENV = "KFM_GRAPH_LOCK_STALE_SECONDS"  # named in refusals; read through config.settings()


def lock_stale_seconds() -> float:
    """``KFM_GRAPH_LOCK_STALE_SECONDS`` (default 3600), read when called: a lock whose holder
    showed no sign of life (a statement started, a phase changed) for longer is broken by the
    next run."""
    return settings().graph_lock_stale_seconds


# ------------------------------------------------------------------------- the lock


def lock_props(migration_id: str, run_id: str) -> dict[str, Any]:
    return {
        "key": LOCK_KEY,
        "migration_id": migration_id,
        "run_id": run_id,
        "host": host_identity(),
        "pid": os.getpid(),
        "phase": "open",
    }


def stale_reason(holder: dict[str, Any]) -> str | None:
    """Why the holder (a row with ``host``, ``pid``, ``age`` in ms) is dead (None: it may be alive)."""
    pid = holder.get("pid")
    if holder_gone(holder.get("host"), pid):
        return f"its process {pid} on this host is gone"
    limit = lock_stale_seconds()
    age = (holder.get("age") or 0) / 1000
    if holder.get("age") is not None and age > limit:
        return f"no sign of life for {age:.0f}s > {STALE_ENV}={limit:g}"
    return None


def acquire(run: RunQuery, write: WriteQuery, *, conn_id: str, migration_id: str, run_id: str) -> None:
    """Take the store lock for ``run_id``, taking a dead holder's over; LockedError when a
    live run holds it."""
    import neo4j.exceptions as nx

    for _attempt in range(3):
        try:
            write(
                f"CREATE (l:{LOCK_LABEL}) SET l = $props, l.acquired_at = timestamp(), l.heartbeat = timestamp()",
                props=lock_props(migration_id, run_id),
            )
            return
        except nx.ConstraintError:
            held = run(
                f"MATCH (l:{LOCK_LABEL} {{key: $key}}) RETURN l.migration_id AS mid, l.run_id AS run, "
                "l.phase AS phase, l.host AS host, l.pid AS pid, "
                "timestamp() - coalesce(l.heartbeat, l.acquired_at) AS age",
                key=LOCK_KEY,
            )
            if not held:
                continue  # released meanwhile: try again
            h = held[0]
            why = stale_reason(h)
            if why is None:
                age = (h.get("age") or 0) / 1000
                raise LockedError(
                    f"another run ({h['mid']}, run {str(h['run'])[:12]}, phase {h.get('phase') or '?'}) holds "
                    f"the graph lock on {conn_id}; refusing to run concurrently. If that run was "
                    f"killed, the lock is broken by the next run once its process is gone (same host) or "
                    f"after {lock_stale_seconds():g}s without a sign of life ({STALE_ENV}; "
                    f"last one {age:.0f}s ago)"
                ) from None
            # Take the dead run's lock over (atomic: only if it is still that run's lock).
            taken = run(
                f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $old}}) "
                "SET l = $props, l.acquired_at = timestamp(), l.heartbeat = timestamp(), "
                "l.broken_from = $old, l.broken_because = $why RETURN count(l) AS n",
                key=LOCK_KEY,
                old=h["run"],
                props=lock_props(migration_id, run_id),
                why=why,
            )
            if taken and taken[0]["n"] == 1:
                return
    raise LockedError(f"could not take the graph lock on {conn_id}")


def heartbeat(run: RunQuery, run_id: str, **props: Any) -> bool:
    """Update ``run_id``'s lock node (a heartbeat with it); False when the lock is no longer its."""
    rows = run(
        f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) SET l += $props, l.heartbeat = timestamp() "
        "RETURN count(l) AS n",
        key=LOCK_KEY,
        run=run_id,
        props=props,
    )
    return bool(rows and rows[0]["n"] == 1)


def release(write: WriteQuery, run_id: str) -> bool:
    """Delete ``run_id``'s lock node; False when that failed (the lock then goes stale)."""
    try:
        write(f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=LOCK_KEY, run=run_id)
    except Exception:  # broad: whatever failed, the lock goes stale and can be broken by the next run
        return False
    return True


# ------------------------------------------------------------------- the in-flight record


def inflight_key(migration_id: str) -> str:
    return INFLIGHT_PREFIX + migration_id


def start_inflight(write: WriteQuery, key: str, props: dict[str, Any]) -> None:
    write(
        f"MERGE (l:{LOCK_LABEL} {{key: $key}}) SET l = $props, l.started_at = timestamp(), l.heartbeat = timestamp()",
        key=key,
        props={"key": key, **props},
    )


def inflight_progress(write: WriteQuery, key: str, *, statement: int, statements: int, phase: str) -> None:
    write(
        f"MATCH (l:{LOCK_LABEL} {{key: $key}}) SET l.statement = $n, l.statements = $total, "
        "l.phase = $phase, l.heartbeat = timestamp()",
        key=key,
        n=statement,
        total=statements,
        phase=phase,
    )


def mark_compensation_failed(write: WriteQuery, key: str, why: str) -> None:
    write(f"MATCH (l:{LOCK_LABEL} {{key: $key}}) SET l.compensation_failed = $why", key=key, why=why)


def delete_inflight(write: WriteQuery, key: str, run_id: str | None = None) -> None:
    """Delete the in-flight record (only ``run_id``'s, when given)."""
    if run_id is None:
        write(f"MATCH (l:{LOCK_LABEL} {{key: $key}}) DELETE l", key=key)
    else:
        write(f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=key, run=run_id)


@dataclass(frozen=True)
class Interrupted:
    """An in-flight record found by the next run: an apply that never finished."""

    migration_id: str
    run_id: str
    record: dict[str, Any]  # the node's properties
    age_ms: int | float | None  # since its last sign of life

    @property
    def where(self) -> str:
        rec = self.record
        return (
            f"run {self.run_id[:12]} of {self.migration_id} was interrupted while {rec.get('phase', 'applying')} "
            f"(statement {rec.get('statement', 0)} of {rec.get('statements', '?')}, "
            f"last sign of life {(self.age_ms or 0) / 1000:.0f}s ago)"
        )


def interrupted_runs(run: RunQuery) -> list[Interrupted]:
    rows = run(
        f"MATCH (l:{LOCK_LABEL}) WHERE l.key STARTS WITH $prefix RETURN properties(l) AS p, "
        "timestamp() - coalesce(l.heartbeat, l.started_at) AS age ORDER BY l.key",
        prefix=INFLIGHT_PREFIX,
    )
    out = []
    for row in rows:
        rec = dict(row["p"])
        out.append(Interrupted(str(rec.get("migration_id")), str(rec.get("run_id")), rec, row.get("age")))
    return out


_RUN_TRANSACTIONS = (
    "SHOW TRANSACTIONS YIELD transactionId, metaData WHERE metaData.kfm_run_id = $run RETURN transactionId AS id"
)


def terminate_run(run: RunQuery, run_id: str) -> list[str]:
    """Terminate the transactions a run tagged with its id that run now; their ids."""
    ids = [r["id"] for r in run(_RUN_TRANSACTIONS, run=run_id)]
    if ids:
        run("TERMINATE TRANSACTIONS $ids", ids=ids)
    return ids


def stop_orphans(run: RunQuery, run_id: str, where: str) -> None:
    """A dead client's statement normally ends with its connection; one that still runs on
    the server (a partitioned client) is terminated before compensating."""
    deadline = time.monotonic() + 30
    while ids := [r["id"] for r in run(_RUN_TRANSACTIONS, run=run_id)]:
        if time.monotonic() > deadline:
            raise LockedError(f"{where}; its statements still run on the server ({', '.join(ids)}); try later")
        run("TERMINATE TRANSACTIONS $ids", ids=ids)
        time.sleep(0.5)


# ------------------------------------------------------------------------ break-lock


@contextmanager
def _maintenance(connect: Connect, database: str | None, conn_id: str) -> Iterator[Any]:
    """A driver session for ``break-lock``; failures become AdminRefused naming their type
    only (driver errors may name hosts)."""
    try:
        driver = connect()
    except RefusedError:
        raise
    except Exception as exc:  # broad: any driver or configuration failure, named by type, never the URI
        raise AdminRefused(f"cannot connect to {conn_id} ({type(exc).__name__})") from None
    try:
        kw: dict[str, Any] = {"database": database} if database else {}
        with driver.session(**kw) as s:
            yield s
    except RefusedError:
        raise
    except Exception as exc:  # broad: not only neo4j errors (sockets, values); named by type, never the URI
        raise AdminRefused(f"cannot break the graph lock on {conn_id} ({type(exc).__name__})") from None
    finally:
        driver.close()


def lock_holder(connect: Connect, database: str | None, conn_id: str) -> LockHolder | None:
    """Who holds the store lock (age since it was acquired), or None."""
    with _maintenance(connect, database, conn_id) as s:
        rows = [
            r.data()
            for r in s.run(
                f"MATCH (l:{LOCK_LABEL} {{key: $key}}) RETURN l.migration_id AS mid, l.run_id AS run, "
                "l.acquired_at AS at, timestamp() - l.acquired_at AS age",
                key=LOCK_KEY,
            )
        ]
        if not rows:
            return None
        h = rows[0]
        age = float(h["age"] or 0) / 1000
        return LockHolder(
            owner=str(h["run"]),
            since=datetime.fromtimestamp(float(h["at"] or 0) / 1000, UTC).isoformat(),
            age_seconds=round(age, 1),
            stale=age > lock_stale_seconds(),
            migration=str(h["mid"]),
        )


def break_lock(connect: Connect, database: str | None, conn_id: str, holder: LockHolder) -> None:
    """Delete the store lock if ``holder`` still holds it; LockedError when it changed."""
    with _maintenance(connect, database, conn_id) as s:
        summary = s.run(
            f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=LOCK_KEY, run=holder.owner
        ).consume()
        if summary.counters.nodes_deleted != 1:
            raise LockedError("the graph lock changed since it was read (released or taken over); not broken")
