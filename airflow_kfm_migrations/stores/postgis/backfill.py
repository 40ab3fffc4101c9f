"""Bounded, staged backfills (PostGIS): batched, resumable, observable data changes.

A bundle may declare ``backfill`` next to its schema part. The schema part runs first,
whole, through the transactional guard (``lifecycle.run_migration``); its ledger entry is
recorded with status ``backfill_pending``. The backfill then runs here, in key-ordered
batches, each batch its own short transaction:

    SET LOCAL lock_timeout / statement_timeout
    → pick the next ``batch_size`` keys after the last committed key (``where`` applied)
    → one UPDATE (``set``) or the ``sql_template`` over that key range
    → count the rows this transaction wrote, per table, from pg_stat_xact_all_tables
      (the guard's method: trigger and function writes are counted too)
    → a write outside the declared scope, or a total over ``max_rows``: ROLLBACK, stop,
      compensate the whole migration
    → INSERT the progress row (batch, last key, rows so far) → COMMIT

Progress lives in ``kfm_governance.backfill_progress`` and is written in the SAME
transaction as the batch's writes, so a crash loses nothing and counts nothing twice: a
re-run resumes after the last committed batch. Rows of one logical backfill share a
``run_key`` (the bundle digest); ``batch_no`` 0 is the start row (its ``last_key`` holds
the pre-backfill digest of ``verify_columns``, when declared), 1..N are batches, and a
final row with a NULL ``last_key`` marks completion; the same transaction flips the ledger
entry to ``succeeded``, after which a re-run is a no-op. A compensation (reverse batches
with ``rollback_set``, then ``rollback.sql`` through the guard) keeps its own progress under
``<run_key>:reverse`` and, when done, retires both keys so that a later run starts afresh.

Key values stay in the database: receipts and artifacts carry batch numbers and counts.

This module is the PostGIS batch engine (SQL, batches, progress, reverse); the static
checks, the key check and the per-batch stops are ``backfill_checks``. The orchestration the
lifecycle calls (``engine/backfill.py``) reaches it through the ``Backfilling`` capability
of :class:`PostgisStore`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow_kfm_migrations.config import settings
from airflow_kfm_migrations.contracts.models import Backfill, PostgisDeclaration
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import BackfillInterrupted, BackfillStop, LockedError
from airflow_kfm_migrations.stores.base import BatchEvent
from airflow_kfm_migrations.stores.postgis.backfill_checks import (
    batch_statement,
    check_key,
    reverse_statement,
    rewrite_stop,
    run_key,
    scope_stop,
    split_table,
)
from airflow_kfm_migrations.stores.postgis.catalog import TABLES_QUERY, XACT_WRITES_QUERY
from airflow_kfm_migrations.stores.postgis.catalog_sql import LEDGER_SCHEMA, qident
from airflow_kfm_migrations.stores.postgis.client import advisory_key, db_error

PENDING = "backfill_pending"
ROLLED_BACK = "backfill_rolled_back"
_RETRYABLE = {"55P03", "40P01", "40001"}  # lock_not_available, deadlock, serialization


# --------------------------------------------------------------------------- engine


@dataclass
class Totals:
    batches: int = 0
    rows: int = 0  # all tables, this run
    keys: int = 0  # keys covered, this run
    lock_timeouts: int = 0
    writes: dict[str, list[int]] = field(default_factory=dict)  # table -> [ins, upd, del], this run
    batch_ms: list[int] = field(default_factory=list)


class Engine:
    """One connection, one batch per transaction. ``conn.autocommit`` stays False."""

    def __init__(
        self,
        conn: Any,
        bundle: Bundle,
        log: Callable[[str], None],
        progress: Callable[[BatchEvent], None] | None,
    ) -> None:
        decl = bundle.declaration
        assert isinstance(decl, PostgisDeclaration) and decl.backfill is not None
        self.conn = conn
        self.bundle = bundle
        self.decl = decl
        self.bf: Backfill = decl.backfill
        self.key = run_key(bundle)
        self.log = log
        self.progress = progress
        self.key_type = "text"
        self.schema, self.table = split_table(self.bf.table)
        self._last_log = 0.0
        self.log_every_s = settings().backfill_log_seconds
        self.totals = Totals()  # forward batches of this run
        self._stopping = False  # cancel() was called: no further forward batch runs
        self.reverse_totals = Totals()  # reverse batches of this run (a compensation or rollback)

    def cancel(self) -> None:
        """The ``Cancellable`` capability, called from another thread: cancel the running
        batch's statement (it rolls back; the committed batches stay) and run no further
        forward batch. The backfill then ends interrupted, and a re-run resumes."""
        self._stopping = True
        with contextlib.suppress(Exception):  # a closed connection has nothing to cancel
            self.conn.cancel_safe(timeout=5.0)

    # -- plumbing --------------------------------------------------------------

    def _begin(self, cur: Any) -> None:
        from psycopg import sql

        lt = self.bf.lock_timeout or self.decl.timeouts.lock_timeout
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lt)))
        cur.execute(
            sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self.decl.timeouts.statement_timeout))
        )

    def lock(self) -> None:

        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (advisory_key("kfm:" + self.decl.migration_id),))
            ok = cur.fetchone()[0]
        self.conn.commit()
        if not ok:
            raise LockedError(f"another run holds the migration lock for {self.decl.migration_id}; refusing")

    def unlock(self) -> None:

        try:
            self.conn.rollback()
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (advisory_key("kfm:" + self.decl.migration_id),))
            self.conn.commit()
        except Exception:  # connection gone: the server released the lock with it
            pass

    def _stats(self, cur: Any) -> dict[str, tuple[int, int, int]]:

        cur.execute(XACT_WRITES_QUERY)
        return {t: (i, u, d) for t, i, u, d in cur.fetchall()}

    def _literal(self, value: str) -> Any:
        from psycopg import sql

        return sql.Composed([sql.Literal(value), sql.SQL("::" + self.key_type)])

    def _render(self, template: str, lo: str, hi: str) -> str:
        from psycopg import sql

        parts = []
        for piece in re.split(r"(\{lo\}|\{hi\})", template):
            if piece == "{lo}":
                parts.append(self._literal(lo))
            elif piece == "{hi}":
                parts.append(self._literal(hi))
            elif piece:
                parts.append(sql.SQL(piece))
        return sql.Composed(parts).as_string(self.conn)

    # -- ledger & progress ------------------------------------------------------

    def ledger(self) -> tuple[int, str, str, dict[str, str]] | None:

        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (f"{LEDGER_SCHEMA}.ledger",))
            if cur.fetchone()[0] is None:
                return None
            cur.execute(
                f"SELECT id, operation, status, artifacts FROM {LEDGER_SCHEMA}.ledger WHERE migration_id = %s "
                "ORDER BY id DESC LIMIT 1",
                (self.decl.migration_id,),
            )
            row = cur.fetchone()
        self.conn.commit()
        return None if row is None else (row[0], row[1], row[2], dict(row[3]))

    def progress_rows(self, key: str) -> list[tuple[int, str | None, int]]:

        with self.conn.cursor() as cur:
            cur.execute(
                f"SELECT batch_no, last_key, rows_total FROM {LEDGER_SCHEMA}.backfill_progress "
                "WHERE migration_id = %s AND run_key = %s ORDER BY batch_no",
                (self.decl.migration_id, key),
            )
            rows = cur.fetchall()
        self.conn.commit()
        return [(int(b), k, int(n)) for b, k, n in rows]

    def _insert_progress(self, cur: Any, key: str, batch_no: int, last_key: str | None, rows_total: int) -> None:

        cur.execute(
            f"INSERT INTO {LEDGER_SCHEMA}.backfill_progress (migration_id, run_key, batch_no, last_key, rows_total) "
            "VALUES (%s, %s, %s, %s, %s)",
            (self.decl.migration_id, key, batch_no, last_key, rows_total),
        )

    def set_ledger_status(self, cur: Any, status: str) -> None:

        cur.execute(
            f"UPDATE {LEDGER_SCHEMA}.ledger SET status = %s WHERE id = (SELECT max(id) FROM {LEDGER_SCHEMA}.ledger "
            "WHERE migration_id = %s AND operation = 'apply')",
            (status, self.decl.migration_id),
        )

    def retire_progress(self, cur: Any, run_id: str) -> None:
        """Move this backfill's progress aside (kept for audit) so a later run starts afresh."""

        for suffix in ("", ":reverse"):
            cur.execute(
                f"UPDATE {LEDGER_SCHEMA}.backfill_progress SET run_key = %s WHERE migration_id = %s AND run_key = %s",
                (f"{self.key}{suffix}:undone:{run_id}", self.decl.migration_id, self.key + suffix),
            )

    # -- digests & estimates ---------------------------------------------------

    def verify_digest(self, cur: Any) -> str | None:
        if not self.bf.verify_columns:
            return None
        cols = ", ".join(qident(c) for c in [self.bf.key_column, *self.bf.verify_columns])
        cur.execute(
            f"SELECT encode(sha256(convert_to(COALESCE(string_agg(md5(ROW({cols})::text), '' "
            f"ORDER BY {qident(self.bf.key_column)}), ''), 'UTF8')), 'hex') "
            f"FROM {qident(self.schema)}.{qident(self.table)}"
        )
        return str(cur.fetchone()[0])

    def estimate(self, after: str | None) -> int | None:
        """Keys after ``after`` this run expects to cover (None when it cannot tell)."""
        where = [f"({self.bf.where})"] if self.bf.where and self.bf.set is not None else []
        try:
            with self.conn.cursor() as cur:
                self._begin(cur)
                params: list[Any] = []
                if after is not None:
                    where.append(f"{qident(self.bf.key_column)} > %s::{self.key_type}")
                    params.append(after)
                cond = (" WHERE " + " AND ".join(where)) if where else ""
                cur.execute(f"SELECT count(*) FROM {qident(self.schema)}.{qident(self.table)}{cond}", params)
                n = int(cur.fetchone()[0])
            self.conn.commit()
            return min(n, self.bf.max_rows) if self.bf.sql_template is None else n
        except Exception:  # the estimate only feeds the progress report: without one, the ETA is unknown
            self.conn.rollback()
            return None

    # -- one batch --------------------------------------------------------------

    def _next_range(self, cur: Any, after: str | None, upto: str | None, filtered: bool) -> tuple[str, str, int] | None:
        k = qident(self.bf.key_column)
        cond: list[str] = []
        params: list[Any] = []
        if after is not None:
            cond.append(f"{k} > %s::{self.key_type}")
            params.append(after)
        if upto is not None:
            cond.append(f"{k} <= %s::{self.key_type}")
            params.append(upto)
        if filtered and self.bf.where:
            cond.append(f"({self.bf.where})")
        where = (" WHERE " + " AND ".join(cond)) if cond else ""
        cur.execute(
            f"SELECT min(k)::text, max(k)::text, count(*) FROM (SELECT {k} AS k "
            f"FROM {qident(self.schema)}.{qident(self.table)}{where} ORDER BY {k} LIMIT %s) s",
            [*params, self.bf.batch_size],
        )
        lo, hi, n = cur.fetchone()
        return None if not n else (lo, hi, int(n))

    def _filenodes(self, cur: Any) -> dict[int, tuple[str, int]]:

        cur.execute(TABLES_QUERY)
        return {oid: (f"{s}.{t}", fn) for oid, s, t, fn in cur.fetchall()}

    def batch(
        self,
        *,
        phase: str,
        key: str,
        batch_no: int,
        after: str | None,
        upto: str | None,
        rows_before: int,
        template: str,
        limit: int | None,
        totals: Totals,
    ) -> tuple[str, int, int] | None:
        """Run one batch in its own transaction. Returns (last key, rows_total, rows) once committed,
        None when no key is left (nothing was written). Raises Stop (rolled back) or Interrupted."""
        import psycopg

        if self._stopping and phase == "forward":
            raise BackfillInterrupted(f"{phase} batch {batch_no}: not run, the run was asked to stop")
        attempt = 0
        while True:
            t0 = time.monotonic()
            try:
                with self.conn.cursor() as cur:
                    self._begin(cur)
                    rng = self._next_range(cur, after, upto, filtered=(phase == "forward" and self.bf.set is not None))
                    if rng is None:
                        self.conn.rollback()
                        return None
                    lo, hi, _n = rng
                    before, files0 = self._stats(cur), self._filenodes(cur)
                    cur.execute(self._render(template, lo, hi))
                    now, files1 = self._stats(cur), self._filenodes(cur)
                    writes = {}
                    for t in set(now) | set(before):
                        a, b = now.get(t, (0, 0, 0)), before.get(t, (0, 0, 0))
                        delta = (a[0] - b[0], a[1] - b[1], a[2] - b[2])
                        if any(delta):
                            writes[t] = delta
                    rows = sum(sum(v) for v in writes.values())
                    stop = scope_stop(self.decl, writes) or rewrite_stop(self.decl, files0, files1)
                    if stop is None and limit is not None and rows_before + rows > limit:
                        stop = BackfillStop(
                            "limit_exceeded",
                            f"backfill.max_rows: batch {batch_no} would bring the total to {rows_before + rows} "
                            f"> declared {limit}",
                        )
                    if stop is not None:
                        self.conn.rollback()
                        raise stop
                    self._insert_progress(cur, key, batch_no, hi, rows_before + rows)
                self.conn.commit()
            except psycopg.Error as exc:
                try:
                    self.conn.rollback()
                except Exception:  # the connection may be gone too: the error being handled is what counts
                    pass
                if (
                    getattr(exc, "sqlstate", None) in _RETRYABLE
                    and attempt < settings().backfill_lock_retries
                    and not self.conn.closed
                ):
                    attempt += 1
                    totals.lock_timeouts += 1
                    wait = min(0.1 * 2**attempt, 2.0)
                    self.log(f"{phase} batch {batch_no}: {db_error(exc)}; retry {attempt} in {wait:.1f}s")
                    time.sleep(wait)
                    continue
                raise BackfillInterrupted(f"{phase} batch {batch_no}: {db_error(exc)}") from None
            totals.batches += 1
            totals.rows += rows
            totals.keys += _n
            for t, v in writes.items():
                acc = totals.writes.setdefault(t, [0, 0, 0])
                for i in range(3):
                    acc[i] += v[i]
            totals.batch_ms.append(int((time.monotonic() - t0) * 1000))
            return hi, rows_before + rows, rows

    def report(self, ev: BatchEvent) -> None:
        if self.progress is not None:
            self.progress(ev)
        now = time.monotonic()
        if ev.final or ev.batches_run == 1 or now - self._last_log >= self.log_every_s:
            self._last_log = now
            eta = f"{ev.eta_s:.0f}s" if ev.eta_s is not None else "?"
            of = f"/{ev.estimate}" if ev.estimate is not None else ""
            self.log(
                f"{ev.phase} backfill: batch {ev.batch_no} ({ev.batches_run} this run), "
                f"{ev.keys}{of} rows, {ev.rows_total} rows written in total, "
                f"{ev.rate:.0f} rows/s, ETA {eta}"
            )

    def loop(
        self,
        *,
        phase: str,
        key: str,
        start_batch: int,
        after: str | None,
        upto: str | None,
        rows_before: int,
        template: str,
        limit: int | None,
        totals: Totals,
        estimate: int | None,
        on_done: Callable[[Any, int, int], None],
    ) -> int:
        """Batches until no key is left; ``on_done(cur, next_batch_no, rows_total)`` runs in
        the closing transaction. Returns the final rows_total."""
        started = time.monotonic()
        batch_no, total = start_batch, rows_before
        while True:
            got = self.batch(
                phase=phase,
                key=key,
                batch_no=batch_no,
                after=after,
                upto=upto,
                rows_before=total,
                template=template,
                limit=limit,
                totals=totals,
            )
            if got is None:
                break
            after, total, rows = got
            self.report(
                BatchEvent(
                    phase,
                    batch_no,
                    totals.batches,
                    rows,
                    total,
                    totals.keys,
                    estimate,
                    time.monotonic() - started,
                )
            )
            batch_no += 1
            if self.bf.pause_ms:
                time.sleep(self.bf.pause_ms / 1000)
        with self.conn.cursor() as cur:
            on_done(cur, batch_no, total)
        self.conn.commit()
        self.report(
            BatchEvent(
                phase,
                batch_no - 1,
                totals.batches,
                totals.rows,
                total,
                totals.keys,
                estimate,
                time.monotonic() - started,
                final=True,
            )
        )
        return total

    # -- the BackfillEngine protocol (what engine/backfill.py drives) ------------

    PENDING = PENDING
    ROLLED_BACK = ROLLED_BACK

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing a connection that is already gone: nothing left to release
            pass

    def check_key(self) -> str | None:
        """The key must be NOT NULL and alone carry a unique index; learns its type."""
        with self.conn.cursor() as cur:
            problem, self.key_type = check_key(cur, self.bf)
        self.conn.commit()
        return problem

    def key_summary(self) -> str:
        return f"{self.bf.key_column} ({self.key_type}) unique, not null"

    def reverse_pending(self) -> int:
        """Reverse batches an interrupted compensation left (0: none)."""
        return len(self.progress_rows(self.key + ":reverse"))

    def last_progress(self) -> tuple[int, str | None, int] | None:
        rows = self.progress_rows(self.key)
        return rows[-1] if rows else None

    def complete_if_done(self) -> bool:
        """True when every batch committed; flips a ledger entry a crash left pending."""
        last = self.last_progress()
        if last is None or not (last[0] > 0 and last[1] is None):
            return False
        with self.conn.cursor() as cur:
            self.set_ledger_status(cur, "succeeded")
        self.conn.commit()
        return True

    def start(self, *, mark_pending: bool) -> tuple[int, str | None, int]:
        """Record the start row (with the pre-backfill verify digest) and return it."""
        with self.conn.cursor() as cur:
            self._begin(cur)
            pre = self.verify_digest(cur)
            self._insert_progress(cur, self.key, 0, pre, 0)
            if mark_pending:  # a fresh start after a compensated attempt
                self.set_ledger_status(cur, PENDING)
        self.conn.commit()
        return (0, pre, 0)

    def run_forward(self, last: tuple[int, str | None, int]) -> int:
        """Batches after ``last`` until no key is left; the closing transaction marks the
        backfill complete and the ledger entry succeeded. Returns the final rows_total."""
        after = last[1] if last[0] > 0 else None

        def done(cur: Any, next_no: int, total: int) -> None:
            self._insert_progress(cur, self.key, next_no, None, total)
            self.set_ledger_status(cur, "succeeded")

        return self.loop(
            phase="forward",
            key=self.key,
            start_batch=last[0] + 1,
            after=after,
            upto=None,
            rows_before=last[2],
            template=batch_statement(self.bf),
            limit=self.bf.max_rows,
            totals=self.totals,
            estimate=self.estimate(after),
            on_done=done,
        )

    def reverse(self) -> tuple[bool, str | None, int]:
        """Reverse the committed forward batches with ``rollback_set``, batched, resumable.
        Returns (ok, problem, committed forward batches that were there to reverse)."""
        fwd = [r for r in self.progress_rows(self.key) if r[0] > 0 and r[1] is not None]
        if not fwd or not self.bf.rollback_set:
            return True, None, 0
        rev = self.progress_rows(self.key + ":reverse")
        last = rev[-1] if rev else (0, None, 0)
        self.check_key()
        self.reverse_totals = Totals()
        try:
            self.loop(
                phase="reverse",
                key=self.key + ":reverse",
                start_batch=last[0] + 1,
                after=last[1],
                upto=fwd[-1][1],
                rows_before=last[2],
                template=reverse_statement(self.bf),
                limit=None,
                totals=self.reverse_totals,
                estimate=None,
                on_done=lambda cur, n, total: None,
            )
        except (BackfillStop, BackfillInterrupted) as exc:
            return False, f"reverse backfill: {exc}", len(fwd)
        return True, None, len(fwd)

    def verify_after_reverse(self) -> tuple[bool, str]:
        """Compare the verify_columns digest with the one recorded before the first batch."""
        rows = self.progress_rows(self.key)
        pre = rows[0][1] if rows and rows[0][0] == 0 else None
        if not self.bf.verify_columns:
            return True, "no verify_columns declared"
        if pre is None:
            return False, "no pre-backfill digest was recorded"
        with self.conn.cursor() as cur:
            now = self.verify_digest(cur)
        self.conn.commit()
        same = now == pre
        return same, ("verify_columns digest equals pre" if same else "verify_columns digest differs from pre")

    def retire(self, run_id: str, status: str) -> None:
        """Move this backfill's progress aside and set the ledger status, in one transaction."""
        with self.conn.cursor() as cur:
            self.retire_progress(cur, run_id)
            self.set_ledger_status(cur, status)
        self.conn.commit()

    def metrics(self, phase: str, started: float) -> dict[str, int | float | str]:
        totals = self.totals if phase == "forward" else self.reverse_totals
        dur = time.monotonic() - started
        p = "" if phase == "forward" else "reverse_"
        out: dict[str, int | float | str] = {
            f"{p}batches": totals.batches,
            f"{p}rows": totals.rows,
            f"{p}keys": totals.keys,
            f"{p}lock_retries": totals.lock_timeouts,
            f"{p}duration_s": round(dur, 3),
            f"{p}rows_per_s": round(totals.keys / dur, 1) if dur > 0 else 0.0,
        }
        if totals.batch_ms:
            out[f"{p}max_batch_ms"] = max(totals.batch_ms)
        return out

    def summary(self, state: str) -> dict[str, Any]:
        totals = self.totals
        return {
            "schema_version": "backfill_summary.v1",
            "migration_id": self.decl.migration_id,
            "table": f"{self.schema}.{self.table}",
            "key_column": self.bf.key_column,
            "run_key": self.key,
            "state": state,
            "writes": [
                {"table": t, "inserted": v[0], "updated": v[1], "deleted": v[2]}
                for t, v in sorted(totals.writes.items())
            ],
            "batch_ms": totals.batch_ms,
        }
