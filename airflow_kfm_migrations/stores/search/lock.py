"""The migration lock: one document per migration in the governance index, created by the
run that takes it and renewed by a heartbeat thread every ``KFM_SEARCH_HEARTBEAT_SECONDS``
(default 30) for as long as the run holds it (optimistic concurrency on
``seq_no``/``primary_term``), deleted at the end of the session.

A holder is dead when its process is gone on this host (the document records the host
identity and the PID), or when its heartbeat is older than ``KFM_SEARCH_LOCK_STALE_SECONDS``
(default three heartbeats). The next run then takes the lock over, and the session
recovers what the dead run left (see :mod:`.inflight`). A live holder's lock is refused
with a message naming ``kfm-migrations break-lock`` and when the lock goes stale;
``break-lock`` removes it by hand (:func:`read_lock`, :func:`break_lock`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.stores.base import LockHolder
from airflow_kfm_migrations.stores.search.client import CallError, ClientFactory, SearchClient
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX, now_iso
from airflow_kfm_migrations.util.liveness import holder_gone, host_identity
from airflow_kfm_migrations.util.secret_scan import redact

log = logging.getLogger(__name__)

STALE_ENV = "KFM_SEARCH_LOCK_STALE_SECONDS"  # named in refusals; read through config.settings()


def heartbeat_seconds() -> float:
    """``KFM_SEARCH_HEARTBEAT_SECONDS`` (default 30), read when called."""
    return settings().search_heartbeat_seconds


def lock_stale_seconds() -> float:
    """How old a lock's heartbeat must be before another run takes it over:
    ``KFM_SEARCH_LOCK_STALE_SECONDS`` (default three heartbeats), read when called."""
    return settings().search_lock_stale_seconds


def lock_doc_id(migration_id: str) -> str:
    return f"lock:{migration_id}"


def dead_reason(src: dict[str, Any]) -> str | None:
    """Why the holder of a lock document (its ``_source``) is dead, or None (it may be alive)."""
    pid = src.get("pid")
    if holder_gone(src.get("host"), pid):
        return f"its process {pid} on this host is gone"
    age = time.time() - float(src.get("ts", 0) or 0)
    limit = lock_stale_seconds()
    if age > limit:
        return f"no heartbeat for {age:.0f}s > {STALE_ENV}={limit:g}"
    return None


def read_lock(client: SearchClient, migration_id: str) -> LockHolder | None:
    """The holder of ``migration_id``'s lock document, or None. ``token`` is the document's
    (seq_no, primary_term): :func:`break_lock` deletes exactly that version."""
    cur = client.get_doc(GOVERNANCE_INDEX, lock_doc_id(migration_id))
    if cur is None:
        return None
    src = cur.get("_source", {})
    age = max(0.0, time.time() - float(src.get("ts", 0) or 0))
    return LockHolder(
        owner=str(src.get("owner", "?")),
        since=str(src.get("at", "?")),
        age_seconds=round(age, 1),
        stale=dead_reason(src) is not None,
        token=(int(cur["_seq_no"]), int(cur["_primary_term"])),
    )


def break_lock(client: SearchClient, migration_id: str, holder: LockHolder, *, run_id: str, reason: str) -> None:
    """Delete the lock document as :func:`read_lock` saw it (a lock renewed or replaced since
    is left alone: 409) and leave a ``break_lock`` document in the governance index."""
    try:
        seq_no, primary_term = (int(v) for v in holder.token)
    except (TypeError, ValueError):
        raise RefusedError(f"the lock holder of {migration_id} was not read from the search cluster") from None
    try:
        client.delete_doc(GOVERNANCE_INDEX, lock_doc_id(migration_id), if_seq_no=seq_no, if_primary_term=primary_term)
    except CallError as exc:
        if exc.status == 409:
            raise LockedError(
                f"the lock for {migration_id} changed since it was read (renewed or taken over); not broken"
            ) from None
        raise
    client.index_doc(
        GOVERNANCE_INDEX,
        f"break_lock:{migration_id}:{run_id}",
        {
            "type": "break_lock",
            "migration_id": migration_id,
            "run_id": run_id,
            "operation": "break_lock",
            "applied_at": now_iso(),
            "applied_ns": time.time_ns(),
            "reason": redact(reason)[:500],
            "previous_owner": holder.owner,
            "held_since": holder.since,
            "lock_age_seconds": holder.age_seconds,
        },
        refresh=True,
    )


class DocumentLock:
    """The lock document of one migration as one run holds it. While held, a daemon thread
    renews it every heartbeat; a renewal that finds the document changed (another run took
    it over) marks the lock lost, and the run's next :meth:`heartbeat` raises."""

    def __init__(self, client: ClientFactory, conn_id: str, migration_id: str, run_id: str) -> None:
        self._client = client  # called on use: a session connects only when opened
        self.conn_id = conn_id
        self.migration_id = migration_id
        self.run_id = run_id
        self.doc_id = lock_doc_id(migration_id)
        self._seq: tuple[int, int] | None = None
        self._last_beat = 0.0
        self._mutex = threading.Lock()  # one renewal at a time (the thread and the run)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None  # why the lock is no longer this run's
        self.took_over: dict[str, Any] | None = None  # the dead holder this run replaced

    def _doc(self) -> dict[str, Any]:
        return {
            "type": "lock",
            "migration_id": self.migration_id,
            "owner": self.run_id,
            "ts": time.time(),
            "at": now_iso(),
            "host": host_identity(),
            "pid": os.getpid(),
        }

    def acquire(self) -> None:
        """Create the lock document, or take a dead holder's over; raise LockedError when a
        live run holds it."""
        c = self._client()
        for _ in range(3):
            try:
                c.index_doc(GOVERNANCE_INDEX, self.doc_id, self._doc(), create=True, refresh=True)
                self._remember()
                self._start_beating()
                return
            except CallError as exc:
                if exc.status != 409:
                    raise
            cur = c.get_doc(GOVERNANCE_INDEX, self.doc_id)
            if cur is None:
                continue  # released in between: try again
            src = cur.get("_source", {})
            why = dead_reason(src)
            if why is None:
                raise LockedError(self._held_message(src))
            try:  # dead: take it over, but only if nobody else did first
                c.index_doc(
                    GOVERNANCE_INDEX,
                    self.doc_id,
                    self._doc(),
                    if_seq_no=cur["_seq_no"],
                    if_primary_term=cur["_primary_term"],
                    refresh=True,
                )
                log.warning("took over the lock of run %s: %s", str(src.get("owner"))[:12], why)
                self.took_over = {"owner": str(src.get("owner", "?")), "since": str(src.get("at", "?")), "why": why}
                self._remember()
                self._start_beating()
                return
            except CallError as exc:
                if exc.status != 409:
                    raise
        raise LockedError(f"could not take the lock for {self.migration_id} on {self.conn_id}")

    def _held_message(self, src: dict[str, Any]) -> str:
        age = max(0.0, time.time() - float(src.get("ts", 0) or 0))
        return (
            f"another run ({str(src.get('owner', '?'))[:12]}) holds the lock for {self.migration_id} on "
            f"{self.conn_id} since {src.get('at', '?')} (last heartbeat {age:.0f}s ago); refusing to run "
            f"concurrently. If that run was killed, the next run takes the lock over and cleans up what it left "
            f"once its process is gone (same host) or its heartbeat is older than {lock_stale_seconds():g}s "
            f"({STALE_ENV}), in about {max(0.0, lock_stale_seconds() - age):.0f}s; to take over now, run "
            f"`kfm-migrations break-lock <bundle> --conn-id {self.conn_id} --reason ...`"
        )

    def _remember(self) -> None:
        cur = self._client().get_doc(GOVERNANCE_INDEX, self.doc_id)
        if cur is None or cur.get("_source", {}).get("owner") != self.run_id:
            raise LockedError(f"lost the lock for {self.migration_id} on {self.conn_id}")
        self._seq = (int(cur["_seq_no"]), int(cur["_primary_term"]))
        self._last_beat = time.monotonic()
        self.lost = None

    # -- heartbeat ------------------------------------------------------------

    def _start_beating(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat_loop, name=f"kfm-lock-{self.run_id[:8]}", daemon=True)
        self._thread.start()

    def _beat_loop(self) -> None:
        while not self._stop.wait(max(heartbeat_seconds(), 0.2)):
            try:
                self._renew()
            except LockedError:
                return  # lost: the run's next heartbeat() raises
            except Exception as exc:  # broad: a passing network or cluster fault; the next beat retries
                log.warning("lock heartbeat failed (%s); retrying", type(exc).__name__)

    def _renew(self) -> None:
        with self._mutex:
            if self._seq is None:
                return
            seq, term = self._seq
            try:
                self._client().index_doc(
                    GOVERNANCE_INDEX, self.doc_id, self._doc(), if_seq_no=seq, if_primary_term=term
                )
            except CallError as exc:
                if exc.status == 409:
                    self.lost = f"the lock for {self.migration_id} was taken over during the run"
                    self._seq = None
                    raise LockedError(self.lost) from None
                raise
            try:
                self._remember()
            except LockedError as exc:
                self.lost, self._seq = str(exc), None
                raise

    def heartbeat(self) -> None:
        """Called by the run between steps: raise LockedError when the lock was lost; renew
        it when the heartbeat thread has not lately."""
        if self.lost:
            raise LockedError(self.lost)
        if self._seq is not None and time.monotonic() - self._last_beat >= heartbeat_seconds():
            self._renew()

    def assert_held(self) -> None:
        """Read the lock document: LockedError unless this run still holds it (before a step
        that must not run after a takeover, e.g. the alias flip)."""
        if self.lost:
            raise LockedError(self.lost)
        cur = self._client().get_doc(GOVERNANCE_INDEX, self.doc_id)
        if cur is None or cur.get("_source", {}).get("owner") != self.run_id:
            self.lost = f"the lock for {self.migration_id} was taken over during the run"
            raise LockedError(self.lost)

    def release(self) -> None:
        """Stop the heartbeat; delete the lock document if this run still holds it; never raise for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            with self._mutex:
                c = self._client()
                cur = c.get_doc(GOVERNANCE_INDEX, self.doc_id)
                if cur is not None and cur.get("_source", {}).get("owner") == self.run_id:
                    c.delete_doc(
                        GOVERNANCE_INDEX, self.doc_id, if_seq_no=cur["_seq_no"], if_primary_term=cur["_primary_term"]
                    )
        except RefusedError as exc:  # the lock goes stale after a few heartbeats in the worst case
            log.warning("could not release the lock %s: %s", self.doc_id, exc)
        self._seq = None
