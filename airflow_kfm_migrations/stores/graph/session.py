"""A graph run's session: the lock from ``open`` to ``release``, the EXPLAIN preflight, the
statements (each in its own transaction), the in-flight record, the recovery of an
interrupted run, and the ledger entry.

Protected nodes and commits (``docs/stores/graph.md``, "Batched and early-committing
statements"): a data statement runs in an explicit transaction, and its protected nodes
and their relationships are compared with the last baseline before it commits, in every
phase. A batched statement (``CALL { … } IN TRANSACTIONS``) commits as it goes: the
preflight refuses one that ranges over the whole graph (``plan.batched_findings``), and it
runs under the protected guard (``guard.ProtectedGuard``), which holds every protected node's
write lock. A schema statement cannot write nodes; the preflight refuses one on a guarded
label or type, and a DROP is looked up again just before it runs (``plan.schema_findings``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, Finding, GraphDeclaration
from airflow_kfm_migrations.declaration.bundle import Artifact, Bundle, display
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.stores.base import ApplyOutcome, LedgerRecord
from airflow_kfm_migrations.stores.graph import ledger, lock
from airflow_kfm_migrations.stores.graph.capture import guarded_labels, protected_changed
from airflow_kfm_migrations.stores.graph.client import RunQuery, mask_values, neo_error, seconds
from airflow_kfm_migrations.stores.graph.cypher import (
    CypherStatement,
    classify,
    error_line,
    explain_query,
    in_transactions,
    plan_mentions,
    plan_operators,
    schema_name,
    schema_targets,
    split_cypher,
)
from airflow_kfm_migrations.stores.graph.evaluate import invariant_facts
from airflow_kfm_migrations.stores.graph.governance import LOCK_LABEL, ensure_schema
from airflow_kfm_migrations.stores.graph.guard import GuardError, ProtectedGuard
from airflow_kfm_migrations.stores.graph.plan import SchemaObjects, batched_findings, schema_findings, scope_findings
from airflow_kfm_migrations.stores.graph.scope import GraphScope
from airflow_kfm_migrations.util.secret_scan import redact

log = logging.getLogger(__name__)

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
        self._batched: set[tuple[str, int, str]] = set()  # statements whose server plan commits in batches
        self._stopping = False  # cancel() was called: the forward runs no further statement

    def cancel(self) -> None:
        """The ``Cancellable`` capability, called from another thread: terminate the run's
        running transactions (tagged with its run id) and run no further forward statement.
        The lifecycle then compensates with the rollback artifact."""
        self._stopping = True
        try:
            lock.terminate_run(self._run, self.run_id)
        except Exception as exc:  # broad on purpose: the run stops at its next statement all the same
            log.warning("could not terminate the run's transactions (%s)", type(exc).__name__)

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
            self.baseline()  # what the rollback's statements are checked against before they commit
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
        label or relationship type, refuses the run; so does a batched statement whose plan
        ranges over the whole graph (``batched_findings``). Returns the problem, or None.

        Schema statements cannot be EXPLAINed: the labels or types of what they create, and of
        the live object a DROP names, are checked against the scope (``schema_findings``)."""
        import neo4j.exceptions as nx

        scope = GraphScope(self.decl)
        live: SchemaObjects | None = None
        for role in roles:
            if role in self._checked:
                continue
            n = 0
            for art, st in self._statements(self.bundle.by_role(role)):
                n += 1
                if st.kind == "schema":
                    try:
                        live = self._schema_objects() if live is None else live
                    except (nx.Neo4jError, nx.DriverError) as exc:
                        return f"schema preflight: cannot read the schema: {neo_error(exc)}"
                    hard = [
                        f
                        for f in schema_findings(self.decl, scope, n, st, live, self._created())
                        if f.tier == "hard_fail"
                    ]
                    if hard:
                        return (
                            f"schema preflight: {art.rel} line {st.line} (statement {n} of the {role}): "
                            f"{hard[0].code}: {hard[0].message}"
                        )
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
                ops = {op for op, _ in plan_operators(summary.plan)}
                if in_transactions(st.masked) or ops & {"TransactionForeach", "TransactionApply"}:
                    self._batched.add((art.rel, st.line, st.text))
                    hard = batched_findings(n, summary.plan)
                    if hard:
                        return (
                            f"EXPLAIN preflight: {art.rel} line {st.line} (statement {n} of the {role}): "
                            f"{hard[0].code}: {hard[0].message}"
                        )
            self._checked.add(role)
        return None

    def _schema_objects(self) -> SchemaObjects:
        """The live constraints and indexes by name: (node | relationship, labels or types)."""
        out: SchemaObjects = {}
        for r in (*self._run("SHOW CONSTRAINTS YIELD *"), *self._run("SHOW INDEXES YIELD *")):
            entity = "relationship" if r.get("entityType") == "RELATIONSHIP" else "node"
            out.setdefault(str(r["name"]), (entity, list(r.get("labelsOrTypes") or [])))
        return out

    def _created(self) -> SchemaObjects:
        """The constraints and indexes the bundle's own statements create, by name."""
        out: SchemaObjects = {}
        for _art, st in self._statements([*self.bundle.by_role("forward"), *self.bundle.by_role("rollback")]):
            name, target = schema_name(st.masked), schema_targets(st.masked)
            if st.kind == "schema" and name and target:
                out.setdefault(name, target)
        return out

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
            if self._stopping and self._phase != "compensating":  # a compensation always runs
                return stopped(f"statement {n} of {art.rel}: not run, the run was asked to stop")
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
                kind, name = classify(st.masked)
                where = f"statement {n} of {art.rel} (line {st.line})"
                if kind == "schema":
                    # Commits at once and cannot be rolled back: what a DROP names is looked
                    # up again now (the preflight saw the schema before earlier statements).
                    problem = self._drop_problem(n, st) if name.startswith("drop") else None
                    if problem:
                        return stopped(f"{where}: {problem}; not run")
                    query = neo4j.Query(st.text, timeout=self._timeout, metadata=meta)
                    with self._session() as s:
                        summary = s.run(query).consume()
                elif (art.rel, st.line, st.text) in self._batched or in_transactions(st.masked):
                    summary, problem = self._run_guarded(n, art.rel, st.line, st.text, meta)
                    if problem:
                        return stopped(problem)
                else:
                    # A data statement runs in its own transaction, and the protected nodes and
                    # their relationships are compared with the last baseline before it commits
                    # (in every phase): a protected change that only the observed state
                    # reveals never reaches the store.
                    with self._session() as s, s.begin_transaction(timeout=self._timeout, metadata=meta) as tx:
                        summary = tx.run(st.text).consume()
                        touched = self._protected_touched(tx) if summary.counters.contains_updates else None
                        if touched is not None:
                            tx.rollback()
                            return stopped(
                                f"{where} changed protected :{touched} nodes or their relationships without an "
                                "approval; its transaction was rolled back before commit"
                            )
                        tx.commit()
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

    def _drop_problem(self, n: int, st: CypherStatement) -> str | None:
        hard = [
            f
            for f in schema_findings(self.decl, GraphScope(self.decl), n, st, self._schema_objects(), {})
            if f.tier == "hard_fail"
        ]
        return f"{hard[0].code}: {hard[0].message}" if hard else None

    def _run_guarded(self, n: int, rel: str, line: int, text: str, meta: dict[str, str]) -> tuple[Any, str | None]:
        """A batched statement, under the protected guard: (summary, None), or (None, why it
        was stopped). Its batches commit as they go; none of them can write a protected node."""
        import neo4j
        import neo4j.exceptions as nx

        where = f"statement {n} of {rel} (line {line})"
        labels = guarded_labels(self._run, self.decl, self._last_baseline)
        try:
            with ProtectedGuard(
                self.driver, self.database, self.run_id, labels, statement=n, acquire_seconds=self._timeout or 60.0
            ) as guard:
                try:
                    with self._session() as s:
                        summary = s.run(neo4j.Query(text, timeout=self._timeout, metadata=meta)).consume()
                except (nx.Neo4jError, nx.DriverError):
                    if not guard.tripped:
                        raise
                if guard.tripped:
                    f = Finding(
                        code="batched_protected_write",
                        tier="hard_fail",
                        object=f"{rel}:{line}",
                        message=f"{where} commits in batches and {guard.tripped}; the statement was stopped "
                        f"and its waiting batch rolled back, so no protected node changed "
                        f"({guard.nodes} node(s) of :{', :'.join(labels)} held)",
                    )
                    return None, f"{f.code}: {f.message}"
        except GuardError as exc:
            f = Finding(
                code="protected_guard_failed",
                tier="hard_fail",
                object=f"{rel}:{line}",
                message=f"{where} commits in batches, and the protected nodes could not be held while it runs "
                f"({exc}); it was not run",
            )
            return None, f"{f.code}: {f.message}"
        if self._last_baseline is not None:
            touched = protected_changed(self._run, self.decl, self._last_baseline)
            if touched is not None:
                return None, (
                    f"{where} commits in batches and protected :{touched} nodes or their relationships differ "
                    "from the last baseline after it"
                )
        return summary, None

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

    def rollback_findings(self, pre: Baseline, post: Baseline) -> list[Finding]:
        return []  # the graph's baseline has no object other sessions change: the fingerprints say it all

    def record(self, rec: LedgerRecord) -> None:
        ledger.record(self._write, rec)
        self._phase = "recorded"
        self._clear_inflight()

    def _clear_inflight(self) -> None:
        if self._inflight:
            lock.delete_inflight(self._write, self._inflight_key, self.run_id)
            self._inflight = False

    def recovered(self) -> str | None:
        return None  # a compensated interrupted run ends the session with a LockedError that says so

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
