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
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.contracts.models import Backfill, PostgisDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import LockedError, RefusedError
from airflow_kfm_migrations.util.digest import write_json

LOG_EVERY_S = float(os.environ.get("KFM_BACKFILL_LOG_SECONDS", "10"))
LOCK_RETRIES = int(os.environ.get("KFM_BACKFILL_LOCK_RETRIES", "8"))
PLACEHOLDERS = ("{lo}", "{hi}")
PENDING = "backfill_pending"
ROLLED_BACK = "backfill_rolled_back"
_RETRYABLE = {"55P03", "40P01", "40001"}  # lock_not_available, deadlock, serialization


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True)
class BatchEvent:
    """What the progress bar and the task log show after each committed batch."""

    phase: str  # forward | reverse
    batch_no: int
    batches_run: int
    rows: int  # rows written by this batch, all tables
    rows_total: int  # rows written by the whole backfill so far (all runs), all tables
    keys: int  # keys of the target table covered so far in this run
    estimate: int | None  # keys this run expects to cover (None: unknown)
    elapsed_s: float
    final: bool = False

    @property
    def rate(self) -> float:
        return self.keys / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.estimate is None or self.rate <= 0:
            return None
        return max(0.0, (self.estimate - self.keys) / self.rate)


# ----------------------------------------------------------------------- static checks


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def run_key(bundle: Bundle) -> str:
    """Identifies one logical backfill: the migration id (its own column) + the bundle digest."""
    return bundle.digest


def _statement(bf: Backfill, key_type: str = "text") -> str:
    """The batch statement as text, with ``{lo}`` / ``{hi}`` left for the runner."""
    schema, table = _split(bf.table)
    if bf.sql_template is not None:
        return bf.sql_template
    where = f" AND ({bf.where})" if bf.where else ""
    return (
        f"UPDATE {_q(schema)}.{_q(table)} SET {bf.set} WHERE {_q(bf.key_column)} >= {{lo}} "
        f"AND {_q(bf.key_column)} <= {{hi}}{where}"
    )


def _reverse_statement(bf: Backfill) -> str:
    schema, table = _split(bf.table)
    return (
        f"UPDATE {_q(schema)}.{_q(table)} SET {bf.rollback_set} WHERE {_q(bf.key_column)} >= {{lo}} "
        f"AND {_q(bf.key_column)} <= {{hi}}"
    )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _review_backfill_rows() -> int:
    """The gate's review threshold for large backfills (KFM_REVIEW_BACKFILL_ROWS)."""
    from airflow_kfm_migrations.stores.postgis import store as postgis

    thresholds = getattr(postgis, "review_thresholds", None)
    if thresholds is not None:
        return int(thresholds()[1])
    return int(os.environ.get("KFM_REVIEW_BACKFILL_ROWS", "100000"))


def static_problems(bundle: Bundle) -> list[str]:
    """Checks that need no connection: scope of the target and of every statement the
    backfill runs, one statement per template, approvals for large backfills."""
    decl = bundle.declaration
    if not isinstance(decl, PostgisDeclaration) or decl.backfill is None:
        return []
    import pglast
    from pglast import ast

    from airflow_kfm_migrations.stores.postgis.store import PgScope, classify_statement

    review_rows = _review_backfill_rows()

    bf = decl.backfill
    scope = PgScope(decl)
    problems: list[str] = []
    schema, table = _split(bf.table)
    if scope.forbidden(schema, table) or (
        scope.protected(schema, table) and not approval_covers(decl, f"protected:{schema}.{table}")
    ):
        problems.append(f"backfill.table {schema}.{table} is forbidden or protected")
    elif not scope.allowed(schema, table):
        problems.append(f"backfill.table {schema}.{table} is outside the allowed scope")
    if bf.max_rows > review_rows and not approval_covers(decl, "review:large_backfill"):
        problems.append(
            f"backfill.max_rows {bf.max_rows} is over {review_rows}: needs an approval covering review:large_backfill"
        )
    if bf.sql_template is not None and not all(p in bf.sql_template for p in PLACEHOLDERS):
        problems.append("backfill.sql_template must use both {lo} and {hi} (the batch's key range, inclusive)")
    bodies = [("backfill", _statement(bf))]
    if bf.rollback_set:
        bodies.append(("backfill.rollback_set", _reverse_statement(bf)))
    for label, text in bodies:
        probe = text.replace("{lo}", "'0'").replace("{hi}", "'0'")
        try:
            parsed = pglast.parse_sql(probe)
        except pglast.parser.ParseError as exc:
            problems.append(f"{label}: SQL does not parse: {exc.args[0]}")
            continue
        if len(parsed) != 1:
            problems.append(f"{label}: must be exactly one statement, found {len(parsed)}")
            continue
        stmt = parsed[0].stmt
        if not isinstance(stmt, (ast.UpdateStmt, ast.InsertStmt, ast.DeleteStmt, ast.MergeStmt)):
            problems.append(f"{label}: must be one UPDATE, INSERT, DELETE or MERGE, not {type(stmt).__name__}")
            continue
        _kind, targets, _txn, _note = classify_statement(stmt, ["public"])
        for t in targets:
            ts, _, tt = t.partition(".")
            if scope.forbidden(ts, tt) or (scope.protected(ts, tt) and not approval_covers(decl, f"protected:{t}")):
                problems.append(f"{label}: targets forbidden or protected {t}")
            elif not scope.allowed(ts, tt):
                problems.append(f"{label}: targets {t}, outside the allowed scope")
    if bf.verify_columns and not bf.rollback_set and not bundle.by_role("rollback"):
        problems.append("backfill.verify_columns needs rollback_set or a rollback artifact to verify against")
    return problems


# ------------------------------------------------------------------------ key check

_KEY_QUERY = """
SELECT a.attnotnull, format_type(a.atttypid, a.atttypmod),
       EXISTS (SELECT 1 FROM pg_catalog.pg_index i
               WHERE i.indrelid = c.oid AND i.indisunique AND i.indisvalid AND i.indimmediate
                 AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')"""


def check_key(cur: Any, bf: Backfill) -> tuple[str | None, str]:
    """(problem or None, key type). The key must be NOT NULL and alone carry a unique index."""
    schema, table = _split(bf.table)
    cur.execute(_KEY_QUERY, (bf.key_column, schema, table))
    row = cur.fetchone()
    if row is None:
        return f"backfill table {schema}.{table} does not exist", "text"
    notnull, key_type, unique = row
    if key_type is None:
        return f"backfill key column {bf.key_column} does not exist on {schema}.{table}", "text"
    if not notnull:
        return f"backfill key column {schema}.{table}.{bf.key_column} is nullable; it must be NOT NULL", key_type
    if not unique:
        return (
            f"backfill key column {schema}.{table}.{bf.key_column} has no unique index of its own; "
            "batches need a unique, ordered key",
            key_type,
        )
    return None, key_type


# --------------------------------------------------------------------------- engine


class Stop(Exception):
    """A governance stop: the batch was rolled back and the backfill must be compensated."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class Interrupted(Exception):
    """A non-governance failure (error, timeout, lost connection): progress is kept; re-run resumes."""


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
        self.schema, self.table = _split(self.bf.table)
        self._last_log = 0.0

    # -- plumbing --------------------------------------------------------------

    def _begin(self, cur: Any) -> None:
        from psycopg import sql

        lt = self.bf.lock_timeout or self.decl.timeouts.lock_timeout
        cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lt)))
        cur.execute(
            sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(self.decl.timeouts.statement_timeout))
        )

    def lock(self) -> None:
        from airflow_kfm_migrations.stores.postgis.store import _key

        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (_key("kfm:" + self.decl.migration_id),))
            ok = cur.fetchone()[0]
        self.conn.commit()
        if not ok:
            raise LockedError(f"another run holds the migration lock for {self.decl.migration_id}; refusing")

    def unlock(self) -> None:
        from airflow_kfm_migrations.stores.postgis.store import _key

        try:
            self.conn.rollback()
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (_key("kfm:" + self.decl.migration_id),))
            self.conn.commit()
        except Exception:  # connection gone: the server released the lock with it
            pass

    def _stats(self, cur: Any) -> dict[str, tuple[int, int, int]]:
        from airflow_kfm_migrations.stores.postgis.catalog import XACT_WRITES_QUERY

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
        from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_SCHEMA

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
        from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_SCHEMA

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
        from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_SCHEMA

        cur.execute(
            f"INSERT INTO {LEDGER_SCHEMA}.backfill_progress (migration_id, run_key, batch_no, last_key, rows_total) "
            "VALUES (%s, %s, %s, %s, %s)",
            (self.decl.migration_id, key, batch_no, last_key, rows_total),
        )

    def set_ledger_status(self, cur: Any, status: str) -> None:
        from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_SCHEMA

        cur.execute(
            f"UPDATE {LEDGER_SCHEMA}.ledger SET status = %s WHERE id = (SELECT max(id) FROM {LEDGER_SCHEMA}.ledger "
            "WHERE migration_id = %s AND operation = 'apply')",
            (status, self.decl.migration_id),
        )

    def retire(self, cur: Any, run_id: str) -> None:
        """Move this backfill's progress aside (kept for audit) so a later run starts afresh."""
        from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_SCHEMA

        for suffix in ("", ":reverse"):
            cur.execute(
                f"UPDATE {LEDGER_SCHEMA}.backfill_progress SET run_key = %s WHERE migration_id = %s AND run_key = %s",
                (f"{self.key}{suffix}:undone:{run_id}", self.decl.migration_id, self.key + suffix),
            )

    # -- digests & estimates ---------------------------------------------------

    def verify_digest(self, cur: Any) -> str | None:
        if not self.bf.verify_columns:
            return None
        cols = ", ".join(_q(c) for c in [self.bf.key_column, *self.bf.verify_columns])
        cur.execute(
            f"SELECT encode(sha256(convert_to(COALESCE(string_agg(md5(ROW({cols})::text), '' "
            f"ORDER BY {_q(self.bf.key_column)}), ''), 'UTF8')), 'hex') FROM {_q(self.schema)}.{_q(self.table)}"
        )
        return str(cur.fetchone()[0])

    def estimate(self, after: str | None) -> int | None:
        where = [f"({self.bf.where})"] if self.bf.where and self.bf.set is not None else []
        try:
            with self.conn.cursor() as cur:
                self._begin(cur)
                params: list[Any] = []
                if after is not None:
                    where.append(f"{_q(self.bf.key_column)} > %s::{self.key_type}")
                    params.append(after)
                cond = (" WHERE " + " AND ".join(where)) if where else ""
                cur.execute(f"SELECT count(*) FROM {_q(self.schema)}.{_q(self.table)}{cond}", params)
                n = int(cur.fetchone()[0])
            self.conn.commit()
            return min(n, self.bf.max_rows) if self.bf.sql_template is None else n
        except Exception:
            self.conn.rollback()
            return None

    # -- one batch --------------------------------------------------------------

    def _next_range(self, cur: Any, after: str | None, upto: str | None, filtered: bool) -> tuple[str, str, int] | None:
        k = _q(self.bf.key_column)
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
            f"SELECT min(k)::text, max(k)::text, count(*) FROM (SELECT {k} AS k FROM {_q(self.schema)}.{_q(self.table)}"
            f"{where} ORDER BY {k} LIMIT %s) s",
            [*params, self.bf.batch_size],
        )
        lo, hi, n = cur.fetchone()
        return None if not n else (lo, hi, int(n))

    def _filenodes(self, cur: Any) -> dict[int, tuple[str, int]]:
        from airflow_kfm_migrations.stores.postgis.catalog import TABLES_QUERY

        cur.execute(TABLES_QUERY)
        return {oid: (f"{s}.{t}", fn) for oid, s, t, fn in cur.fetchall()}

    def _rewrite_stop(self, before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> Stop | None:
        """TRUNCATE or a table rewrite replaces storage without counting rows: caught by relfilenode."""
        from airflow_kfm_migrations.stores.postgis.store import PgScope

        scope = PgScope(self.decl)
        for oid, (name, fn) in sorted(after.items()):
            if oid in before and before[oid][1] != fn:
                schema, _, table = name.partition(".")
                if not scope.allowed(schema, table) or scope.guarded(schema, table):
                    return Stop("forbidden_rewrite", f"storage of {name} replaced (TRUNCATE or rewrite)")
                if not approval_covers(self.decl, "review:table_rewritten"):
                    return Stop("table_rewritten", f"storage of {name} replaced (TRUNCATE or rewrite) without approval")
        return None

    def _scope_stop(self, writes: dict[str, tuple[int, int, int]]) -> Stop | None:
        from airflow_kfm_migrations.stores.postgis.store import PgScope

        scope = PgScope(self.decl)
        for t, (i, u, d) in sorted(writes.items()):
            n = i + u + d
            if not n:
                continue
            schema, _, table = t.partition(".")
            if scope.forbidden(schema, table):
                return Stop("forbidden_write", f"{n} row(s) written into forbidden {t}")
            if scope.protected(schema, table) and not approval_covers(self.decl, f"protected:{t}"):
                return Stop("protected_write", f"{n} row(s) written into protected {t}")
            if not scope.protected(schema, table) and not scope.allowed(schema, table):
                return Stop("out_of_scope_write", f"{n} row(s) written into {t}, outside the allowed scope")
        return None

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
                    stop = self._scope_stop(writes) or self._rewrite_stop(files0, files1)
                    if stop is None and limit is not None and rows_before + rows > limit:
                        stop = Stop(
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
                from airflow_kfm_migrations.stores.postgis.store import _db_error

                try:
                    self.conn.rollback()
                except Exception:
                    pass
                if getattr(exc, "sqlstate", None) in _RETRYABLE and attempt < LOCK_RETRIES and not self.conn.closed:
                    attempt += 1
                    totals.lock_timeouts += 1
                    wait = min(0.1 * 2**attempt, 2.0)
                    self.log(f"{phase} batch {batch_no}: {_db_error(exc)}; retry {attempt} in {wait:.1f}s")
                    time.sleep(wait)
                    continue
                raise Interrupted(f"{phase} batch {batch_no}: {_db_error(exc)}") from None
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
        if ev.final or ev.batches_run == 1 or now - self._last_log >= LOG_EVERY_S:
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


# ------------------------------------------------------------------------ lifecycle


def _decl_backfill(bundle: Bundle) -> Backfill | None:
    return getattr(bundle.declaration, "backfill", None)


def run_backfill(bundle: Bundle, opts: Any) -> Any:
    """The backfill phase: after the schema part is committed (ledger ``backfill_pending``).

    Shared by the CLI (after ``run_migration``) and the Airflow BackfillOperator. A re-run
    (or an Airflow retry) resumes after the last committed batch; after completion it is a
    no-op. Returns a ``RunResult``; every outcome but "already complete" writes a receipt
    with ``operation: backfill``.
    """
    from airflow_kfm_migrations.engine.lifecycle import RunResult, _Run, open_store, preflight

    bf = _decl_backfill(bundle)
    if bf is None:
        return RunResult("noop", "no backfill declared", None, operation="backfill")
    run = _Run(bundle, opts, "backfill")
    if opts.dry_run:
        opts.log("dry run: the backfill is not rehearsed (its batches commit one by one)")
        return RunResult("succeeded", "dry run: backfill not rehearsed", None, operation="backfill")
    reason = preflight(run)
    if reason:
        return run.finish("failed", reason)
    store: Any = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    try:
        conn = store._connect()
    except RefusedError as exc:
        run.check("store", False, str(exc))
        return run.finish("failed", str(exc))
    conn.autocommit = False
    eng = Engine(conn, bundle, opts.log, getattr(opts, "progress", None))
    started = time.monotonic()
    totals = Totals()
    locked = False
    try:
        try:
            eng.lock()
            locked = True
        except LockedError as exc:
            run.check("lock", False, str(exc))
            return run.finish("failed", str(exc))
        run.check("lock", True)
        led = eng.ledger()
        if led is None or led[1] != "apply":
            run.check("ledger", False, "the schema part is not applied")
            return run.finish("failed", "the schema part of this migration is not applied; run it first")
        current = {a.rel: a.sha256 for a in bundle.artifacts}
        changed = sorted(k for k in set(current) | set(led[3]) if current.get(k) != led[3].get(k))
        if changed:
            run.check("ledger", False, f"changed since apply: {', '.join(changed)}")
            return run.finish("failed", f"{changed[0]} changed after the schema part was applied")
        if led[2] == "succeeded":
            run.check("ledger", True, "backfill already complete")
            return RunResult("noop", "backfill already complete", None, operation="backfill")
        run.check("ledger", True, f"schema part applied, backfill {led[2]}")
        rev = eng.progress_rows(eng.key + ":reverse")
        if rev:
            opts.log(f"an interrupted compensation left {len(rev)} reverse batch(es); resuming it")
            run.metrics["resumed_compensation"] = 1
            return _compensate(run, store, eng, totals, "resuming an interrupted compensation")
        with conn.cursor() as cur:
            problem, eng.key_type = check_key(cur, bf)
        conn.commit()
        run.check("backfill_key", problem is None, problem or f"{bf.key_column} ({eng.key_type}) unique, not null")
        if problem:
            return run.finish("failed", problem)
        rows = eng.progress_rows(eng.key)
        if rows and rows[-1][0] > 0 and rows[-1][1] is None:  # completed, ledger not flipped
            with conn.cursor() as cur:
                eng.set_ledger_status(cur, "succeeded")
            conn.commit()
            return RunResult("noop", "backfill already complete", None, operation="backfill")
        if not rows:
            with conn.cursor() as cur:
                eng._begin(cur)
                pre = eng.verify_digest(cur)
                eng._insert_progress(cur, eng.key, 0, pre, 0)
                if led[2] != PENDING:  # a fresh start after a compensated attempt
                    eng.set_ledger_status(cur, PENDING)
            conn.commit()
            rows = [(0, pre, 0)]
        last = rows[-1]
        after = last[1] if last[0] > 0 else None
        run.metrics.update(
            {
                "resumed_from_batch": last[0],
                "resumed_at_rows": last[2],
                "run_key": eng.key[:16],
                "batch_size": bf.batch_size,
                "max_rows": bf.max_rows,
            }
        )
        if last[0] > 0:
            opts.log(f"resuming the backfill after batch {last[0]} ({last[2]} rows written so far)")
        estimate = eng.estimate(after)
        template = _statement(bf)

        def done(cur: Any, next_no: int, total: int) -> None:
            eng._insert_progress(cur, eng.key, next_no, None, total)
            eng.set_ledger_status(cur, "succeeded")

        try:
            total = eng.loop(
                phase="forward",
                key=eng.key,
                start_batch=last[0] + 1,
                after=after,
                upto=None,
                rows_before=last[2],
                template=template,
                limit=bf.max_rows,
                totals=totals,
                estimate=estimate,
                on_done=done,
            )
        except Stop as stop:
            _metrics(run, totals, started, "forward")
            run.check("backfill", False, f"{stop.code}: {stop}")
            why = f"backfill stopped ({stop.code}: {stop}); that batch was rolled back"
            return _compensate(run, store, eng, totals, why)
        except Interrupted as exc:
            _metrics(run, totals, started, "forward")
            run.check("backfill", False, str(exc))
            _write_summary(run, eng, totals, "interrupted")
            result = run.finish("failed", f"backfill interrupted, committed batches kept; a re-run resumes: {exc}")
            result.resumable = True
            return result
        _metrics(run, totals, started, "forward")
        run.metrics["rows_total"] = total
        run.check("backfill", True, f"{totals.batches} batch(es), {totals.rows} rows this run, {total} in total")
        _write_summary(run, eng, totals, "complete")
        return run.finish("succeeded", None)
    finally:
        if locked:
            eng.unlock()
        try:
            conn.close()
        except Exception:
            pass


def _metrics(run: Any, totals: Totals, started: float, phase: str) -> None:
    dur = time.monotonic() - started
    p = "" if phase == "forward" else "reverse_"
    run.metrics.update(
        {
            f"{p}batches": totals.batches,
            f"{p}rows": totals.rows,
            f"{p}keys": totals.keys,
            f"{p}lock_retries": totals.lock_timeouts,
            f"{p}duration_s": round(dur, 3),
            f"{p}rows_per_s": round(totals.keys / dur, 1) if dur > 0 else 0.0,
        }
    )
    if totals.batch_ms:
        run.metrics[f"{p}max_batch_ms"] = max(totals.batch_ms)


def _write_summary(run: Any, eng: Engine, totals: Totals, state: str) -> None:
    if run.opts.dry_run:
        return
    doc = {
        "schema_version": "backfill_summary.v1",
        "migration_id": eng.decl.migration_id,
        "run_id": run.run_id,
        "table": f"{eng.schema}.{eng.table}",
        "key_column": eng.bf.key_column,
        "run_key": eng.key,
        "state": state,
        "metrics": dict(run.metrics),
        "writes": [
            {"table": t, "inserted": v[0], "updated": v[1], "deleted": v[2]} for t, v in sorted(totals.writes.items())
        ],
        "batch_ms": totals.batch_ms,
    }
    p = Path(run.dir) / "diffs" / "backfill.json"
    write_json(p, doc)
    run.outputs.append(("backfill_summary", p))


def reverse(eng: Engine, totals: Totals, started: float) -> tuple[bool, str | None, int]:
    """Reverse the committed forward batches with ``rollback_set``, batched, resumable.
    Returns (ok, problem, committed forward batches that were there to reverse)."""
    bf = eng.bf
    fwd = [r for r in eng.progress_rows(eng.key) if r[0] > 0 and r[1] is not None]
    if not fwd:
        return True, None, 0
    if not bf.rollback_set:
        return True, None, 0
    upto = fwd[-1][1]
    rev = eng.progress_rows(eng.key + ":reverse")
    last = rev[-1] if rev else (0, None, 0)
    with eng.conn.cursor() as cur:
        _p, eng.key_type = check_key(cur, bf)
    eng.conn.commit()
    try:
        eng.loop(
            phase="reverse",
            key=eng.key + ":reverse",
            start_batch=last[0] + 1,
            after=last[1],
            upto=upto,
            rows_before=last[2],
            template=_reverse_statement(bf),
            limit=None,
            totals=totals,
            estimate=None,
            on_done=lambda cur, n, total: None,
        )
    except (Stop, Interrupted) as exc:
        return False, f"reverse backfill: {exc}", len(fwd)
    return True, None, len(fwd)


def _compensate(run: Any, store: Any, eng: Engine, totals: Totals, why: str) -> Any:
    """Undo the whole migration: reverse batches (rollback_set), then rollback.sql through the
    guard; the store must equal the apply's pre-baseline and the verify digest its pre value."""
    from airflow_kfm_migrations.engine.lifecycle import rollback_core

    eng.unlock()  # rollback_core takes the lock again and frees it before the guard session
    status, reason, session = rollback_core(run, store, why, eng=eng)
    if status == "noop":
        status = "failed"
    _write_summary(run, eng, totals, status)
    result = run.finish(status, reason)
    if session is not None:
        from airflow_kfm_migrations.engine.lifecycle import _note_receipt

        _note_receipt(session, run, result)
    return result


def verify_after_reverse(eng: Engine) -> tuple[bool, str]:
    """Compare the verify_columns digest with the one recorded before the first batch."""
    rows = eng.progress_rows(eng.key)
    pre = rows[0][1] if rows and rows[0][0] == 0 else None
    if not eng.bf.verify_columns:
        return True, "no verify_columns declared"
    if pre is None:
        return False, "no pre-backfill digest was recorded"
    with eng.conn.cursor() as cur:
        now = eng.verify_digest(cur)
    eng.conn.commit()
    return now == pre, ("verify_columns digest equals pre" if now == pre else "verify_columns digest differs from pre")


__all__ = [
    "BatchEvent",
    "Engine",
    "check_key",
    "reverse",
    "run_backfill",
    "run_key",
    "static_problems",
    "verify_after_reverse",
]
