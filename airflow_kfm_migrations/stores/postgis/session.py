"""A PostGIS run under the store's locks: ``open_session`` connects, ``PgSession`` holds the
transaction (or, for ``transactional: false``, a session lock) from the locks to
``commit``/``abort`` and does the run's work in it: baselines, the scripts (with a watchdog on
the statement timeout), the checks after them, the observed writes, the ledger entry, and the
backfill checks made in the guard's transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, Finding, PostgisDeclaration, WriteCount
from airflow_kfm_migrations.declaration.bundle import Artifact, Bundle, display
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.stores.base import ApplyOutcome, LedgerRecord
from airflow_kfm_migrations.stores.postgis import attribution, ledger, legacy, posture, reads, shared_state, state
from airflow_kfm_migrations.stores.postgis.backfill import Engine
from airflow_kfm_migrations.stores.postgis.backfill_checks import check_key
from airflow_kfm_migrations.stores.postgis.capture import Captures
from airflow_kfm_migrations.stores.postgis.catalog import (
    GOVERNANCE_QUERY,
    GOVERNANCE_ROWS_QUERY,
    LEDGER_DDL,
    SHARED_WRITES_QUERY,
    TABLES_QUERY,
    TEMP_DEPENDANTS_QUERY,
    XACT_WRITES_QUERY,
)
from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA
from airflow_kfm_migrations.stores.postgis.client import Connect, advisory_key, db_error
from airflow_kfm_migrations.stores.postgis.plan import plan_sql
from airflow_kfm_migrations.stores.postgis.procedural import INVALID_TRANSACTION_TERMINATION, RUNTIME_REFUSAL

log = logging.getLogger(__name__)


@contextmanager
def open_session(
    captures: Captures,
    connect: Connect,
    conn_id: str,
    bundle: Bundle,
    run_id: str,
    share_connect: Connect | None = None,
) -> Iterator[PgSession]:
    """A new connection, locked and prepared for a run of ``bundle``; closed afterwards.
    ``share_connect``: new connections of their own, for writing the capture state after
    the commit while the run writes its receipt (None: on the run's connection, after it)."""
    decl = bundle.declaration
    assert isinstance(decl, PostgisDeclaration)
    conn = connect()
    s: PgSession | None = None
    with captures.saving_once():
        try:
            s = PgSession(captures, connect, conn_id, conn, bundle, run_id)
            s.share_connect = share_connect
            s.open()
            yield s
        finally:
            if s is not None:
                s.shared()
            try:
                if not conn.closed:
                    conn.rollback() if not conn.autocommit else None
                    if conn.autocommit:
                        conn.execute("SELECT pg_advisory_unlock_all()")
                conn.close()
            except Exception:  # the connection may already be gone (killed backend)
                pass


class PgSession:
    """One connection; a transaction (or, non-transactional, a session lock) held throughout."""

    def __init__(
        self, captures: Captures, connect: Connect, conn_id: str, conn: Any, bundle: Bundle, run_id: str
    ) -> None:
        self.captures = captures  # the store's: baselines start from, and leave, its states
        self._connect = connect  # for work after the run's transaction (the receipt's digest)
        self.conn_id = conn_id
        self.conn = conn
        self.bundle = bundle
        self.decl: PostgisDeclaration = bundle.declaration  # type: ignore[assignment]
        self.run_id = run_id
        self.transactional = self.decl.transactional
        self._stat0: dict[str, tuple[int, int, int]] = {}
        self._files0: dict[int, tuple[int, str]] = {}
        self._captured = False
        self._pending: state.CatalogState | None = None
        self._governance: str | None = None  # GOVERNANCE_QUERY's digest when the session opened
        self._governance_rows: tuple[str, str] | None = None
        self._statement_ms = 0  # the declared statement timeout, as the server took it
        self._stopping = False  # cancel() was called: no further statement of the script runs
        self._applied = False  # apply() ran: a rollback() after it is the compensation, which always runs
        # The capture state the run leaves, shared with other workers once it commits
        # (shared_state): (key, snapshot xmax, sha256, bytes); and the thread writing it.
        self.share_connect: Connect | None = None
        self._share: tuple[str, int, str, bytes] | None = None
        self._sharing: threading.Thread | None = None

    def cancel(self) -> None:
        """The ``Cancellable`` capability, called from another thread: cancel the statement
        running on the run's connection (a cancel request on a connection of its own, as the
        watchdog does) and run no further statement. The run then rolls back its transaction;
        the locks go with it."""
        self._stopping = True
        try:
            self.conn.cancel_safe(timeout=5.0)
        except Exception as exc:  # broad on purpose: a closed or broken connection has nothing to cancel
            log.warning("could not cancel the running statement (%s)", type(exc).__name__)

    # The transaction: timeouts and advisory locks come first, so nothing runs unlocked.
    def open(self) -> None:
        import psycopg
        from psycopg import sql

        t = self.decl.timeouts
        conn = self.conn
        conn.autocommit = not self.transactional
        scope = "LOCAL " if self.transactional else ""
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SET " + scope + "lock_timeout = {}").format(sql.Literal(t.lock_timeout)))
                cur.execute(sql.SQL("SET " + scope + "statement_timeout = {}").format(sql.Literal(t.statement_timeout)))
                cur.execute("SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'statement_timeout'")
                self._statement_ms = int(cur.fetchone()[0])
                fn = "pg_try_advisory_xact_lock" if self.transactional else "pg_try_advisory_lock"
                cur.execute(
                    f"SELECT {fn}(%s), {fn}(%s)",
                    (advisory_key("kfm-store"), advisory_key("kfm:" + self.decl.migration_id)),
                )
                store_lock, mig_lock = cur.fetchone()
                if not (store_lock and mig_lock):
                    raise LockedError(
                        f"another run holds the {'migration' if not mig_lock else 'store'} lock for "
                        f"{self.decl.migration_id} on {self.conn_id}; refusing to run concurrently"
                    )
                cur.execute(LEDGER_DDL)
                cur.execute(shared_state.DDL)
                cur.execute(GOVERNANCE_QUERY)
                self._governance, hazards = cur.fetchone()
                cur.execute(GOVERNANCE_ROWS_QUERY)
                self._governance_rows = cur.fetchone()
        except psycopg.Error as exc:
            raise RefusedError(f"cannot prepare the run on {self.conn_id}: {db_error(exc)}") from None
        if hazards:
            # They would run when the run records itself, after the gate.
            raise RefusedError(
                f"{LEDGER_SCHEMA} on {self.conn_id} has triggers, rules or policies on its tables, "
                "which no run creates; refusing to record runs there until they are removed"
            )

    def ledger_last(self) -> LedgerRecord | None:
        with self.conn.cursor() as cur:
            return ledger.last_record(cur, self.decl.migration_id)

    def baseline(self) -> Baseline:
        with self.conn.cursor() as cur:
            b = self.captures.capture(cur, self.decl)
        # The first capture comes before the migration writes anything (the ledger schema aside,
        # which captures leave out); a later one in a transaction holds uncommitted changes, and
        # only becomes the store's starting point if they commit.
        if not self.transactional or not self._captured:
            self.captures.adopt(self.captures.last)
        else:
            self._pending = self.captures.last
        self._captured = True
        return b

    def _stats(self, cur: Any) -> dict[str, tuple[int, int, int]]:
        cur.execute(XACT_WRITES_QUERY if self.transactional else SHARED_WRITES_QUERY)
        return {t: (i, u, d) for t, i, u, d in cur.fetchall()}

    def _filenodes(self, cur: Any) -> dict[int, tuple[int, str]]:
        """Each table's storage file and name: a rewrite (TRUNCATE, VACUUM FULL, ALTER TYPE)
        gives a table a new file without counting rows."""
        cur.execute(TABLES_QUERY)
        return {oid: (fn, f"{s}.{t}") for oid, s, t, fn in cur.fetchall()}

    # Who the session is, and what makes the gate's evidence complete: with
    # session_replication_role = replica, triggers and foreign keys are off; with
    # track_counts off, the write counters see nothing.
    _SESSION_STATE = (
        "SELECT current_user, session_user, current_setting('session_replication_role'), "
        "current_setting('track_counts')"
    )

    # Policy-enforcement facts and the transaction's table scans, right before and after the
    # script (``posture``, ``reads``): the baselines' own reads of guarded tables fall outside.
    _posture0: posture.Snapshot | None = None
    _guarded: list[int] = []
    _scans0: dict[str, int] | None = None
    _scanned: dict[str, int] | None = None

    def _snapshot(self) -> None:
        with self.conn.cursor() as cur:
            cur.execute(self._SESSION_STATE)
            self._session0 = cur.fetchone()
            if not self.transactional:
                cur.execute("SELECT pg_stat_force_next_flush()")
                cur.execute("SELECT pg_stat_clear_snapshot()")
            self._stat0 = self._stats(cur)
            self._files0 = self._filenodes(cur)
            self._posture0 = posture.snapshot(cur)
            # Shared counters (transactional: false) hold every session's scans: none are judged.
            self._guarded = reads.guarded_tables(self.decl, self._files0)
            self._scans0 = reads.scans(cur, self._guarded) if self.transactional else None

    def _writes(self) -> list[WriteCount]:
        with self.conn.cursor() as cur:
            if not self.transactional:
                cur.execute("SELECT pg_stat_force_next_flush()")
                time.sleep(0.05)
                cur.execute("SELECT pg_stat_clear_snapshot()")
            now = self._stats(cur)
            files = self._filenodes(cur)
            if self._scans0 is not None:
                self._scanned = reads.scans_delta(self._scans0, reads.scans(cur, self._guarded))
        rewritten = {name for o, (fn, name) in files.items() if o in self._files0 and self._files0[o][0] != fn}
        out = []
        for table in sorted(set(now) | rewritten):
            i1, u1, d1 = now.get(table, (0, 0, 0))
            i0, u0, d0 = self._stat0.get(table, (0, 0, 0))
            w = WriteCount(
                table=table,
                inserted=max(0, i1 - i0),
                updated=max(0, u1 - u0),
                deleted=max(0, d1 - d0),
                rewritten=table in rewritten,
            )
            if w.inserted or w.updated or w.deleted or w.rewritten:
                out.append(w)
        return out

    @contextmanager
    def _watchdog(self) -> Iterator[None]:
        """Cancel a statement that outlives the declared statement timeout. The server enforces
        it too, unless the script turned it off (``SET LOCAL statement_timeout = 0``) and would
        hold its locks for as long as it likes."""
        if not self._statement_ms:
            yield
            return
        timer = threading.Timer(self._statement_ms / 1000 * 1.1 + 1, self.conn.cancel_safe)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _after_script(
        self, state: Any, governance: str, governance_rows: tuple[str, str], doomed: tuple[str] | None
    ) -> str | None:
        """Why the script's outcome cannot be judged or committed, if it cannot."""
        if governance_rows != self._governance_rows:
            return f"the script wrote to the ledger in {LEDGER_SCHEMA}"
        if doomed is not None:
            return (
                f"the script left {doomed[0]} depending on a temporary object, which the server drops "
                "when the session ends"
            )
        if governance != self._governance:
            # Captures leave the ledger's schema out; anything attached to it would run when the
            # run records itself, after the gate.
            return f"the script changed the governance schema {LEDGER_SCHEMA}"
        if state != self._session0:
            # SET ROLE / SET SESSION AUTHORIZATION change who the observed writes and the
            # ledger are attributed to; session_replication_role = replica silently turns off
            # triggers and foreign keys; track_counts off blinds the write counters. Any of them
            # would make the gate's evidence unreliable.
            names = ("current_user", "session_user", "session_replication_role", "track_counts")
            what = ", ".join(f"{k} {a} -> {b}" for k, a, b in zip(names, self._session0, state, strict=True) if a != b)
            return f"the script changed the session's enforcement ({what})"
        return None

    def _run(self, artifacts: list[Artifact], *, stoppable: bool = True) -> ApplyOutcome:
        import psycopg

        self._snapshot()
        if self._session0[3] != "on":
            return ApplyOutcome(
                ok=False,
                error="track_counts is off for this session, so the run could not see what its script writes; refused",
                statements_run=0,
            )
        n = 0
        started = time.monotonic()
        try:
            for art in artifacts:
                for text, _stmt in plan_sql(art.text, display(art.path)):
                    n += 1
                    if self._stopping and stoppable:
                        return ApplyOutcome(
                            ok=False,
                            error=f"statement {n} of {art.rel}: not run, the run was asked to stop",
                            statements_run=n - 1,
                        )
                    with self.conn.cursor() as cur, self._watchdog():
                        cur.execute(text.encode(), prepare=False)
        except psycopg.Error as exc:
            error = f"statement {n} of {art.rel}: {db_error(exc)}"
            if getattr(exc, "sqlstate", None) == INVALID_TRANSACTION_TERMINATION:
                error += f": {RUNTIME_REFUSAL}"  # COMMIT in a procedure or DO block the plan could not read
            return ApplyOutcome(ok=False, error=error, statements_run=n - 1)
        try:
            with self.conn.cursor() as cur:
                if self.transactional:
                    # Deferred triggers would otherwise fire at COMMIT, after the gate: fire them
                    # now, so that what they do is in the post-baseline (or fails the run).
                    cur.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cur.execute(self._SESSION_STATE)
                state = cur.fetchone()
                cur.execute(GOVERNANCE_QUERY)
                governance = cur.fetchone()[0]
                cur.execute(GOVERNANCE_ROWS_QUERY)
                governance_rows = cur.fetchone()
                cur.execute(TEMP_DEPENDANTS_QUERY)
                doomed = cur.fetchone()
        except psycopg.Error as exc:
            return ApplyOutcome(ok=False, error=f"after the script: {db_error(exc)}", statements_run=n)
        refusal = self._after_script(state, governance, governance_rows, doomed)
        if refusal:
            return ApplyOutcome(ok=False, error=f"{refusal}; refused", statements_run=n)
        try:
            writes = self._writes()
        except psycopg.Error as exc:
            return ApplyOutcome(ok=False, error=f"after the script: {db_error(exc)}", statements_run=n)
        return ApplyOutcome(
            ok=True,
            writes=writes,
            statements_run=n,
            metrics={
                "apply_seconds": round(time.monotonic() - started, 3),
                # The pre-baseline: how many objects it took from an earlier capture, and from where.
                "pre_capture_reused": self.captures.reused,
                "pre_capture_state": self.captures.source,
            },
        )

    def apply(self) -> ApplyOutcome:
        self._applied = True
        return self._run(self.bundle.by_role("forward"))

    def rollback(self) -> ApplyOutcome:
        """The rollback script: by hand, or compensating this session's apply (which a stop
        request does not stop: it is how a stopped non-transactional run is undone)."""
        return self._run(self.bundle.by_role("rollback"), stoppable=not self._applied)

    def rollback_findings(self, pre: Baseline, post: Baseline) -> list[Finding]:
        """A database- or cluster-level object the rollback's own transaction changed (any
        that changed, for a non-transactional run): the rollback must not commit."""
        with self.conn.cursor() as cur:
            return attribution.rollback_findings(cur, diff_objects(pre, post), self.transactional)

    def legacy_restored(
        self, apply_pre: Baseline | None, post: Baseline, schema: str, protected: str
    ) -> tuple[bool, bool]:
        """Judged as the earlier release that recorded the fingerprints would (see ``legacy``)."""
        with self.conn.cursor() as cur:
            return legacy.restored(cur, apply_pre, post, schema, protected)

    def facts(self, pre: Baseline, post: Baseline) -> dict[str, Any]:
        changes = diff_objects(pre, post)
        tables = sorted({f"{c.schema_}.{c.table}" for c in changes if c.kind == "index" and c.table})
        rows: dict[str, int] = {}
        with self.conn.cursor() as cur:
            # Who changed the database- and cluster-level objects that changed: this transaction or
            # another session (read before anything else, in the run's transaction).
            global_changes = attribution.attribute(cur, changes, self.transactional)
            renamed = self._renamed_tables(cur, changes)
            for t in tables:
                schema, _, name = t.partition(".")
                cur.execute(
                    "SELECT GREATEST(c.reltuples, 0)::bigint FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                    (schema, name),
                )
                row = cur.fetchone()
                rows[t] = int(row[0]) if row else 0
            enforcement = (
                posture.collect(cur, self._posture0, pre, post, self._scanned) if self._posture0 is not None else None
            )
        return {"table_rows": rows, "tables_renamed": renamed, "posture": enforcement, attribution.FACT: global_changes}

    def _renamed_tables(self, cur: Any, changes: list[Any]) -> dict[str, str]:
        """Tables gone from the diff under their old name whose storage (by OID, as the script
        found it) is still there: renamed or moved, not dropped. ``old name -> new name``."""
        gone = [f"{c.schema_}.{c.table}" for c in changes if c.kind == "table" and c.change == "removed"]
        oids = {name: oid for oid, (_fn, name) in self._files0.items()}
        known = {oids[t]: t for t in gone if t in oids}
        if not known:
            return {}
        cur.execute(
            "SELECT c.oid, n.nspname || '.' || c.relname FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s::oid[])",
            (sorted(known),),
        )
        return {known[oid]: name for oid, name in cur.fetchall()}

    def record(self, rec: LedgerRecord) -> None:
        import psycopg

        # The state the store starts from once this run commits: its post-baseline's. Its
        # digest goes into the ledger row, in the run's transaction; the state itself is
        # written after the commit (shared()).
        st = (self._pending if self.transactional else self.captures.last) if self._captured else None
        self._share = None
        if st is not None and state.enabled():
            payload = state.encode(st)
            self._share = (st.key, state.snapshot_xmax(st), shared_state.digest(payload), payload)
        try:
            with self.conn.cursor() as cur:
                ledger.insert_record(cur, rec, self._share[2] if self._share else None)
        except psycopg.Error as exc:
            raise RefusedError(f"cannot write the ledger entry on {self.conn_id}: {db_error(exc)}") from None

    # -- the BackfillSession capability: checks inside the guard's transaction -------

    def check_backfill_key(self) -> tuple[str | None, str]:
        bf = self.decl.backfill
        assert bf is not None
        with self.conn.cursor() as cur:
            problem, key_type = check_key(cur, bf)
        return problem, f"{bf.key_column} ({key_type}) unique, not null"

    def backfill_rollback_checks(self, run_id: str) -> list[tuple[str, bool, str | None]]:
        """verify_columns (when no rollback_set reversed them already) and retiring the
        backfill's progress, atomically with the rollback."""
        import psycopg

        bf = self.decl.backfill
        assert bf is not None
        eng = Engine(self.conn, self.bundle, lambda _line: None, None)
        checks: list[tuple[str, bool, str | None]] = []
        try:
            with self.conn.cursor() as cur:
                if bf.verify_columns and not bf.rollback_set:
                    cur.execute(
                        f"SELECT last_key FROM {LEDGER_SCHEMA}.backfill_progress WHERE migration_id = %s "
                        "AND run_key = %s AND batch_no = 0",
                        (self.decl.migration_id, eng.key),
                    )
                    row = cur.fetchone()
                    if row is not None:
                        same = eng.verify_digest(cur) == row[0]
                        checks.append(
                            ("verify_columns", same, "digest equals pre" if same else "digest differs from pre")
                        )
                        if not same:
                            return checks
                eng.retire_progress(cur, run_id)
        except psycopg.Error as exc:
            checks.append(("verify_columns", False, db_error(exc)))
        return checks

    def recovered(self) -> str | None:
        return None  # a killed run's transaction was rolled back by the server: nothing to recover

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        """After the receipt is written (outside the migration's transaction)."""
        ledger.set_receipt_digest(self._connect, run_id, digest)

    def commit(self) -> None:
        if self.transactional:
            self.conn.commit()
            self.captures.adopt(self._pending)
            self._pending = None
        share, self._share = self._share, None
        if share is None:
            return
        if self.share_connect is None:
            self._write_state(self.conn, share)
        else:
            self._sharing = threading.Thread(
                target=self._write_state, args=(None, share), name="kfm-capture-share", daemon=True
            )
            self._sharing.start()

    def _write_state(self, conn: Any, share: tuple[str, int, str, bytes]) -> None:
        """Best effort: a state not written only makes the next new worker's capture a full one."""
        own = conn is None
        try:
            if own:
                assert self.share_connect is not None
                conn = self.share_connect()
            key, xmax, sha, payload = share
            shared_state.write(conn, key, self.run_id, xmax, sha, payload)
        except Exception as exc:  # broad on purpose: the run has committed; this only costs speed
            log.warning("could not share the capture state (%s)", type(exc).__name__)
        finally:
            if own and conn is not None:
                try:
                    conn.close()
                except Exception:  # already gone
                    pass

    def shared(self) -> None:
        """Wait for the capture state to be written (the session is closing)."""
        if self._sharing is not None:
            self._sharing.join()
            self._sharing = None

    def abort(self) -> None:
        self._pending = None  # rolled back: the store keeps the state it had
        self._share = None
        if self.transactional:
            try:
                self.conn.rollback()
            except Exception:  # connection lost: the server rolled back already
                pass
