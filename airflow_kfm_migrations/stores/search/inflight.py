"""The in-flight record of a search run, and the recovery of a run that was killed.

A run that writes (apply, or a manual rollback) keeps one document
``inflight:<migration id>`` in the governance index while it holds the lock. It is written
*before* each step it could leave behind:

- ``indices``: an index the run is about to create (``creating``), then created
  (``created``); dropped again once the run's abort deleted it;
- ``tasks``: each reindex task, as soon as the cluster answered with its id;
- ``write_blocks``: each protected index the run write-blocks, with the value of
  ``index.blocks.write`` it had before;
- ``phase``: ``applying``, ``flipping`` (just before the atomic alias flip), ``committed``
  (the flip and the ledger entry are written), ``rolling_back``.

The session deletes it when it ends clean. When a later run of the same migration takes
the lock (the holder's process is gone, or its heartbeat is stale, or the lock was broken
by hand) and finds a record of another run, :func:`recover` undoes what that run left:
it cancels its reindex tasks (the recorded ones, and any running reindex into an index it
created) and waits for them to stop, deletes the indices it created, lifts the write
blocks it set, writes a ``recovery`` document, and deletes the record. An alias is never
moved: a killed run's flip either happened whole (``flipping`` with the ledger entry, or
``committed``: the run is applied, only its write blocks are lifted) or not at all. A
``flipping`` record without a ledger entry whose indices an alias already points to is
refused (the flip happened, the ledger entry did not): that needs a person.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from airflow_kfm_migrations.errors import LockedError
from airflow_kfm_migrations.stores.search import governance
from airflow_kfm_migrations.stores.search.client import CallError, ClientFactory, SearchClient
from airflow_kfm_migrations.stores.search.governance import GOVERNANCE_INDEX, now_iso
from airflow_kfm_migrations.util.liveness import host_identity

log = logging.getLogger(__name__)

TASK_STOP_SECONDS = 60.0  # how long a recovery waits for a cancelled reindex task to stop
_DEST = re.compile(r"\bto \[([^\]]+)\]")  # "reindex from [src] to [dest]"


def inflight_doc_id(migration_id: str) -> str:
    return f"inflight:{migration_id}"


class InflightRecord:
    """The in-flight document of the run holding the lock, written whole on every change."""

    def __init__(self, client: ClientFactory, migration_id: str, run_id: str) -> None:
        self._client = client
        self.migration_id = migration_id
        self.run_id = run_id
        self.doc: dict[str, Any] | None = None

    @property
    def active(self) -> bool:
        return self.doc is not None

    def start(self, operation: str) -> None:
        if self.doc is not None:
            return
        self.doc = {
            "type": "inflight",
            "migration_id": self.migration_id,
            "run_id": self.run_id,
            "operation": operation,
            "started_at": now_iso(),
            "host": host_identity(),
            "phase": "applying" if operation == "apply" else "rolling_back",
            "indices": [],
            "tasks": [],
            "write_blocks": [],
        }
        self._save()

    def _save(self) -> None:
        assert self.doc is not None
        self.doc["updated_at"] = now_iso()
        self._client().index_doc(GOVERNANCE_INDEX, inflight_doc_id(self.migration_id), self.doc, refresh=True)

    def creating(self, index: str) -> None:
        """Before ``create_index``: a recovery deletes it if it exists."""
        if self.doc is not None:
            self.doc["indices"].append({"index": index, "state": "creating"})
            self._save()

    def created(self, index: str) -> None:
        self._set_state(index, "created")

    def deleted(self, index: str) -> None:
        if self.doc is not None:
            self.doc["indices"] = [i for i in self.doc["indices"] if i["index"] != index]
            self._save()

    def _set_state(self, index: str, state: str) -> None:
        if self.doc is not None:
            for item in self.doc["indices"]:
                if item["index"] == index:
                    item["state"] = state
            self._save()

    def task(self, task_id: str) -> None:
        if self.doc is not None:
            self.doc["tasks"].append(task_id)
            self._save()

    def blocking(self, index: str, previous: str | None) -> None:
        """Before ``index.blocks.write: true``: a recovery restores ``previous``."""
        if self.doc is not None:
            self.doc["write_blocks"].append({"index": index, "previous": previous})
            self._save()

    def unblocked(self, index: str) -> None:
        if self.doc is not None:
            self.doc["write_blocks"] = [b for b in self.doc["write_blocks"] if b["index"] != index]
            self._save()

    def phase(self, phase: str) -> None:
        if self.doc is not None and self.doc.get("phase") != phase:
            self.doc["phase"] = phase
            self._save()

    def finish(self) -> None:
        """Delete the record (the run ended clean); only this run's."""
        if self.doc is None:
            return
        c = self._client()
        cur = c.get_doc(GOVERNANCE_INDEX, inflight_doc_id(self.migration_id))
        if cur is not None and cur.get("_source", {}).get("run_id") == self.run_id:
            c.delete_doc(
                GOVERNANCE_INDEX,
                inflight_doc_id(self.migration_id),
                if_seq_no=cur["_seq_no"],
                if_primary_term=cur["_primary_term"],
            )
        self.doc = None


def load(client: SearchClient, migration_id: str) -> dict[str, Any] | None:
    """The in-flight record of ``migration_id``, or None."""
    doc = client.get_doc(GOVERNANCE_INDEX, inflight_doc_id(migration_id))
    return dict(doc["_source"]) if doc is not None else None


@dataclass
class Recovery:
    """What a recovery did about a killed run."""

    run_id: str
    operation: str
    phase: str
    took_over: str  # why the lock was taken over (or "the lock was free")
    tasks_cancelled: list[str] = field(default_factory=list)
    indices_deleted: list[str] = field(default_factory=list)
    blocks_lifted: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [
            f"reindex task(s) {', '.join(self.tasks_cancelled)} cancelled" if self.tasks_cancelled else "",
            f"index(es) {', '.join(self.indices_deleted)} it created deleted" if self.indices_deleted else "",
            f"write block lifted from {', '.join(self.blocks_lifted)}" if self.blocks_lifted else "",
        ]
        done = "; ".join(p for p in parts if p) or "nothing of it was left"
        return (
            f"recovered interrupted run {self.run_id[:12]} ({self.operation}, phase {self.phase}; "
            f"{self.took_over}): {done}; no alias was moved"
        )

    def as_doc(self) -> dict[str, Any]:
        return {
            "interrupted_run_id": self.run_id,
            "interrupted_operation": self.operation,
            "interrupted_phase": self.phase,
            "took_over": self.took_over,
            "tasks_cancelled": self.tasks_cancelled,
            "indices_deleted": self.indices_deleted,
            "blocks_lifted": self.blocks_lifted,
            "summary": self.line(),
        }


def recover(client: SearchClient, rec: dict[str, Any], *, run_id: str, took_over: str) -> Recovery:
    """Undo what the killed run of ``rec`` left (see the module); LockedError when it cannot
    be done safely now. Call it holding the migration's lock."""
    mid = str(rec.get("migration_id"))
    dead = str(rec.get("run_id", "?"))
    phase = str(rec.get("phase", "applying"))
    out = Recovery(dead, str(rec.get("operation", "apply")), phase, took_over)
    where = f"run {dead[:12]} of {mid} was interrupted (phase {phase})"
    indices = [i for i in rec.get("indices") or [] if isinstance(i, dict) and i.get("index")]
    applied = phase == "committed" or (phase == "flipping" and governance.read_entry(client, mid, dead) is not None)
    if not applied:
        out.tasks_cancelled = _stop_tasks(client, rec, {str(i["index"]) for i in indices}, where)
        aliased = {ix for ix, meta in client.get_alias().items() if meta.get("aliases")}
        live = sorted(str(i["index"]) for i in indices if i["index"] in aliased)
        if live:
            raise LockedError(
                f"{where}; an alias already points to {', '.join(live)}, which it created, but its ledger entry "
                "was never written: the flip may have happened. Nothing was deleted. Check the aliases; then "
                f"either delete those indices and the governance document {inflight_doc_id(mid)}, or record the "
                "run by hand"
            )
        for item in reversed(indices):
            ix = str(item["index"])
            if not client.index_exists(ix):
                continue
            try:
                client.delete_index(ix)
            except CallError as exc:
                if exc.status != 404:
                    raise
                continue
            out.indices_deleted.append(ix)
    for blk in rec.get("write_blocks") or []:
        ix, previous = str(blk.get("index")), blk.get("previous")
        if lift_block(client, ix, previous if isinstance(previous, str) else None):
            out.blocks_lifted.append(ix)
    client.index_doc(
        GOVERNANCE_INDEX,
        f"recovery:{mid}:{run_id}",
        {
            "type": "recovery",
            "migration_id": mid,
            "run_id": run_id,
            "operation": "recovery",
            "applied_at": now_iso(),
            "applied_ns": time.time_ns(),
            **out.as_doc(),
        },
        refresh=True,
    )
    client.delete_doc(GOVERNANCE_INDEX, inflight_doc_id(mid))
    log.warning("%s", out.line())
    return out


def _stop_tasks(client: SearchClient, rec: dict[str, Any], created: set[str], where: str) -> list[str]:
    """Cancel the killed run's reindex tasks still running (recorded, or writing into an index
    it created) and wait until they stopped: a task left running would write on (and create
    again an index deleted under it)."""
    ids = {str(t) for t in rec.get("tasks") or []}
    for tid, desc in client.reindex_tasks().items():
        m = _DEST.search(desc)
        if m and m.group(1) in created:
            ids.add(tid)
    cancelled: list[str] = []
    for tid in sorted(ids):
        try:
            if client.get_task(tid).get("completed"):
                continue
            client.cancel_task(tid)
        except CallError as exc:
            if exc.status == 404:  # unknown to the cluster (a restarted node): not running
                continue
            raise
        cancelled.append(tid)
    deadline = time.monotonic() + TASK_STOP_SECONDS
    for tid in cancelled:
        while True:
            try:
                if client.get_task(tid).get("completed"):
                    break
            except CallError as exc:
                if exc.status == 404:
                    break
                raise
            if time.monotonic() > deadline:
                raise LockedError(
                    f"{where}; its reindex task {tid} was cancelled but still runs after {TASK_STOP_SECONDS:g}s; "
                    "nothing was deleted; run the command again later"
                )
            time.sleep(0.2)
    return cancelled


def block_value(client: SearchClient, index: str) -> str | None:
    """The index's ``index.blocks.write`` setting as the cluster shows it (None: not set)."""
    meta = client.get_indices(index).get(index, {})
    blocks = ((meta.get("settings") or {}).get("index") or {}).get("blocks") or {}
    value = blocks.get("write")
    return None if value is None else str(value).lower()


def lift_block(client: SearchClient, index: str, previous: str | None) -> bool:
    """Give ``index`` back the ``index.blocks.write`` value it had before a run set it; False
    when the index is gone or the block is no longer set (someone changed it since)."""
    try:
        if block_value(client, index) != "true":
            return False
    except CallError as exc:
        if exc.status == 404:
            return False
        raise
    value: bool | None = None if previous is None else previous == "true"
    client.put_settings(index, {"index.blocks.write": value})
    return True
