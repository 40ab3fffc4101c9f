"""Bounded, staged backfills on the real PostGIS server (issue #7)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import LEDGER_SCHEMA, PgDatabase, drop_db, make_db

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.declaration.bundle import load_bundle

pytestmark = pytest.mark.postgis

ROWS = 200_000
ITEMS_SQL = f"""
CREATE TABLE public.items (id int PRIMARY KEY, val int NOT NULL, counter int NOT NULL DEFAULT 0,
                           hits int NOT NULL DEFAULT 0);
INSERT INTO public.items (id, val) SELECT g, g % 1000 FROM generate_series(1, {ROWS}) g;
ANALYZE public.items;
"""
APPROVAL = {
    "by": "kfm-governance",
    "at": "2026-03-01T10:00:00+00:00",
    "ref": "GOV-7",
    "covers": ["review:large_backfill"],
}


def run(bundle: Path, db: PgDatabase, *extra: str) -> int:
    return main(["run", str(bundle), "--conn-id", db.conn_id, "--quiet", *extra])


def receipt(bundle: Path) -> dict:
    return json.loads((bundle / "receipts" / "run_receipt.json").read_text())


def configure(bundle: Path, **backfill: object) -> None:
    """Turn the example bundle into 'add items.doubled, then backfill it'."""
    doc = yaml.safe_load((bundle / "migration.yml").read_text())
    doc["intent"] = "Add items.doubled and backfill it in bounded batches"
    doc["scope"]["allowed_tables"] = ["parcels", "items"]
    doc["limits"] = {"max_table_count_touched": 1, "max_index_count_delta": 0, "max_row_backfill": ROWS}
    doc["approvals"]["recorded"] = [APPROVAL]
    bf = {
        "table": "public.items",
        "key_column": "id",
        "set": "doubled = val * 2, counter = counter + 1",
        "rollback_set": "doubled = NULL, counter = counter - 1",
        "verify_columns": ["val", "counter"],
        "batch_size": 5000,
        "max_rows": ROWS,
    }
    bf.update(backfill)
    doc["backfill"] = bf
    (bundle / "migration.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (bundle / "forward.sql").write_text("ALTER TABLE public.items ADD COLUMN doubled bigint;\n")
    (bundle / "rollback.sql").write_text("ALTER TABLE public.items DROP COLUMN doubled;\n")


@pytest.fixture
def items(pgdb: PgDatabase) -> PgDatabase:
    pgdb.sql(ITEMS_SQL)
    return pgdb


@pytest.fixture
def second_db(pg_admin: object) -> Iterator[PgDatabase]:
    from conftest import PARCELS_SQL

    db = make_db(pg_admin)
    db.sql(PARCELS_SQL)
    db.sql(ITEMS_SQL)
    yield db
    drop_db(pg_admin, db)


def outside_ledger(db: PgDatabase) -> object:
    """The store as the independent oracle sees it, all but the governance schema: a run that
    was compensated leaves its apply and rollback in the ledger (asserted on their own)."""
    return db.state(exclude_schemas=(LEDGER_SCHEMA,))


def table_digest(db: PgDatabase) -> str:
    return db.sql("SELECT md5(string_agg(md5(i::text), '' ORDER BY id)) FROM public.items i")[0][0]


def progress(db: PgDatabase) -> list[tuple[int, str | None, int]]:
    return [
        (b, k, n)
        for b, k, n in db.sql(
            "SELECT batch_no, last_key, rows_total FROM kfm_governance.backfill_progress "
            "WHERE run_key !~ ':' ORDER BY batch_no"
        )
    ]


def assert_filled(db: PgDatabase) -> None:
    bad = db.sql("SELECT count(*) FROM public.items WHERE doubled IS DISTINCT FROM val * 2 OR counter <> 1")[0][0]
    assert bad == 0


def test_200k_rows_in_batches_of_5k_exact_counts_and_state(example: Path, items: PgDatabase) -> None:
    configure(example)
    assert run(example, items) == 0
    r = receipt(example)
    assert r["operation"] == "backfill" and r["status"] == "succeeded"
    m = r["metrics"]
    assert m["batches"] == 40 and m["rows"] == ROWS and m["keys"] == ROWS and m["resumed_from_batch"] == 0
    assert m["duration_s"] > 0 and m["rows_per_s"] > 0
    assert {c["name"]: c["passed"] for c in r["validation"]}["backfill_key"] is True
    assert_filled(items)
    rows = progress(items)
    assert [b for b, _k, _n in rows] == list(range(0, 42))  # start row, 40 batches, done marker
    assert [n for b, _k, n in rows if 0 < b <= 40] == [5000 * i for i in range(1, 41)]
    assert rows[40][1] == str(ROWS) and rows[41][1] is None and rows[41][2] == ROWS
    assert items.sql("SELECT operation, status FROM kfm_governance.ledger ORDER BY id") == [("apply", "succeeded")]
    summary = json.loads((example / "diffs" / "backfill.json").read_text())
    assert summary["writes"] == [{"table": "public.items", "inserted": 0, "updated": ROWS, "deleted": 0}]
    assert "last_key" not in json.dumps(r) and "last_key" not in json.dumps(summary)  # keys stay in the DB
    assert main(["verify", str(example)]) == 0
    # A re-run after a completed backfill is a no-op and touches no row.
    digest = table_digest(items)
    assert run(example, items) == 0
    assert receipt(example)["status"] == "noop" and table_digest(items) == digest


def test_sigkilled_runner_resumes_without_repeating_a_batch(
    example: Path, items: PgDatabase, second_db: PgDatabase, tmp_path: Path
) -> None:
    configure(example, pause_ms=40)
    p = subprocess.Popen(
        [sys.executable, "-m", "airflow_kfm_migrations.cli", "run", str(example), "--conn-id", items.conn_id],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            if items.sql("SELECT to_regclass('kfm_governance.backfill_progress')")[0][0] and (
                items.sql("SELECT count(*) FROM kfm_governance.backfill_progress")[0][0] >= 8
            ):
                break
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        if p.poll() is None:
            p.kill()
    for _ in range(100):  # the server notices the dead client, rolls its open batch back, drops its lock
        if not items.sql(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'kfm-migrations'"
        ):
            break
        time.sleep(0.05)
    done = progress(items)
    assert 7 <= len(done) < 41 and done[-1][1] is not None  # interrupted mid-backfill
    committed = done[-1][2]
    assert items.sql("SELECT count(*) FROM public.items WHERE counter = 1")[0][0] == committed
    assert items.sql("SELECT status FROM kfm_governance.ledger")[0][0] == "backfill_pending"
    # Re-run: the schema part is a no-op, the backfill resumes after the last committed batch.
    assert run(example, items) == 0
    r = receipt(example)
    assert r["status"] == "succeeded" and r["metrics"]["resumed_from_batch"] == done[-1][0]
    assert r["metrics"]["rows"] == ROWS - committed
    assert_filled(items)  # counter = 1 everywhere: no batch ran twice
    rows = progress(items)
    assert [b for b, _k, _n in rows] == list(range(0, 42)) and rows[-1][2] == ROWS
    # Identical to an uninterrupted run of the same bundle on a twin database.
    twin = tmp_path / "twin"
    assert main(["run", str(example), "--conn-id", second_db.conn_id, "--quiet", "--artifacts", str(twin)]) == 0
    assert table_digest(items) == table_digest(second_db)
    assert items.fingerprint() == second_db.fingerprint()


def test_max_rows_exceeded_stops_rolls_back_and_store_equals_pre(example: Path, items: PgDatabase) -> None:
    before, data = outside_ledger(items), table_digest(items)
    configure(example, max_rows=12_000)
    assert run(example, items) == 1
    r = receipt(example)
    assert r["status"] == "rolled_back" and "limit_exceeded" in r["reason"]
    assert "batch 3 would bring the total to 15000 > declared 12000" in r["reason"]
    m = r["metrics"]
    assert m["batches"] == 2 and m["rows"] == 10_000 and m["reverse_batches"] == 2 and m["reverse_rows"] == 10_000
    checks = {c["name"]: c["passed"] for c in r["validation"]}
    assert checks["verify_columns"] and checks["schema_equals_pre"] and checks["protected_equals_pre"]
    assert outside_ledger(items) == before and table_digest(items) == data
    assert [x[0] for x in items.sql("SELECT operation FROM kfm_governance.ledger ORDER BY id")] == ["apply", "rollback"]
    assert progress(items) == []  # retired: a later run starts afresh
    assert main(["verify", str(example)]) == 0


def test_trigger_writing_a_forbidden_table_in_batch_3_stops_and_rolls_back(example: Path, items: PgDatabase) -> None:
    items.sql(
        "CREATE FUNCTION public.leak() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.id > 10000 AND NEW.id <= 15000 AND NEW.counter > OLD.counter THEN "
        "INSERT INTO audit.events (what) VALUES ('leak ' || NEW.id); END IF; RETURN NEW; END $$;"
        "CREATE TRIGGER leak AFTER UPDATE ON public.items FOR EACH ROW EXECUTE FUNCTION public.leak()"
    )
    before, data = outside_ledger(items), table_digest(items)
    configure(example)
    assert run(example, items) == 1
    r = receipt(example)
    assert r["status"] == "rolled_back" and "forbidden_write" in r["reason"] and "audit.events" in r["reason"]
    assert r["metrics"]["batches"] == 2 and r["metrics"]["reverse_batches"] == 2
    assert items.sql("SELECT count(*) FROM audit.events")[0][0] == 0
    assert outside_ledger(items) == before and table_digest(items) == data


def test_concurrent_writer_no_lost_updates_and_lock_timeout_respected(example: Path, items: PgDatabase) -> None:
    configure(example, lock_timeout="200ms")
    stop = threading.Event()
    increments = [0, 0]  # holder, writer

    def committed() -> int:
        if not items.sql("SELECT to_regclass('kfm_governance.backfill_progress')")[0][0]:
            return 0
        return int(items.sql("SELECT count(*) FROM kfm_governance.backfill_progress")[0][0])

    def holder() -> None:
        # Once the backfill runs, lock a row of batch 39 and keep it until 1 s after batch 38
        # committed: batch 39 must time out after 200 ms (more than once), retry, then succeed.
        for _ in range(1000):
            if committed() >= 3 or stop.is_set():
                break
            time.sleep(0.01)
        with items.connect() as c:
            c.execute("UPDATE public.items SET hits = hits + 1 WHERE id = 195000")
            for _ in range(3000):
                if committed() >= 39 or stop.is_set():
                    break
                time.sleep(0.01)
            time.sleep(1.0)
            c.commit()
        increments[0] += 1

    def writer() -> None:
        import psycopg

        with items.connect(autocommit=True) as c:
            c.execute("SET lock_timeout = '2s'")
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    c.execute("UPDATE public.items SET hits = hits + 1 WHERE id = %s", ((i * 7919) % ROWS + 1,))
                    increments[1] += 1
                except psycopg.errors.LockNotAvailable:
                    pass

    threads = [threading.Thread(target=holder), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    try:
        assert run(example, items) == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    r = receipt(example)
    m = r["metrics"]
    assert r["status"] == "succeeded" and m["rows"] == ROWS and m["batches"] == 40
    # The 1 s hold was met by bounded waits: 200 ms lock timeouts, each retried.
    assert m["lock_retries"] >= 2
    assert_filled(items)
    assert increments[1] > 0
    assert items.sql("SELECT sum(hits) FROM public.items")[0][0] == sum(increments)  # no lost update


def test_key_column_must_be_unique_and_not_null(example: Path, items: PgDatabase) -> None:
    before = items.state()
    configure(example, key_column="val")
    assert run(example, items) == 1
    r = receipt(example)
    assert r["status"] == "failed" and "no unique index" in r["reason"]
    assert items.state() == before  # refused inside the guard's transaction: not even a ledger


def test_static_checks_refuse_out_of_scope_backfills(example: Path, items: PgDatabase) -> None:
    configure(example, set="doubled = (SELECT count(*) FROM governance.rules)")
    assert run(example, items) == 1
    assert "targets forbidden or protected governance.rules" in receipt(example)["reason"]
    configure(example, table="public.authority_sites")
    assert run(example, items) == 1
    assert "forbidden or protected" in receipt(example)["reason"]
    doc = yaml.safe_load((example / "migration.yml").read_text())
    doc["approvals"]["recorded"] = []
    doc["backfill"]["table"] = "public.items"
    (example / "migration.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert run(example, items) == 1
    assert "review:large_backfill" in receipt(example)["reason"]
    assert items.sql("SELECT to_regclass('kfm_governance.ledger')")[0][0] is None


def test_rollback_by_hand_reverses_the_backfill_then_the_schema(example: Path, items: PgDatabase) -> None:
    before, data = outside_ledger(items), table_digest(items)
    configure(example, batch_size=50_000)
    assert run(example, items) == 0
    assert main(["rollback", str(example), "--conn-id", items.conn_id, "--quiet"]) == 0
    r = receipt(example)
    assert r["operation"] == "rollback" and r["status"] == "rolled_back"
    assert r["metrics"]["reverse_batches"] == 4 and r["metrics"]["reverse_rows"] == ROWS
    assert outside_ledger(items) == before and table_digest(items) == data
    # After a rollback the migration (and its backfill) can run again from the start.
    assert run(example, items) == 0
    assert_filled(items)


def test_sql_template_backfill(example: Path, items: PgDatabase) -> None:
    configure(
        example,
        set=None,
        sql_template="UPDATE public.items SET doubled = val * 2, counter = counter + 1 WHERE id BETWEEN {lo} AND {hi}",
        batch_size=20_000,
    )
    doc = yaml.safe_load((example / "migration.yml").read_text())
    del doc["backfill"]["set"]
    (example / "migration.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    assert load_bundle(example).declaration.backfill.sql_template  # type: ignore[union-attr]
    assert run(example, items) == 0
    assert receipt(example)["metrics"]["batches"] == 10
    assert_filled(items)


class _TI:
    dag_id = "kfm_migration__PG-MIG-2026-02-28-01"
    run_id = "manual__test"

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_pull(self, task_ids: str | None = None, key: str | None = None) -> object:
        return {"status": "succeeded"} if task_ids == "apply" else None

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_airflow_retry_resumes_and_never_repeats_a_batch(
    example: Path, items: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from airflow_kfm_migrations.engine import RunOptions, run_migration
    from airflow_kfm_migrations.operators import BackfillOperator

    configure(example, lock_timeout="100ms")
    schema = run_migration(load_bundle(example), RunOptions(conn_id=items.conn_id, log=lambda _l: None))
    assert schema.status == "succeeded"
    monkeypatch.setenv("KFM_BUNDLES_ROOT", str(example.parent))
    monkeypatch.delenv("KFM_REGISTRY_PATH", raising=False)  # no registry under the bundles root: none is read
    monkeypatch.setenv("KFM_BACKFILL_LOCK_RETRIES", "0")
    op = BackfillOperator(task_id="backfill", migration_id=example.name, conn_id=items.conn_id)
    assert op.retries == 2
    with items.connect() as holder:  # a row of batch 21 stays locked during the first try
        holder.execute("UPDATE public.items SET hits = hits + 1 WHERE id = 100001")
        with pytest.raises(AirflowException) as exc:
            op.execute({"ti": _TI(), "params": {}})
        assert not isinstance(exc.value, AirflowFailException)  # an interruption: Airflow retries it
        holder.commit()
    first = progress(items)
    assert first[-1][0] == 20 and first[-1][2] == 100_000
    ti = _TI()
    assert op.execute({"ti": ti, "params": {}})["status"] == "succeeded"  # the retry resumes
    r = receipt(example)
    assert r["metrics"]["resumed_from_batch"] == 20 and r["metrics"]["rows"] == 100_000
    assert_filled(items)  # counter = 1 everywhere: no batch ran twice
    assert op.execute({"ti": _TI(), "params": {}})["status"] == "noop"


def test_dag_gets_a_backfill_task_between_apply_and_baseline_post(example: Path) -> None:
    from airflow_kfm_migrations.contracts.models import RegistryEntry
    from airflow_kfm_migrations.dag_factory import build_dag

    configure(example)
    entry = RegistryEntry.model_validate(
        {
            "migration_id": example.name,
            "type": "postgis",
            "path": f"postgis/{example.name}",
            "owner": "kfm-platform",
            "status": "merged",
            "conn_id": "kfm_pg",
            "events": [{"status": "merged", "at": "2026-03-01T10:00:00+00:00", "actor": "a", "ref": "r"}],
        }
    )
    dag = build_dag(entry, example.parent.parent, "dev")
    t = dag.task_dict
    assert t["backfill"].upstream_task_ids == {"apply"}
    assert t["backfill"].downstream_task_ids == {"baseline_post", "rollback"}
    assert "backfill" in t["rollback"].upstream_task_ids and t["backfill"].retries == 2


def test_without_rollback_set_rollback_sql_compensates_the_whole_migration(example: Path, items: PgDatabase) -> None:
    before = outside_ledger(items)
    configure(example, rollback_set=None, verify_columns=[], max_rows=12_000, set="doubled = val * 2")
    assert run(example, items) == 1
    r = receipt(example)
    assert r["status"] == "rolled_back" and "limit_exceeded" in r["reason"] and "reverse_batches" not in r["metrics"]
    assert outside_ledger(items) == before  # rollback.sql dropped the backfilled column, the rows are back
    assert [x[0] for x in items.sql("SELECT operation FROM kfm_governance.ledger ORDER BY id")] == ["apply", "rollback"]
    assert progress(items) == []


def test_trigger_truncating_a_protected_table_is_caught_by_storage_change(example: Path, items: PgDatabase) -> None:
    items.sql(
        "CREATE FUNCTION public.wipe() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.id = 5001 THEN TRUNCATE governance.rules; END IF; RETURN NEW; END $$;"
        "CREATE TRIGGER wipe AFTER UPDATE ON public.items FOR EACH ROW EXECUTE FUNCTION public.wipe()"
    )
    before, data = outside_ledger(items), table_digest(items)
    configure(example)
    assert run(example, items) == 1
    r = receipt(example)
    assert r["status"] == "rolled_back" and "forbidden_rewrite" in r["reason"] and "governance.rules" in r["reason"]
    assert r["metrics"]["batches"] == 1 and r["metrics"]["reverse_batches"] == 1
    assert items.sql("SELECT count(*) FROM governance.rules")[0][0] == 1
    assert outside_ledger(items) == before and table_digest(items) == data


def test_interrupted_compensation_is_resumed_by_the_next_run(example: Path, items: PgDatabase) -> None:
    # The reverse of batch 2 fails while public.fault has a row (a trigger raises): rollback_failed,
    # with the reverse progress kept. The next run resumes the compensation, not the backfill.
    items.sql(
        "CREATE FUNCTION public.flaky() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.id = 7000 AND NEW.counter < OLD.counter AND EXISTS (SELECT 1 FROM public.fault) THEN "
        "RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$;"
        "CREATE TRIGGER flaky BEFORE UPDATE ON public.items FOR EACH ROW EXECUTE FUNCTION public.flaky();"
        # The switch is a row, not a database setting: settings are part of the baseline.
        "CREATE TABLE public.fault (on_ boolean); INSERT INTO public.fault VALUES (true);"
    )
    before, data = outside_ledger(items), table_digest(items)
    configure(example, max_rows=12_000)
    assert run(example, items) == 1
    r = receipt(example)
    assert r["status"] == "rollback_failed" and "injected failure" in r["reason"]
    assert items.sql("SELECT count(*) FROM kfm_governance.backfill_progress WHERE run_key ~ ':reverse$'")[0][0] == 1
    items.sql("DELETE FROM public.fault")
    assert run(example, items) == 1  # exit 1: the migration was rolled back, not applied
    r = receipt(example)
    assert r["status"] == "rolled_back" and "resuming an interrupted compensation" in r["reason"]
    assert r["metrics"]["reverse_batches"] == 1  # only the batch that was not reversed yet
    items.sql("INSERT INTO public.fault VALUES (true)")  # the switch this test turned off
    assert outside_ledger(items) == before and table_digest(items) == data
