"""The lock table of the PostGIS plan (``stores/postgis/locks.py``, documented in
``docs/reference/postgis-locks.md``) against PostgreSQL itself: each statement runs in a
transaction that is rolled back, and the strongest lock it holds on the table is read from
``pg_locks``."""

from __future__ import annotations

import pglast
import pytest
from conftest import REPO, PgDatabase

from airflow_kfm_migrations.stores.postgis.locks import LOCK_TABLE, MODES, lock_table_markdown, statement_lock

SETUP = """
CREATE TABLE public.t (id int PRIMARY KEY, a int, b text);
CREATE TABLE public.r (id int PRIMARY KEY);
CREATE INDEX t_a ON public.t (a);
ALTER TABLE public.t ADD CONSTRAINT ck CHECK (a > 0) NOT VALID;
ALTER TABLE public.t ADD CONSTRAINT fk0 FOREIGN KEY (a) REFERENCES public.r (id) NOT VALID;
CREATE FUNCTION public.trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER tg BEFORE INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.trg();
CREATE VIEW public.v AS SELECT id, a FROM public.t;
CREATE MATERIALIZED VIEW public.mv AS SELECT 1 AS x;
CREATE UNIQUE INDEX mv_x ON public.mv (x);
CREATE TABLE public.pp (id int) PARTITION BY LIST (id);
"""

# (statement, the relation whose lock is checked)
CASES = [
    ("CREATE TABLE n (id int REFERENCES r (id))", "r"),
    ("CREATE TABLE p1 PARTITION OF pp FOR VALUES IN (1)", "pp"),
    ("CREATE TABLE n AS SELECT * FROM t", "t"),
    ("DROP TABLE t CASCADE", "t"),
    ("DROP VIEW v", "v"),
    ("DROP INDEX t_a", "t"),
    ("DROP TRIGGER tg ON t", "t"),
    ("ALTER TABLE t ADD COLUMN c int", "t"),
    ("ALTER TABLE t ADD COLUMN c int DEFAULT 1", "t"),
    ("ALTER TABLE t DROP COLUMN b", "t"),
    ("ALTER TABLE t ALTER COLUMN b TYPE varchar", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET NOT NULL", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET DEFAULT 1", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET STATISTICS 100", "t"),
    ("ALTER TABLE t ADD CONSTRAINT c2 CHECK (a > 0)", "t"),
    ("ALTER TABLE t ADD CONSTRAINT c2 CHECK (a > 0) NOT VALID", "t"),
    ("ALTER TABLE t ADD CONSTRAINT u UNIQUE (a)", "t"),
    ("ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES r (id)", "t"),
    ("ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES r (id) NOT VALID", "r"),
    ("ALTER TABLE t VALIDATE CONSTRAINT ck", "t"),
    ("ALTER TABLE t VALIDATE CONSTRAINT fk0", "t"),
    ("ALTER TABLE t DROP CONSTRAINT ck", "t"),
    ("ALTER TABLE t DISABLE TRIGGER tg", "t"),
    ("ALTER TABLE t SET (fillfactor = 70)", "t"),
    ("ALTER TABLE t CLUSTER ON t_a", "t"),
    ("ALTER TABLE t ENABLE ROW LEVEL SECURITY", "t"),
    ("ALTER TABLE t ALTER COLUMN a SET STATISTICS 100, ADD COLUMN c int", "t"),
    ("ALTER TABLE t RENAME TO t2", "t"),
    ("ALTER TABLE t RENAME COLUMN b TO bb", "t"),
    ("ALTER INDEX t_a RENAME TO t_a2", "t_a"),
    ("CREATE INDEX i ON t (b)", "t"),
    ("REINDEX TABLE t", "t"),
    ("TRUNCATE t", "t"),
    ("ANALYZE t", "t"),
    ("CREATE OR REPLACE VIEW v AS SELECT id, a FROM t", "v"),
    ("CREATE TRIGGER tg2 BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION trg()", "t"),
    ("COMMENT ON TABLE t IS 'x'", "t"),
    ("COMMENT ON COLUMN t.a IS 'x'", "t"),
    ("CREATE POLICY p ON t USING (true)", "t"),
    ("CREATE RULE rr AS ON UPDATE TO t DO INSTEAD NOTHING", "t"),
    ("CREATE STATISTICS st ON a, b FROM t", "t"),
    ("REFRESH MATERIALIZED VIEW mv", "mv"),
    ("UPDATE t SET a = 2", "t"),
    ("DELETE FROM t", "t"),
    ("SELECT * FROM t", "t"),
    ("SELECT * FROM t FOR UPDATE", "t"),
    ("LOCK TABLE t IN SHARE MODE", "t"),
    ("GRANT SELECT ON t TO PUBLIC", "t"),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", "t"),
]
_MODE = {m.title().replace(" ", "") + "Lock": m for m in MODES}


@pytest.mark.postgis
def test_the_lock_table_matches_postgresql(pgdb: PgDatabase) -> None:
    pgdb.sql(SETUP)
    wrong = []
    with pgdb.connect() as conn, conn.cursor() as cur:
        for sql, rel in CASES:
            found = statement_lock(pglast.parse_sql(sql)[0].stmt, "public")
            assert found is not None, sql
            cur.execute("SELECT %s::regclass::oid", (f"public.{rel}",))
            (oid,) = cur.fetchone()
            cur.execute(sql)
            cur.execute(
                "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' AND relation = %s",
                (oid,),
            )
            held = [_MODE[m] for (m,) in cur.fetchall()]
            conn.rollback()
            strongest = max(held, key=MODES.index) if held else None
            if strongest != found.mode:
                wrong.append(f"{sql}: PostgreSQL takes {strongest}, the table says {found.mode}")
    assert not wrong, "\n".join(wrong)


def test_every_row_of_the_lock_table_is_documented() -> None:
    doc = (REPO / "docs" / "reference" / "postgis-locks.md").read_text()
    rows = [line for line in lock_table_markdown().splitlines() if line.startswith("| ")]
    table_rows = [line for line in doc.splitlines() if line.startswith("| ")]
    assert table_rows == rows, "regenerate the tables with: python -m airflow_kfm_migrations.stores.postgis.locks"
    assert len(LOCK_TABLE) > 40


def test_statements_the_table_does_not_know_say_so() -> None:
    from airflow_kfm_migrations.stores.postgis.locks import describe

    stmt = pglast.parse_sql("ALTER SEQUENCE s RESTART")[0].stmt
    assert describe(stmt, "public").startswith("not in the lock table (AlterSeqStmt)")
