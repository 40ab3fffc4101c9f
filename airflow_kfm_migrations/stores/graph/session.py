"""A graph run's session: the lock from ``open`` to ``release``, the EXPLAIN preflight, the
statements (each in its own auto-commit transaction), the in-flight record, the recovery of
an interrupted run, and the ledger entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, GraphDeclaration
from airflow_kfm_migrations.declaration.bundle import Artifact, Bundle, display
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.stores.base import ApplyOutcome, LedgerRecord
from airflow_kfm_migrations.stores.graph import ledger, lock
from airflow_kfm_migrations.stores.graph.capture import protected_changed
from airflow_kfm_migrations.stores.graph.client import RunQuery, mask_values, neo_error, seconds
from airflow_kfm_migrations.stores.graph.cypher import (
    CypherStatement,
    classify,
    error_line,
    explain_query,
    in_transactions,
    plan_mentions,
    split_cypher,
)
from airflow_kfm_migrations.stores.graph.evaluate import invariant_facts
from airflow_kfm_migrations.stores.graph.governance import LOCK_LABEL, ensure_schema
from airflow_kfm_migrations.stores.graph.plan import scope_findings
from airflow_kfm_migrations.stores.graph.scope import GraphScope
from airflow_kfm_migrations.util.secret_scan import redact

COUNTER_NAMES = (
    "nodes_created",
    "nodes_deleted",
    "relationships_created",
    "relationships_deleted",
    "properties_set",
    "labels_added",
    "labels_removed",
    "indexes_added",
    "indexes_removed",
    "constraints_added",
    "constraints_removed",
)

Capture = Callable[[RunQuery, GraphDeclaration], Baseline]


class GraphSession:
    """Holds the ``:KfmLock`` node from ``open`` to ``release``; every statement autocommits.

    What a user does after a killed graph run (SIGKILL, OOM kill, lost worker, power cut)
    -------------------------------------------------------------------------------------
    Nothing by hand: run the same command again (``kfm-migrations run <bundle>`` or
    ``kfm-migrations rollback <bundle>``, or clear the Airflow task).

    1. The dead run's lock (``:KfmLock {key: 'store'}``) is broken at once when its process is
       gone on this host (same hostname, boot id and PID namespace, PID no longer exists);
       otherwise once it showed no sign of life for ``KFM_GRAPH_LOCK_STALE_SECONDS``
       (default 3600; the heartbeat is written before every statement). Until then the run
       refuses with a message naming the holder, its phase and when the lock goes stale.
    2. Before its first write an apply records ``(:KfmLock {key: 'inflight:<migration>'})``
       with the pre-baseline's schema and protected fingerprints; it is removed only when the
       run is recorded in the ledger or compensated and verified. When the next run (of the
       same migration) finds it, it compensates first: it runs the rollback artifact (after
       an EXPLAIN preflight) and checks that the graph's schema and protected fingerprints
       equal that pre-baseline. It then stops with a failed receipt explaining what was
       done ("… compensated … run the command again"); nothing else is changed.
    3. Run the command again: ``run`` applies from the clean pre-state and ends in the
       approved post-state (gate, ledger, receipt); ``rollback`` is then a no-op (the graph
       already equals the pre-state; the interrupted apply never reached the ledger).

    If the compensation does not restore the pre-baseline (a rollback artifact that fails,
    or is not idempotent over a half-applied forward), the in-flight record is kept and every
    run of the migration retries the compensation and refuses, naming it: fix the rollback
    artifact, or repair the graph by hand (compare with the pre-baseline) and delete the
    ``inflight:`` node. A run of another migration refuses while an in-flight record
    exists: recover that migration first with its own bundle. ``kfm-migrations break-lock``
    removes only the store lock, never the in-flight record. A killed manual ``rollback``
    leaves the ledger at ``apply``: run the rollback again (rollback artifacts are idempotent).
    """

    transactional = False

    def __init__(
        self, driver: Any, bundle: Bundle, run_id: str, *, conn_id: str, database: str | None, capture: Capture
    ) -> None:
        self.driver = driver
        self.bundle = bundle
        self.decl: GraphDeclaration = bundle.declaration  # type: ignore[assignment]
        self.run_id = run_id
        self.conn_id = conn_id
        self.database = database
        self._capture = capture  # the store's baseline reader (it remembers the tokens in use)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._locked = False
        self._timeout = seconds(self.decl.timeouts.statement_timeout)
        self._last_baseline: Baseline | None = None
        self._phase = "open"
        self._inflight = False
        self._checked: set[str] = set()  # roles that passed the EXPLAIN preflight

    # -- plumbing -------------------------------------------------------------

    def _session(self) -> Any:
        kw: dict[str, Any] = {"notifications_min_severity": "OFF"}
        if self.database:
            kw["database"] = self.database
        return self.driver.session(**kw)

    def _run(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Records as dicts of the driver's values (``dict(record)``, not ``record.data()``,
        which walks every value again in Python: 1,000 protected nodes cost ~20 ms more)."""
        with self._session() as s:
            return [dict(r) for r in s.run(query, params)]

    def _write(self, query: str, **params: Any) -> Any:
        with self._session() as s:
            return s.run(query, params).consume()

    @property
    def _inflight_key(self) -> str:
        return lock.inflight_key(self.decl.migration_id)

    # -- lock -----------------------------------------------------------------

    def open(self) -> None:
        import neo4j.exceptions as nx

        try:
            self.driver.verify_connectivity()
            ensure_schema(self._write)
            lock.acquire(
                self._run, self._write, conn_id=self.conn_id, migration_id=self.decl.migration_id, run_id=self.run_id
            )
            self._locked = True
            self._recover_interrupted()
        except LockedError:
            raise
        except (nx.Neo4jError, nx.DriverError) as exc:
            raise RefusedError(f"cannot prepare the run on {self.conn_id}: {neo_error(exc)}") from None

    def release(self) -> None:
        if self._locked and lock.release(self._write, self.run_id):
            self._locked = False

    # -- interrupted runs -----------------------------------------------------

    def _recover_interrupted(self) -> None:
        """With the lock held: an ``inflight:`` record is an apply that never finished."""
        for found in lock.interrupted_runs(self._run):
            rec, where = found.record, found.where
            if found.migration_id != self.decl.migration_id:
                raise LockedError(
                    f"{where} and the graph may be half migrated; recover it first: run `kfm-migrations run` "
                    f"or `kfm-migrations rollback` on the bundle of {found.migration_id}"
                )
            lock.stop_orphans(self._run, found.run_id, where)
            self._phase = "compensating"
            self._inflight = True
            outcome = self._run_role("rollback")
            after = self.baseline()
            problems = []
            if not outcome.ok:
                problems.append(outcome.error or "the rollback artifact failed")
            if after.schema_fingerprint != rec.get("pre_schema_fingerprint"):
                problems.append("schema fingerprint differs")
            if after.protected_fingerprint != rec.get("pre_protected_fingerprint"):
                problems.append("protected fingerprint differs")
            if problems:
                lock.mark_compensation_failed(self._write, self._inflight_key, "; ".join(problems))
                raise LockedError(
                    f"{where}; compensating it with the rollback artifact did not restore its pre-baseline "
                    f"({'; '.join(problems)}); the in-flight record is kept and every run of this migration retries; "
                    f"fix the rollback artifact, or repair the graph by hand and delete "
                    f"(:{LOCK_LABEL} {{key: '{self._inflight_key}'}})"
                )
            lock.delete_inflight(self._write, self._inflight_key)
            self._inflight = False
            raise LockedError(
                f"{where}; its changes were compensated now with the rollback artifact and the graph equals that "
                "run's pre-baseline (schema and protected fingerprints verified); nothing else was done: "
                "run the command again"
            )

    # -- EXPLAIN preflight ----------------------------------------------------

    def preflight(self, roles: tuple[str, ...]) -> str | None:
        """EXPLAIN every non-schema statement of ``roles`` (nothing runs): a statement the server
        cannot compile, or whose plan names a forbidden, protected (unapproved) or out-of-scope
        label or relationship type, refuses the run. Returns the problem, or None.

        Schema statements cannot be EXPLAINed; the static plan checked them."""
        import neo4j.exceptions as nx

        scope = GraphScope(self.decl)
        for role in roles:
            if role in self._checked:
                continue
            n = 0
            for art, st in self._statements(self.bundle.by_role(role)):
                n += 1
                if st.kind == "schema":
                    continue
                try:
                    with self._session() as s:
                        summary = s.run(explain_query(st)).consume()
                except nx.Neo4jError as exc:
                    message = str(getattr(exc, "message", None) or "")
                    line, text = error_line(st, message)
                    code = getattr(exc, "code", None)
                    safe = redact(f"{code}: {mask_values(text)[:300]}") if code and message else None
                    safe = safe or neo_error(exc)
                    return f"EXPLAIN preflight: {art.rel} line {line} (statement {n} of the {role}): {safe}"
                except nx.DriverError as exc:
                    return f"EXPLAIN preflight: {art.rel} line {st.line}: {neo_error(exc)}"
                labels, types = plan_mentions(summary.plan)
                hard = [f for f in scope_findings(self.decl, scope, n, labels, types) if f.tier == "hard_fail"]
                if hard:
                    return (
                        f"EXPLAIN preflight: {art.rel} line {st.line} (statement {n} of the {role}): "
                        f"the server's plan shows it {hard[0].message.removeprefix(f'statement {n} ')}"
                    )
            self._checked.add(role)
        return None

    # -- protocol -------------------------------------------------------------

    def ledger_last(self) -> LedgerRecord | None:
        return ledger.ledger_last(self._run, self.decl.migration_id)

    def baseline(self) -> Baseline:
        self._last_baseline = self._capture(self._run, self.decl)
        return self._last_baseline

    def _statements(self, artifacts: list[Artifact]) -> Iterator[tuple[Artifact, CypherStatement]]:
        for art in artifacts:
            for st in split_cypher(art.text, display(art.path)):
                yield art, st

    def _execute(self, artifacts: list[Artifact]) -> ApplyOutcome:
        import neo4j
        import neo4j.exceptions as nx

        statements = list(self._statements(artifacts))
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        started = time.monotonic()
        n = 0

        def stopped(error: str) -> ApplyOutcome:
            """Statement ``n`` did not complete: report the counters of those before it."""
            self.counters = counters
            return ApplyOutcome(ok=False, error=error, statements_run=n - 1, facts={"counters": dict(counters)})

        for art, st in statements:
            n += 1
            try:
                if not lock.heartbeat(
                    self._run, self.run_id, statement=n, statements=len(statements), phase=self._phase
                ):
                    return stopped(
                        f"before statement {n} of {art.rel}: the graph lock is no longer this run's "
                        "(broken as stale by another run); stopped"
                    )
                if self._inflight:
                    lock.inflight_progress(
                        self._write, self._inflight_key, statement=n, statements=len(statements), phase=self._phase
                    )
                # Tagged: a recovery can find (and terminate) statements of a run that died.
                meta = {"kfm_run_id": self.run_id, "kfm_migration_id": self.decl.migration_id}
                kind, _name = classify(st.masked)
                if self._phase == "applying" and kind != "schema" and not in_transactions(st.masked):
                    # A data statement runs in its own transaction, and the protected nodes are
                    # compared with the pre-baseline before it commits: a protected change
                    # that only the observed state reveals never reaches the store.
                    with self._session() as s, s.begin_transaction(timeout=self._timeout, metadata=meta) as tx:
                        summary = tx.run(st.text).consume()
                        touched = self._protected_touched(tx) if summary.counters.contains_updates else None
                        if touched is not None:
                            tx.rollback()
                            return stopped(
                                f"statement {n} of {art.rel} (line {st.line}) changed protected :{touched} "
                                "nodes without an approval; its transaction was rolled back before commit"
                            )
                        tx.commit()
                else:
                    query = neo4j.Query(st.text, timeout=self._timeout, metadata=meta)
                    with self._session() as s:
                        summary = s.run(query).consume()
            except (nx.Neo4jError, nx.DriverError) as exc:
                return stopped(f"statement {n} of {art.rel} (line {st.line}): {neo_error(exc)}")
            for k in COUNTER_NAMES:
                counters[k] += int(getattr(summary.counters, k, 0) or 0)
        self.counters = counters
        return ApplyOutcome(
            ok=True,
            statements_run=n,
            facts={"counters": dict(counters)},
            metrics={"apply_seconds": round(time.monotonic() - started, 3)},
        )

    def _protected_touched(self, tx: Any) -> str | None:
        """Inside a statement's transaction: the first protected label whose nodes differ from
        the pre-baseline, unless an approval covers it."""
        if self._last_baseline is None:
            return None

        def run(query: str, **params: Any) -> list[dict[str, Any]]:
            return [dict(r) for r in tx.run(query, params)]

        return protected_changed(run, self.decl, self._last_baseline)

    def _run_role(self, role: str) -> ApplyOutcome:
        problem = self.preflight((role,))
        if problem:
            return ApplyOutcome(ok=False, error=f"{problem}; nothing was run", statements_run=0)
        return self._execute(self.bundle.by_role(role))

    def apply(self) -> ApplyOutcome:
        """EXPLAIN preflight of the forward and rollback (a refusal raises: nothing was written,
        there is nothing to compensate), the in-flight record, then the forward."""
        problem = self.preflight(("forward", "rollback"))
        if problem:
            raise RefusedError(f"{problem}; refused before the first write, the graph is unchanged")
        pre = self._last_baseline or self.baseline()
        self._phase = "applying"
        lock.start_inflight(
            self._write,
            self._inflight_key,
            {
                "migration_id": self.decl.migration_id,
                "run_id": self.run_id,
                "phase": "applying",
                "bundle_digest": self.bundle.digest,
                "pre_schema_fingerprint": pre.schema_fingerprint,
                "pre_protected_fingerprint": pre.protected_fingerprint,
                "statement": 0,
            },
        )
        self._inflight = True
        return self._execute(self.bundle.by_role("forward"))

    def rollback(self) -> ApplyOutcome:
        self._phase = "compensating" if self._phase == "applying" else "rolling_back"
        return self._run_role("rollback")

    def facts(self, pre: Baseline, post: Baseline) -> dict[str, Any]:
        return {"counters": dict(self.counters), **invariant_facts(self._run, self.decl)}

    def record(self, rec: LedgerRecord) -> None:
        ledger.record(self._write, rec)
        self._phase = "recorded"
        self._clear_inflight()

    def _clear_inflight(self) -> None:
        if self._inflight:
            lock.delete_inflight(self._write, self._inflight_key, self.run_id)
            self._inflight = False

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        ledger.set_receipt_digest(self._write, run_id, digest)

    def commit(self) -> None:
        """Every statement committed already (non-transactional). After a compensation the
        lifecycle commits only when the graph equals the pre-baseline: the apply is settled."""
        if self._phase == "compensating":
            self._clear_inflight()
        self._phase = "done"

    def abort(self) -> None:
        """Nothing to undo here: the lifecycle compensates with the rollback artifact. An
        in-flight apply stays recorded until it is compensated or recorded in the ledger."""
