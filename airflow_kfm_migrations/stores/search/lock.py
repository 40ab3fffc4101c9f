"""The migration lock: one document per migration in the governance index, created by the
run that takes it, renewed by a heartbeat during long reindexes (optimistic concurrency on
``seq_no``/``primary_term``), replaced when stale and deleted at the end of the session.

A lock whose holder died stays until it goes stale (``KFM_SEARCH_LOCK_STALE_SECONDS``,
default an hour) or ``break-lock`` removes it (:func:`read_lock`, :func:`break_lock`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.stores.base import LockHolder
from airflow_kfm_migrations.stores.search.client import CallError, ClientFactory, SearchClient
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX, now_iso
from airflow_kfm_migrations.util.secret_scan import redact

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 60.0  # read at each heartbeat (tests lower it)


def lock_stale_seconds() -> float:
    """How old a lock document must be before another run may replace it:
    ``KFM_SEARCH_LOCK_STALE_SECONDS`` (default 3600), read when called."""
    return settings().search_lock_stale_seconds


def lock_doc_id(migration_id: str) -> str:
    return f"lock:{migration_id}"


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
        stale=age > lock_stale_seconds(),
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
    """The lock document of one migration as one run holds it."""

    def __init__(self, client: ClientFactory, conn_id: str, migration_id: str, run_id: str) -> None:
        self._client = client  # called on use: a session connects only when opened
        self.conn_id = conn_id
        self.migration_id = migration_id
        self.run_id = run_id
        self.doc_id = lock_doc_id(migration_id)
        self._seq: tuple[int, int] | None = None
        self._last_beat = 0.0

    def _doc(self) -> dict[str, Any]:
        return {
            "type": "lock",
            "migration_id": self.migration_id,
            "owner": self.run_id,
            "ts": time.time(),
            "at": now_iso(),
        }

    def acquire(self) -> None:
        """Create the lock document, or replace a stale one; raise LockedError when held."""
        c = self._client()
        for _ in range(3):
            try:
                c.index_doc(GOVERNANCE_INDEX, self.doc_id, self._doc(), create=True, refresh=True)
                self._remember()
                return
            except CallError as exc:
                if exc.status != 409:
                    raise
            cur = c.get_doc(GOVERNANCE_INDEX, self.doc_id)
            if cur is None:
                continue  # released in between: try again
            src = cur.get("_source", {})
            age = time.time() - float(src.get("ts", 0))
            if age <= lock_stale_seconds():
                raise LockedError(
                    f"another run ({str(src.get('owner', '?'))[:12]}) holds the lock for {self.migration_id} "
                    f"on {self.conn_id} since {src.get('at', '?')}; refusing to run concurrently"
                )
            try:  # stale: replace it, but only if nobody else did first
                c.index_doc(
                    GOVERNANCE_INDEX,
                    self.doc_id,
                    self._doc(),
                    if_seq_no=cur["_seq_no"],
                    if_primary_term=cur["_primary_term"],
                    refresh=True,
                )
                log.warning("replaced a stale lock (%.0f s old) of run %s", age, str(src.get("owner"))[:12])
                self._remember()
                return
            except CallError as exc:
                if exc.status != 409:
                    raise
        raise LockedError(f"could not take the lock for {self.migration_id} on {self.conn_id}")

    def _remember(self) -> None:
        cur = self._client().get_doc(GOVERNANCE_INDEX, self.doc_id)
        if cur is None or cur.get("_source", {}).get("owner") != self.run_id:
            raise LockedError(f"lost the lock for {self.migration_id} on {self.conn_id}")
        self._seq = (int(cur["_seq_no"]), int(cur["_primary_term"]))
        self._last_beat = time.monotonic()

    def heartbeat(self) -> None:
        """Keep a long reindex's lock fresh; losing it stops the run."""
        if self._seq is None or time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        seq, term = self._seq
        try:
            self._client().index_doc(GOVERNANCE_INDEX, self.doc_id, self._doc(), if_seq_no=seq, if_primary_term=term)
        except CallError as exc:
            if exc.status == 409:
                raise LockedError(f"the lock for {self.migration_id} was taken over during the run") from None
            raise
        self._remember()

    def release(self) -> None:
        """Delete the lock document if this run still holds it; never raise for it."""
        try:
            c = self._client()
            cur = c.get_doc(GOVERNANCE_INDEX, self.doc_id)
            if cur is not None and cur.get("_source", {}).get("owner") == self.run_id:
                c.delete_doc(
                    GOVERNANCE_INDEX, self.doc_id, if_seq_no=cur["_seq_no"], if_primary_term=cur["_primary_term"]
                )
        except RefusedError as exc:  # the lock goes stale after an hour in the worst case
            log.warning("could not release the lock %s: %s", self.doc_id, exc)
        self._seq = None
