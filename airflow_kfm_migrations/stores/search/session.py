"""A search run while it holds the migration lock: blue/green apply with every alias action
held back, rollback, the atomic alias flip at ``commit``, and ``abort`` deleting what the
run built. Ledger entries are written only once the flip succeeded.

What a user does after a killed search run (SIGKILL, OOM kill, lost worker)
---------------------------------------------------------------------------
Nothing by hand: run the same command again. The killed run's lock is taken over at once
when its process is gone on this host, otherwise once its heartbeat is older than
``KFM_SEARCH_LOCK_STALE_SECONDS`` (default three heartbeats of
``KFM_SEARCH_HEARTBEAT_SECONDS``, 30 s); ``kfm-migrations break-lock`` takes it over now.
Holding the lock, the new run finds the killed run's in-flight record and recovers
(:mod:`.inflight`): its reindex tasks are cancelled, the indices it created deleted, its
write blocks lifted, no alias moved. It then runs as asked; its receipt names what was
recovered (metric ``recovered_interrupted_run``) and so does its diff summary (finding
``interrupted_run_recovered``).

Protected and forbidden indices
-------------------------------
A reindex script is checked by the plan (:mod:`.scripts`); right before a reindex starts
its source and dest are resolved on the cluster (:func:`.protection.reindex_problem`);
after each reindex, and again when a compensation ends, the write counters of the protected
and forbidden indices are compared with those at the start of the apply: a write into
them fails the apply, and the compensation says the rollback cannot restore it. With
``protect_with_write_block: true`` those indices are write-blocked for the run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, Finding, SearchDeclaration
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.stores.base import ApplyOutcome, GcDecision, LedgerRecord
from airflow_kfm_migrations.stores.search import gc, governance, inflight, protection
from airflow_kfm_migrations.stores.search.actions import Action, additive_problem, created_by, load_actions
from airflow_kfm_migrations.stores.search.capture import capture, scope_fingerprint
from airflow_kfm_migrations.stores.search.client import CallError, ClientFactory, SearchClient
from airflow_kfm_migrations.stores.search.lock import DocumentLock
from airflow_kfm_migrations.stores.search.reindex import Reindexed, cancel_and_wait, run_reindex
from airflow_kfm_migrations.stores.search.scripts import script_problem

log = logging.getLogger(__name__)


def _strict(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alias actions for the wire: a ``remove`` must find its alias, or the whole call fails
    (without ``must_exist`` the cluster accepts a remove of a vanished alias next to an add)."""
    return [{"remove": {**a["remove"], "must_exist": True}} if "remove" in a else dict(a) for a in actions]


class SearchSession:
    """Holds the migration lock document; applies blue/green; flips at ``commit``."""

    transactional = False

    def __init__(self, client: ClientFactory, conn_id: str, bundle: Bundle, run_id: str) -> None:
        self._client = client  # the store's (lazily connected) client
        self.conn_id = conn_id
        self.bundle = bundle
        self.decl: SearchDeclaration = bundle.declaration  # type: ignore[assignment]
        self.run_id = run_id
        self.lock = DocumentLock(client, conn_id, self.decl.migration_id, run_id)
        self._created: list[str] = []  # indices this run created and abort still has to delete
        self._built: set[str] = set()  # every index this run created, kept after the abort
        self._applied_here = False
        self._pending: list[dict[str, Any]] = []
        self._records: list[LedgerRecord] = []
        self._facts: dict[str, Any] = {"docs_reindexed": 0, "pending_aliases": []}
        self._retained: list[dict[str, str]] = []  # old indices kept for a rollback, and until when
        self._state = "open"  # open | applied | aborted | committed
        self._inflight = inflight.InflightRecord(client, self.decl.migration_id, run_id)
        self._blocked: dict[str, str | None] = {}  # write-blocked by this run -> the value before
        self._guarded0: dict[str, list[Any]] | None = None  # guarded write counters at the apply's start
        self._foreign: dict[str, str] = {}  # guarded indices written during the run
        self.recovery: inflight.Recovery | None = None  # a killed run this session recovered
        self._stopping = False  # cancel() was called: the forward stops at its next step
        self._task: str | None = None  # the reindex task running now

    def cancel(self) -> None:
        """The ``Cancellable`` capability, called from another thread: cancel the running
        reindex task, and stop the forward at its next step. The run then fails: ``abort``
        deletes what it built, no alias moves, the lock is released."""
        self._stopping = True
        task = self._task
        if task is not None:
            try:
                self.client.cancel_task(task)
            except CallError as exc:  # the run's own wait cancels it again
                log.warning("could not cancel reindex task %s: %s", task, exc.line())

    def _started(self, task: str) -> None:
        self._inflight.task(task)
        self._task = task
        if self._stopping:  # cancel() came before the task was known
            self.cancel()

    @property
    def client(self) -> SearchClient:
        return self._client()

    # -- lock -----------------------------------------------------------------

    def open(self) -> None:
        try:
            governance.ensure_governance_index(self.client)
            self.lock.acquire()
            self._recover_interrupted()
        except CallError as exc:
            raise RefusedError(f"cannot prepare the run on {self.conn_id}: {exc.line()}") from None

    def _recover_interrupted(self) -> None:
        """With the lock held: an in-flight record of another run is a run that was killed."""
        rec = inflight.load(self.client, self.decl.migration_id)
        if rec is None or rec.get("run_id") == self.run_id:
            return
        took = self.lock.took_over
        why = f"its lock was taken over: {took['why']}" if took else "its lock was gone (released or broken)"
        self.recovery = inflight.recover(self.client, rec, run_id=self.run_id, took_over=why)
        self._facts["recovered"] = self.recovery.line()

    def close(self) -> None:
        """Session exit: undo an apply that was neither committed nor aborted, lift the write
        blocks, end the in-flight record, release the lock."""
        try:
            if self._state == "applied":
                if self._task is not None:  # left running by an exception (a timeout, an interrupt)
                    cancel_and_wait(self.client, self._task, "the run's reindex")
                    self._task = None
                self.abort()
            if not self.lock.lost:
                self._lift_blocks()
                if not self._created and not self._blocked:
                    self._inflight.finish()
        except CallError as exc:  # the in-flight record stays: the next run finishes the cleanup
            log.error("could not finish the run's cleanup: %s", exc.line())
        finally:
            self.lock.release()

    def _lift_blocks(self) -> None:
        for ix, previous in list(self._blocked.items()):
            inflight.lift_block(self.client, ix, previous)
            del self._blocked[ix]
            self._inflight.unblocked(ix)

    def _block_protected(self) -> None:
        """``protect_with_write_block``: write-block the protected indices for the run, each
        recorded in the in-flight record before it is set."""
        if not self.decl.protect_with_write_block:
            return
        for ix, previous in protection.indices_to_block(self.client, self.decl):
            self._inflight.blocking(ix, previous)
            self._blocked[ix] = previous
            self.client.put_settings(ix, {"index.blocks.write": True})

    def release_if_ours(self) -> None:
        self.lock.release()

    # -- ledger ---------------------------------------------------------------

    def ledger_last(self) -> LedgerRecord | None:
        src = self.last_entry()
        if src is None:
            return None
        return governance.record_of(src)

    def last_entry(self) -> dict[str, Any] | None:
        """The raw last ledger document of this migration (apply or rollback)."""
        return governance.last_entry(self.client, self.decl.migration_id)

    def record(self, rec: LedgerRecord) -> None:
        """Kept until ``commit``: the ledger entry is written only once the flip succeeded."""
        self._records.append(rec)

    def _write_records(self) -> None:
        post_scope: str | None = None
        post_schema: str | None = None
        if self._records:
            after = self.baseline()  # after the flip: what a later drift check compares with
            post_scope = scope_fingerprint(self.bundle, after)
            post_schema = after.schema_fingerprint
        for rec in self._records:
            if rec.operation == "apply" and post_scope is not None and post_schema is not None:
                rec = replace(rec, post_scope_fingerprint=post_scope, post_schema_fingerprint=post_schema)
            extra: dict[str, Any] = {
                "flipped_aliases": [dict(a) for a in self._pending] if rec.operation == "apply" else [],
            }
            if rec.operation == "apply":
                extra["old_index_retention_days"] = self.decl.old_index_retention_days
                extra["retained_indices"] = [dict(r) for r in self._retained]
            governance.write_entry(self.client, rec, extra)
        self._records = []

    def recovered(self) -> str | None:
        return self.recovery.line() if self.recovery is not None else None

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        governance.set_receipt_digest(self.client, self.decl.migration_id, run_id, digest)

    # -- baseline / facts -----------------------------------------------------

    def baseline(self) -> Baseline:
        return capture(self.client, self.decl, blocked_by_run=self._blocked)

    def facts(self, pre: Baseline, post: Baseline) -> dict[str, Any]:
        return json.loads(json.dumps(self._facts))

    def rollback_findings(self, pre: Baseline, post: Baseline) -> list[Finding]:
        """Nothing beyond the fingerprints: a search rollback changes no cluster-level object."""
        return []

    # -- apply / rollback -----------------------------------------------------

    def apply(self) -> ApplyOutcome:
        actions = load_actions(self.bundle.by_role("forward"))
        self._state = "applied"
        self._applied_here = True
        try:
            self._inflight.start("apply")
            self._guarded0 = protection.guarded_counters(self.client, self.decl)
            self._block_protected()
        except CallError as exc:
            return self._failed(None, 1, f"preparing the apply: {exc.line()}", time.monotonic())
        return self._run(actions, forward=True)

    def rollback(self) -> ApplyOutcome:
        """Run the rollback artifact. Alias actions are made idempotent (pairs already in the
        wanted state are dropped; the rest is one atomic call); ``delete_index`` only names
        indices the forward creates. Compensating a run of this session (after ``abort``), its
        alias actions are skipped (this run never flipped) and only indices this run built
        count as its own."""
        actions = load_actions(self.bundle.by_role("rollback"))
        if not self._applied_here:
            try:
                self._inflight.start("rollback")
                self._block_protected()
            except CallError as exc:
                return self._failed(None, 1, f"preparing the rollback: {exc.line()}", time.monotonic())
            return self._run(actions, forward=False)
        self._inflight.phase("compensating")
        outcome = self._run(actions, forward=False)
        if outcome.ok and self._guarded0 is not None:
            # Compensating this run: documents it wrote into guarded indices are not restored
            # by the rollback artifact, whatever the fingerprints say.
            written = self._foreign or protection.guarded_written(self.client, self.decl, self._guarded0)
            if written:
                self._foreign = written
                outcome.ok = False
                outcome.error = (
                    f"{protection.describe_written(written, self.decl)}; the rollback artifact cannot restore "
                    "documents written there"
                )
        return outcome

    def _run(self, actions: list[Action], *, forward: bool) -> ApplyOutcome:
        started = time.monotonic()
        total = Reindexed()
        n = 0
        forward_creates = set(created_by(load_actions(self.bundle.by_role("forward"))))
        stoppable = forward or not self._applied_here  # a compensation of this run always runs
        act: Action | None = None
        try:
            for act in actions:
                n += 1
                if stoppable and self._stopping:
                    return self._failed(act, n, "not run: the run was asked to stop", started, total)
                self.lock.heartbeat()
                b = act.body
                if act.name == "aliases":
                    if forward:
                        self._pending.extend({op: {"index": ix, "alias": al}} for op, ix, al in act.alias_ops())
                    elif self._applied_here:
                        # Compensating this run: its flip never happened, the aliases are as before.
                        log.info("compensation: alias action %d skipped (this run never flipped)", act.pos)
                    else:
                        self._flip_now(act)
                elif act.name == "create_index":
                    body: dict[str, Any] = {k: b[k] for k in ("settings", "mappings") if k in b}
                    recorded = forward and not self.client.index_exists(b["index"])
                    if recorded:  # before it exists: a recovery deletes it if this run dies
                        self.lock.heartbeat()
                        self._inflight.creating(b["index"])
                    try:
                        self.client.create_index(b["index"], body)
                    except CallError:
                        if recorded:
                            self._inflight.deleted(b["index"])  # not ours: created by someone else meanwhile
                        raise
                    if forward:
                        self._created.append(b["index"])
                        self._built.add(b["index"])
                        self._inflight.created(b["index"])
                elif act.name == "put_mapping":
                    problem = self._additive(b["index"], b["mappings"]["properties"])
                    if problem:
                        return self._failed(act, n, f"put_mapping is additive only: {problem} would change", started)
                    self.client.put_mapping(b["index"], b["mappings"])
                elif act.name == "put_settings":
                    self.client.put_settings(b["index"], b["settings"])
                elif act.name == "delete_index":
                    ix = b["index"]
                    allowed = self._created if forward else forward_creates
                    if ix not in allowed:
                        return self._failed(act, n, f"refusing to delete {ix}: not created by this migration", started)
                    if not forward and self._applied_here and ix not in self._built:
                        # Compensating this run: an index of that name that this run did not
                        # build (e.g. a leftover that made create_index fail) is not ours to delete.
                        log.warning("compensation: %s was not created by this run; left in place", ix)
                        continue
                    if not forward and not self.client.index_exists(ix):
                        continue  # already gone (the abort or an earlier rollback removed it)
                    self.client.delete_index(ix)
                elif act.name == "reindex":
                    err = self._reindex_problem(act)
                    if err:
                        return self._failed(act, n, err, started, total)
                    self.lock.assert_held()
                    err = run_reindex(
                        self.client,
                        act,
                        total,
                        timeout=self.decl.timeouts.statement_timeout,
                        heartbeat=self.lock.heartbeat,
                        on_task=self._started,
                        stop=(lambda: self._stopping) if stoppable else None,
                    )
                    self._task = None
                    err = self._check_guarded(err)
                    if err:
                        return self._failed(act, n, err, started, total)
            if forward:
                problem = self._check_pending()
                if problem:
                    return self._failed(act, n, problem, started, total)
                self._facts.update(docs_reindexed=total.docs, pending_aliases=list(self._pending))
                self._retained = gc.retained_indices(self._pending, self._built, self.decl.old_index_retention_days)
        except CallError as exc:
            assert act is not None
            return self._failed(act, n, exc.line(), started, total)
        metrics: dict[str, int | float | str] = {"apply_seconds": round(time.monotonic() - started, 3)}
        metrics.update(self._notes())
        if forward:
            metrics.update(docs_reindexed=total.docs, aliases_held_back=len(self._pending))
            metrics.update(
                old_index_retention_days=self.decl.old_index_retention_days,
                old_indices_kept=len(self._retained),
            )
            if self._retained:
                metrics["old_indices_kept_names"] = ",".join(r["index"] for r in self._retained)
                metrics["old_indices_kept_until"] = self._retained[0]["keep_until"]
        return ApplyOutcome(
            ok=True,
            writes=total.writes,
            facts=json.loads(json.dumps(self._facts)) if forward else {},
            statements_run=n,
            metrics=metrics,
        )

    def _reindex_problem(self, act: Action) -> str | None:
        """Checked again on the cluster right before the reindex: the script (a manual rollback
        does not pass the plan) and what the source and dest resolve to."""
        script = act.body.get("script")
        if isinstance(script, dict):
            problem = script_problem(str(script.get("source", "")))
            if problem:
                return f"plan_unsafe_script: {problem}"
        return protection.reindex_problem(self.client, self.decl, act.body["source"], act.body["dest"])

    def _check_guarded(self, err: str | None) -> str | None:
        """After a reindex (done or failed): did anything write into a guarded index?"""
        if self._guarded0 is None:
            return err
        written = protection.guarded_written(self.client, self.decl, self._guarded0)
        if not written:
            return err
        self._foreign = written
        said = f"foreign_index_written: {protection.describe_written(written, self.decl)}"
        return f"{said}; {err}" if err else said

    def _failed(
        self, act: Action | None, n: int, error: str, started: float, total: Reindexed | None = None
    ) -> ApplyOutcome:
        where = f"action {act.pos} ({act.name}) of {act.file.rsplit('/', 1)[-1]}" if act else "actions"
        return ApplyOutcome(
            ok=False,
            writes=total.writes if total else [],
            error=f"{where}: {error}",
            statements_run=n - 1,
            metrics={"apply_seconds": round(time.monotonic() - started, 3), **self._notes()},
        )

    def _notes(self) -> dict[str, int | float | str]:
        """Metrics every outcome carries: the write blocks in force, a recovered killed run."""
        out: dict[str, int | float | str] = {}
        if self._blocked:
            out["write_blocked_indices"] = ",".join(sorted(self._blocked))
        if self.recovery is not None:
            out["recovered_interrupted_run"] = self.recovery.line()
        return out

    def _additive(self, index: str, properties: dict[str, Any]) -> str | None:
        meta = self.client.get_indices(index).get(index, {})
        current = (meta.get("mappings") or {}).get("properties", {})
        return additive_problem(current, properties)

    def _alias_pairs(self) -> set[tuple[str, str]]:
        return {(ix, al) for ix, meta in self.client.get_alias().items() for al in (meta.get("aliases") or {})}

    def _flip_now(self, act: Action) -> None:
        """A rollback alias action, made idempotent: pairs already in the wanted state are dropped,
        the rest go in one atomic call."""
        pairs = self._alias_pairs()
        todo = [
            {op: {"index": ix, "alias": al}}
            for op, ix, al in act.alias_ops()
            if (op == "remove" and (ix, al) in pairs) or (op == "add" and (ix, al) not in pairs)
        ]
        if todo:
            self.client.update_aliases(_strict(todo))

    def _check_pending(self) -> str | None:
        """Refuse before the gate an alias flip that the cluster would reject at commit."""
        if not self._pending:
            return None
        pairs = self._alias_pairs()
        existing = set(self.client.get_alias())
        for spec in self._pending:
            ((op, body),) = spec.items()
            ix, al = body["index"], body["alias"]
            if op == "add" and ix not in existing:
                return f"the held-back alias action add {al} -> {ix} names a missing index"
            if op == "remove" and (ix, al) not in pairs:
                return f"the held-back alias action remove {al} -> {ix} names a missing alias"
        return None

    # -- retention / gc -------------------------------------------------------

    def collect_garbage(self, now: datetime, *, dry_run: bool = False) -> list[GcDecision]:
        """Delete the old indices the last apply kept whose retention expired at ``now``
        (see :func:`.gc.collect_garbage`). Call it holding the lock (inside the session)."""
        return gc.collect_garbage(
            self.client,
            self.bundle,
            self.decl,
            self.run_id,
            self.last_entry(),
            now,
            dry_run=dry_run,
            heartbeat=self.lock.heartbeat,
        )

    # -- commit / abort -------------------------------------------------------

    def commit(self) -> None:
        if self._state == "applied" and self._pending:
            try:
                self.lock.assert_held()  # a run whose lock was taken over never flips
                self._inflight.phase("flipping")
                self.client.update_aliases(_strict(self._pending))
            except (CallError, LockedError) as exc:
                self._inflight.phase("applying")  # the flip is atomic: refused means not done
                self.abort()
                said = exc.line() if isinstance(exc, CallError) else str(exc)
                raise RefusedError(
                    f"the alias flip was refused ({said}); aliases unchanged, the new indices were deleted"
                ) from None
        if self._state != "aborted":
            try:
                self._write_records()
            except CallError as exc:
                raise RefusedError(
                    f"the change is live but the ledger entry could not be written: {exc.line()}"
                ) from None
            self._inflight.phase("committed")
        if self._state == "applied":
            self._state = "committed"
            self._created = []  # live now: nothing for an abort or a recovery to delete

    def abort(self) -> None:
        """Delete the indices this run created; never touch an alias. A run whose lock was
        taken over deletes nothing: the new holder recovers what it built (and may already
        have built indices of the same names)."""
        if self._state == "committed":
            return
        self._records = []
        self._pending = []
        if self.lock.lost:
            log.error("abort: %s; the indices this run built are left to the run that took over", self.lock.lost)
            self._created = []
        left: list[str] = []
        for ix in reversed(self._created):
            try:
                if self.client.index_exists(ix):
                    self.client.delete_index(ix)
                self._inflight.deleted(ix)
            except CallError as exc:
                log.error("abort: could not delete %s: %s", ix, exc.line())
                left.append(ix)
        self._created = left
        if self._state == "applied":
            self._state = "aborted"
