"""The governed PostGIS run against the real server (scripts/stores/postgis.sh)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
import rdflib
from conftest import LEDGER_SCHEMA, PgDatabase, pg_dsn

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.declaration.bundle import load_bundle

pytestmark = pytest.mark.postgis


def run(bundle: Path, db: PgDatabase, *extra: str) -> int:
    return main(["run", str(bundle), "--conn-id", db.conn_id, "--quiet", *extra])


def receipt(bundle: Path) -> dict:
    return json.loads((bundle / "receipts" / "run_receipt.json").read_text())


def has_index(db: PgDatabase) -> bool:
    return bool(db.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_geom_gist'"))


def append(bundle: Path, sql: str) -> None:
    with (bundle / "forward.sql").open("a") as fh:
        fh.write(sql + "\n")


def edit_declaration(bundle: Path, old: str, new: str) -> None:
    text = (bundle / "migration.yml").read_text()
    assert old in text
    (bundle / "migration.yml").write_text(text.replace(old, new, 1))


def plan_refusals(bundle: Path, capsys: pytest.CaptureFixture[str]) -> list[tuple[str, str, str]]:
    """``kfm-migrations plan --format json``: it must exit 1; its hard fails (code, object, message)."""
    capsys.readouterr()
    assert main(["plan", str(bundle), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["refused"] is True
    return [(f["code"], f.get("object"), f["message"]) for f in doc["findings"] if f["tier"] == "hard_fail"]


def active_backend(admin: object, db: PgDatabase, fragment: str, within_s: float = 120) -> int | None:
    """The pid of a backend of ``db`` running a statement that contains ``fragment``, polled
    from an admin connection until one shows up (None if none does within ``within_s``)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        row = admin.execute(  # type: ignore[attr-defined]
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND position(%s in query) > 0",
            (db.name, fragment),
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.05)
    return None


def wait_until_gone(admin: object, pid: int, within_s: float = 120) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():  # type: ignore[attr-defined]
            return True
        time.sleep(0.05)
    return False


def summary(bundle: Path) -> dict:
    return json.loads((bundle / "diffs" / "summary.json").read_text())


def blocking_findings(bundle: Path) -> list[dict]:
    """The findings that refused the run: hard fails and reviews nobody approved."""
    return [
        f for f in summary(bundle)["findings"]
        if f["tier"] == "hard_fail" or (f["tier"] == "review_required" and not f.get("approved_by"))
    ]


def test_contract_example_end_to_end(example: Path, pgdb: PgDatabase) -> None:
    assert run(example, pgdb) == 0
    assert has_index(pgdb)
    r = receipt(example)
    assert r["status"] == "succeeded" and r["store"] == {"kind": "postgis", "conn_id": pgdb.conn_id}
    assert {c["name"]: c["passed"] for c in r["validation"]}["gate"] is True
    summary = json.loads((example / "diffs" / "summary.json").read_text())
    # Databases and roles other work on the server creates meanwhile are reported, not judged.
    mine = [c for c in summary["changes"] if c["kind"] not in ("cluster", "role")]
    assert [(c["change"], c["kind"], c["id"]) for c in mine] == [("added", "index", "index:public.parcels_geom_gist")]
    elsewhere = {f["object"] for f in summary["findings"] if f["code"] == "global_object_changed_elsewhere"}
    assert elsewhere == {c["id"] for c in summary["changes"]} - {c["id"] for c in mine}
    assert {lc["name"]: lc["observed"] for lc in summary["limits"]}["max_index_count_delta"] == 1
    assert "index,public,parcels" in (example / "diffs" / "touched.csv").read_text().replace('"', "")
    # The ledger holds exactly one applied entry with every artifact's checksum.
    rows = pgdb.sql("SELECT operation, artifacts FROM kfm_governance.ledger")
    assert len(rows) == 1 and rows[0][0] == "apply" and set(rows[0][1]) >= {"forward.sql", "rollback.sql"}
    # PROV parses as RDF.
    g = rdflib.Graph().parse(data=(example / "receipts" / "prov.jsonld").read_text(), format="json-ld")
    assert len(g) > 10
    # No secret in anything written.
    for f in example.rglob("*"):
        if f.is_file():
            assert "kfm-local-only" not in f.read_text(errors="ignore"), f
    assert main(["verify", str(example)]) == 0


def test_rerun_is_noop_and_changed_artifact_is_refused(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(example, pgdb) == 0
    first = receipt(example)["receipt_digest"]
    assert run(example, pgdb) == 0
    second = receipt(example)
    assert second["status"] == "noop" and second["previous_receipt_digest"] == first
    append(example, "-- a harmless comment changes the checksum")
    capsys.readouterr()
    assert run(example, pgdb) == 1
    out = capsys.readouterr().out
    assert "forward.sql changed after PG-MIG-2026-02-28-01 was applied" in out
    assert receipt(example)["status"] == "failed"


def test_baseline_is_byte_identical_and_secret_free(example: Path, pgdb: PgDatabase) -> None:
    from airflow_kfm_migrations.stores.postgis.store import PostgisStore
    from airflow_kfm_migrations.util.digest import dump_json

    bundle = load_bundle(example)
    store = PostgisStore(lambda: pgdb.connect(), pgdb.conn_id)
    blobs = []
    for _ in range(2):
        with pgdb.connect() as c, c.cursor() as cur:
            blobs.append(dump_json(store.capture(cur, bundle.declaration).model_dump(mode="json", by_alias=True)))
    assert _without_cluster_churn(blobs[0]) == _without_cluster_churn(blobs[1])
    text = blobs[0].decode()
    assert "Fort Larned" not in text and "ST_MakeEnvelope" not in text and "kfm-local-only" not in text
    doc = json.loads(text)
    kinds = doc["counts"]
    assert kinds["table"] >= 4 and kinds["column"] >= 8 and kinds["constraint"] >= 3 and kinds["extension"] == 1
    assert doc["protected_rows"] == {"governance.rules": 1, "public.authority_sites": 2, "audit.events": 0}


def _without_cluster_churn(blob: bytes) -> bytes:
    """A baseline without the cluster's databases and the roles, and so without the global
    fingerprint: tests and other work on the server create and drop them meanwhile."""
    doc = json.loads(blob)
    doc["objects"] = [o for o in doc["objects"] if o["kind"] not in ("cluster", "role")]
    doc["counts"].pop("role", None)
    doc.pop("global_fingerprint")
    return json.dumps(doc, sort_keys=True).encode()


HARD_FAILS = {
    # scope violation via dynamic SQL that the static plan cannot see
    "forbidden_write": "DO $$ BEGIN EXECUTE 'UPDATE public.authority_sites SET name = ''x'''; END $$;",
    "forbidden_object_changed": "DO $$ BEGIN EXECUTE 'ALTER TABLE governance.rules ADD COLUMN x int'; END $$;",
    "out_of_scope_change": "DO $$ BEGIN EXECUTE 'CREATE TABLE public.sneaky (id int)'; END $$;",
    # a function nobody declared, in an allowed schema whose tables are listed one by one
    "out_of_scope_change:function": (
        "DO $$ BEGIN EXECUTE 'CREATE FUNCTION public.backdoor() RETURNS int LANGUAGE sql AS ''SELECT 1'''; END $$;"
    ),
    # a renamed allowed table is a new, undeclared table
    "out_of_scope_change:rename": "ALTER TABLE parcels RENAME TO parcels_old;",
    # roles are cluster-wide: no scope can allow them, and the static plan cannot see this one
    "cluster_object_changed": "DO $$ BEGIN EXECUTE 'CREATE ROLE sneaky SUPERUSER'; END $$;",
    # cascades reach tables the script never names
    "forbidden_write:cascade": "DELETE FROM parcels WHERE id = 1;",
    # limits exceeded
    "limit_exceeded": (
        "CREATE INDEX parcels_name_idx ON parcels (name); CREATE INDEX parcels_id_name ON parcels (id, name);"
    ),
    # a write hidden in a trigger fired by an in-scope update
    "out_of_scope_write": "UPDATE parcels SET name = name WHERE id = 1;",
}


@pytest.mark.parametrize("code", sorted(HARD_FAILS))
def test_hard_fails_leave_the_store_unchanged_with_a_failed_receipt(example: Path, pgdb: PgDatabase, code: str) -> None:
    if code == "out_of_scope_write":
        pgdb.sql(
            "CREATE TABLE public.shadow (id int);"
            "CREATE FUNCTION public.spy() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN INSERT INTO public.shadow VALUES (NEW.id); RETURN NEW; END $$;"
            "CREATE TRIGGER spy AFTER UPDATE ON public.parcels FOR EACH ROW EXECUTE FUNCTION public.spy()"
        )
        text = (example / "migration.yml").read_text().replace("max_row_backfill: 0", "max_row_backfill: 5")
        (example / "migration.yml").write_text(text)
    if code == "forbidden_write:cascade":
        pgdb.sql("ALTER TABLE public.authority_sites ADD COLUMN parcel_id int REFERENCES public.parcels(id) "
                 "ON DELETE CASCADE; UPDATE public.authority_sites SET parcel_id = 1")
        text = (example / "migration.yml").read_text().replace("max_row_backfill: 0", "max_row_backfill: 5")
        (example / "migration.yml").write_text(text)
    before = pgdb.state()
    roles_before = pgdb.sql("SELECT count(*) FROM pg_roles")
    append(example, HARD_FAILS[code])
    assert run(example, pgdb) == 1
    assert pgdb.sql("SELECT count(*) FROM pg_roles") == roles_before
    r = receipt(example)
    assert r["status"] == "failed"
    assert code.split(":")[0] in {f["code"] for f in blocking_findings(example) if f["tier"] == "hard_fail"}
    assert summary(example)["verdict"] == "fail"
    assert r["reason"].startswith("gate refused (")
    assert [v["name"] for v in r["validation"] if not v["passed"]] == ["gate"]
    assert pgdb.state() == before
    assert not has_index(pgdb)
    # Not even the ledger schema survived the rolled-back transaction.
    assert not pgdb.ledger_schema_exists()
    assert main(["verify", str(example)]) == 0


def test_static_plan_refuses_forbidden_targets_before_any_write(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    before = pgdb.state()
    append(example, "UPDATE governance.rules SET rule = 'none';")
    assert plan_refusals(example, capsys) == [
        ("plan_forbidden_target", "governance.rules", "statement 3 targets forbidden governance.rules")
    ]
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"] == "static plan refused: statement 3 targets forbidden governance.rules"
    assert pgdb.state() == before


def test_review_required_needs_a_recorded_approval(example: Path, pgdb: PgDatabase) -> None:
    pgdb.sql("ALTER TABLE parcels ENABLE ROW LEVEL SECURITY; CREATE POLICY p_read ON parcels USING (true)")
    append(example, "DROP POLICY p_read ON parcels;")
    text = (example / "migration.yml").read_text()
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"].startswith("gate refused (policy_dropped: ")
    assert [(f["code"], f["tier"]) for f in blocking_findings(example)] == [("policy_dropped", "review_required")]
    approved = text.replace(
        "  change_class: governance-critical",
        "  change_class: governance-critical\n  recorded:\n"
        "    - by: kfm-governance\n      at: '2026-03-01T10:00:00+00:00'\n      ref: GOV-7\n"
        "      covers: ['review:policy_dropped']",
    )
    (example / "migration.yml").write_text(approved)
    assert run(example, pgdb) == 0
    assert not pgdb.sql("SELECT 1 FROM pg_policies WHERE policyname = 'p_read'")


def test_error_in_the_middle_of_forward_rolls_everything_back(example: Path, pgdb: PgDatabase) -> None:
    before = pgdb.state()
    (example / "forward.sql").write_text(
        "SET search_path = public;\nCREATE INDEX parcels_geom_gist ON parcels USING gist (geom);\n"
        "SELECT 1/0;\nCREATE INDEX parcels_name_idx ON parcels (name);\n"
    )
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["reason"].startswith("forward failed, transaction rolled back: ") and "22012" in r["reason"]  # 1/0
    assert pgdb.state() == before
    assert not pgdb.ledger_schema_exists()
    (example / "forward.sql").write_text(
        "SET search_path = public;\nCREATE INDEX parcels_geom_gist ON parcels USING gist (geom);\n"
    )
    assert run(example, pgdb) == 0


def test_statement_timeout_fails_closed(example: Path, pgdb: PgDatabase) -> None:
    before = pgdb.state()
    text = (example / "migration.yml").read_text() + "timeouts:\n  statement_timeout: 300ms\n"
    (example / "migration.yml").write_text(text)
    append(example, "SELECT pg_sleep(2);")
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["reason"].startswith("forward failed, transaction rolled back: ") and "57014" in r["reason"]  # canceled
    assert pgdb.state() == before
    assert not pgdb.ledger_schema_exists()


def test_backend_killed_mid_apply(example: Path, pgdb: PgDatabase) -> None:
    before = pgdb.state()
    append(example, "SELECT pg_sleep(30);")
    killed: list[int] = []

    def killer() -> None:
        import psycopg

        with psycopg.connect(pg_dsn("postgres"), autocommit=True) as admin:
            pid = active_backend(admin, pgdb, "pg_sleep(30)")
            if pid is not None and admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                killed.append(pid)

    t = threading.Thread(target=killer)
    t.start()
    code = run(example, pgdb)
    t.join()
    assert killed, "the forward statement was never seen running"
    assert code == 1
    r = receipt(example)
    assert r["status"] == "failed"
    assert r["reason"].startswith("forward failed, transaction rolled back: ") and "57P01" in r["reason"]
    assert pgdb.state() == before
    assert not pgdb.ledger_schema_exists()
    (example / "forward.sql").write_text((example / "forward.sql").read_text().replace("SELECT pg_sleep(30);\n", ""))
    assert run(example, pgdb) == 0


def test_runner_sigkilled_mid_apply(example: Path, pgdb: PgDatabase, pg_admin: object) -> None:
    """SIGKILL of the CLI while its forward statement runs in the server: nothing commits,
    not even the ledger schema the run created in its transaction."""
    before = pgdb.state()
    assert not pgdb.ledger_schema_exists()
    append(example, "SELECT pg_sleep(60);")
    p = subprocess.Popen(
        [sys.executable, "-m", "airflow_kfm_migrations.cli", "run", str(example), "--conn-id", pgdb.conn_id, "--quiet"],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid = active_backend(pg_admin, pgdb, "pg_sleep(60)")
        assert pid is not None, "the forward statement was never seen running in the target database"
        assert p.poll() is None, "the runner ended before it was killed"
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # The backend sleeps on until it next talks to its dead client: end it as an operator
    # would, and wait until it is gone.
    pg_admin.execute("SELECT pg_terminate_backend(%s)", (pid,))  # type: ignore[attr-defined]
    assert wait_until_gone(pg_admin, pid), f"backend {pid} is still there"
    assert pgdb.state() == before
    assert not pgdb.ledger_schema_exists()
    (example / "forward.sql").write_text((example / "forward.sql").read_text().replace("SELECT pg_sleep(60);\n", ""))
    assert run(example, pgdb) == 0


def test_eight_simultaneous_runs_apply_exactly_once(example: Path, pgdb: PgDatabase, tmp_path: Path) -> None:
    append(example, "SELECT pg_sleep(0.5);")

    def one(i: int) -> int:
        return main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet", "--artifacts", str(tmp_path / f"a{i}")])

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(8)))
    statuses = sorted(
        json.loads((tmp_path / f"a{i}" / "receipts" / "run_receipt.json").read_text())["status"] for i in range(8)
    )
    assert statuses.count("succeeded") == 1
    assert set(statuses) <= {"succeeded", "failed", "noop"}
    assert pgdb.sql("SELECT count(*) FROM kfm_governance.ledger")[0][0] == 1
    assert codes.count(0) == statuses.count("succeeded") + statuses.count("noop")
    failed_reasons = [
        json.loads((tmp_path / f"a{i}" / "receipts" / "run_receipt.json").read_text())["reason"]
        for i in range(8)
        if codes[i] == 1
    ]
    lock_refusal = re.compile(
        rf"another run holds the (migration|store) lock for PG-MIG-2026-02-28-01 on {pgdb.conn_id}; "
        "refusing to run concurrently"
    )
    assert all(lock_refusal.fullmatch(r) for r in failed_reasons), failed_reasons


def test_rollback_by_hand_restores_pre(example: Path, pgdb: PgDatabase) -> None:
    # Everything but the ledger, which now records the apply and the rollback.
    before = pgdb.state(exclude_schemas=(LEDGER_SCHEMA,))
    assert run(example, pgdb) == 0
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) != before
    assert main(["rollback", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert receipt(example)["status"] == "rolled_back"
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before
    assert [r[0] for r in pgdb.sql("SELECT operation FROM kfm_governance.ledger ORDER BY id")] == ["apply", "rollback"]
    assert main(["verify", str(example)]) == 0


def test_rollback_that_does_not_restore_pre_is_refused(example: Path, pgdb: PgDatabase) -> None:
    assert run(example, pgdb) == 0
    (example / "rollback.sql").write_text("SET search_path = public;\nCREATE INDEX parcels_other ON parcels (name);\n")
    assert main(["rollback", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 1
    r = receipt(example)
    assert r["status"] == "rollback_failed"
    assert r["reason"].startswith("after rollback the store does not equal the apply's pre-baseline")
    assert r["reason"].endswith("; rollback not committed")
    assert {v["name"]: v["passed"] for v in r["validation"]}["schema_equals_pre"] is False
    assert has_index(pgdb)  # the approved post-state stays
    assert not pgdb.sql("SELECT 1 FROM pg_indexes WHERE indexname = 'parcels_other'")


def test_non_transactional_gate_failure_is_compensated(example: Path, pgdb: PgDatabase) -> None:
    # The ledger schema a non-transactional run creates stays (empty): compare the rest.
    before = pgdb.state(exclude_schemas=(LEDGER_SCHEMA,))
    text = (example / "migration.yml").read_text().replace("max_index_count_delta: 2", "max_index_count_delta: 0")
    text += 'transactional: false\nnon_transactional_reason: "CONCURRENTLY keeps parcels writable"\n'
    (example / "migration.yml").write_text(text)
    (example / "forward.sql").write_text(
        "CREATE INDEX CONCURRENTLY parcels_geom_gist ON public.parcels USING gist (geom);\n"
    )
    (example / "rollback.sql").write_text("DROP INDEX CONCURRENTLY IF EXISTS public.parcels_geom_gist;\n")
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["status"] == "rolled_back"
    assert r["reason"] == (
        "gate refused: limit_exceeded: max_index_count_delta: observed 1 > declared 0; "
        "compensated by the rollback artifact, store equals pre"
    )
    assert pgdb.state(exclude_schemas=(LEDGER_SCHEMA,)) == before
    assert pgdb.sql("SELECT count(*) FROM kfm_governance.ledger") == [(0,)]


def test_concurrent_index_requires_declaring_non_transactional(example: Path, pgdb: PgDatabase) -> None:
    (example / "forward.sql").write_text(
        "CREATE INDEX CONCURRENTLY parcels_geom_gist ON public.parcels USING gist (geom);\n"
    )
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"] == (
        "static plan refused: IndexStmt cannot run in a transaction; declare transactional: false with a reason"
    )


@pytest.mark.parametrize(
    "artifact",
    ["forward.sql", "migration.yml", "baselines/pre.json", "diffs/summary.json", "receipts/run_receipt.json"],
)
def test_flipping_one_byte_makes_verify_fail(
    example: Path, pgdb: PgDatabase, artifact: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(example, pgdb) == 0
    assert run(example, pgdb) == 0  # a chain of two receipts
    f = example / artifact
    data = bytearray(f.read_bytes())
    i = data.index(b"e") if b"e" in data else 0
    data[i] ^= 0x01
    f.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(example)]) == 1
    err = capsys.readouterr().err
    assert artifact.split("/")[-1] in err


def test_prod_run_needs_registry_status_and_approvals(example: Path, pgdb: PgDatabase, tmp_path: Path) -> None:
    reg = tmp_path / "registry.json"
    reg.write_text(
        json.dumps(
            {
                "schema_version": "migrations.v1",
                "migrations": [
                    {
                        "migration_id": "PG-MIG-2026-02-28-01",
                        "type": "postgis",
                        "path": "postgis/PG-MIG-2026-02-28-01",
                        "owner": "kfm-platform",
                        "status": "merged",
                        "events": [
                            {"status": "draft", "at": "2026-02-28T09:00:00+00:00", "actor": "a", "ref": "r"},
                            {"status": "approved", "at": "2026-02-28T10:00:00+00:00", "actor": "a", "ref": "r"},
                            {"status": "merged", "at": "2026-02-28T11:00:00+00:00", "actor": "a", "ref": "r"},
                        ],
                    }
                ],
            }
        )
    )
    assert run(example, pgdb, "--env", "prod", "--registry", str(reg)) == 1
    assert "registry status 'merged' does not allow a prod run" in receipt(example)["reason"]
    assert not has_index(pgdb)
    assert run(example, pgdb, "--env", "stage", "--registry", str(reg)) == 1
    assert "recorded approvals" in receipt(example)["reason"]
    assert run(example, pgdb, "--env", "stage") == 1  # outside any registry: dev only
    assert receipt(example)["reason"] == (
        "PG-MIG-2026-02-28-01 is not in the registry; only dev runs may use unregistered bundles"
    )
    assert not has_index(pgdb)


def test_index_on_a_large_table_needs_review(example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    pgdb.sql("ANALYZE public.parcels")  # reltuples = 200
    monkeypatch.setenv("KFM_REVIEW_INDEX_ROWS", "100")
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"].startswith("gate refused (index_on_large_table: ")
    assert [(f["code"], f["object"]) for f in blocking_findings(example)] == [
        ("index_on_large_table", "index:public.parcels_geom_gist")
    ]
    assert not has_index(pgdb)
    monkeypatch.setenv("KFM_REVIEW_INDEX_ROWS", "1000")
    assert run(example, pgdb) == 0


def test_drift_is_reported_and_refused_with_fail_on_drift(example: Path, pgdb: PgDatabase) -> None:
    assert run(example, pgdb) == 0
    pgdb.sql("COMMENT ON TABLE public.parcels IS 'edited by hand after the migration'")
    assert run(example, pgdb) == 0
    r = receipt(example)
    assert r["status"] == "noop" and r["metrics"]["drift"] == 1
    assert any("drift" in p for p in r["policy"])
    assert run(example, pgdb, "--fail-on-drift") == 1
    assert receipt(example)["reason"] == "drift detected and --fail-on-drift is set"


def test_dev_run_outside_a_registry_says_so(example: Path, pgdb: PgDatabase) -> None:
    assert run(example, pgdb) == 0
    r = receipt(example)
    assert r["registry"]["in_registry"] is False
    assert "outside any registry" in r["registry"]["note"]


def test_dry_run_rehearses_in_a_transaction_and_changes_nothing(example: Path, pgdb: PgDatabase,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    before = pgdb.state()
    assert run(example, pgdb, "--dry-run") == 0
    assert "rehearsed in a transaction that was rolled back" in capsys.readouterr().out
    assert pgdb.state() == before
    assert not (example / "receipts").exists()


def test_connection_failure_fails_closed_without_leaking(example: Path, pgdb: PgDatabase,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_KFM_WRONG", "postgresql://kfm:not-the-password-42@127.0.0.1:55432/nope")
    assert main(["run", str(example), "--conn-id", "kfm_wrong", "--quiet"]) == 1
    out = capsys.readouterr()
    assert "not-the-password-42" not in out.out + out.err
    text = (example / "receipts" / "run_receipt.json").read_text()
    assert "not-the-password-42" not in text and "127.0.0.1" not in text
    assert json.loads(text)["status"] == "failed"


@pytest.mark.parametrize(
    ("sql", "node"),
    [
        ("ALTER ROLE kfm CONNECTION LIMIT 3;", "AlterRoleStmt"),
        ("CREATE ROLE sneaky;", "CreateRoleStmt"),
        ("COPY public.parcels TO PROGRAM 'cat > /tmp/x';", "CopyStmt"),
        ("ALTER SYSTEM SET work_mem = '1GB';", "AlterSystemStmt"),
    ],
)
def test_cluster_level_statements_are_refused_by_the_plan(
    example: Path, pgdb: PgDatabase, sql: str, node: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = pgdb.state()
    append(example, sql)
    message = (
        f"{node} acts outside any schema (roles, databases, system settings, server programs); "
        "a migration may not run it"
    )
    assert plan_refusals(example, capsys)[0] == ("cluster_statement", "statement 3", message)
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"] == f"static plan refused: {message}"
    assert pgdb.state() == before


def test_a_forged_receipt_without_its_content_addressed_copy_fails_verify(example: Path, pgdb: PgDatabase,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from airflow_kfm_migrations.engine.receipts import receipt_digest
    from airflow_kfm_migrations.util.digest import dump_json

    assert run(example, pgdb) == 0
    path = example / "receipts" / "run_receipt.json"
    doc = json.loads(path.read_text())
    doc["actor"] = "someone-else"
    doc["receipt_digest"] = receipt_digest(doc)  # a self-consistent forgery
    path.write_bytes(dump_json(doc))
    capsys.readouterr()
    assert main(["verify", str(example)]) == 1
    assert "content-addressed" in capsys.readouterr().err


def _forge(example: Path, **changes: object) -> None:
    """Rewrite the receipt and its content-addressed copy so that every file digest agrees."""
    from airflow_kfm_migrations.engine.receipts import receipt_digest
    from airflow_kfm_migrations.util.digest import dump_json

    path = example / "receipts" / "run_receipt.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    doc["receipt_digest"] = receipt_digest(doc)
    path.write_bytes(dump_json(doc))
    (example / "receipts" / "history" / f"{doc['receipt_digest']}.json").write_bytes(dump_json(doc))


def test_verify_against_the_ledger_catches_a_consistent_forgery(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(example, pgdb) == 0
    capsys.readouterr()
    assert main(["verify", str(example), "--conn-id", pgdb.conn_id]) == 0
    assert "recorded in the ledger" in capsys.readouterr().out
    # A different actor with every file digest recomputed: files agree, the ledger does not.
    _forge(example, actor="someone-else")
    assert main(["verify", str(example)]) == 0
    capsys.readouterr()
    assert main(["verify", str(example), "--conn-id", pgdb.conn_id]) == 1
    err = capsys.readouterr().err
    assert "the ledger on" in err and "records receipt" in err and len(err.strip().splitlines()) == 1


def test_verify_against_the_ledger_catches_a_failed_run_dressed_as_success(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    append(example, "CREATE TABLE public.sneaky (id int);")
    assert run(example, pgdb) == 1
    assert main(["verify", str(example), "--conn-id", pgdb.conn_id]) == 0  # failed, and absent: consistent
    _forge(example, status="succeeded", reason=None)
    assert main(["verify", str(example)]) == 0
    capsys.readouterr()
    assert main(["verify", str(example), "--conn-id", pgdb.conn_id]) == 1
    assert "has no run" in capsys.readouterr().err
    # And a genuine success whose ledger row was removed afterwards.
    (example / "forward.sql").write_text((example / "forward.sql").read_text().replace(
        "CREATE TABLE public.sneaky (id int);\n", ""))
    assert run(example, pgdb) == 0
    pgdb.sql("DELETE FROM kfm_governance.ledger")
    capsys.readouterr()
    assert main(["verify", str(example), "--conn-id", pgdb.conn_id]) == 1
    assert "has no run" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncate", "not_utf8", "array"])
def test_a_receipt_that_no_longer_parses_fails_verify(
    example: Path, pgdb: PgDatabase, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(example, pgdb) == 0
    path = example / "receipts" / "run_receipt.json"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "not_utf8": b"\xff" + data, "array": b"[]"}[damage])
    capsys.readouterr()
    assert main(["verify", str(example)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run_receipt.json" in err and "Traceback" not in err


def test_a_receipt_listing_files_outside_its_folders_fails_verify(
    example: Path, pgdb: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    from airflow_kfm_migrations.util.digest import sha256_file

    assert run(example, pgdb) == 0
    outside = example.parent / "elsewhere.json"
    outside.write_text("{}")
    doc = json.loads((example / "receipts" / "run_receipt.json").read_text())
    doc["outputs"].append({"path": "../elsewhere.json", "sha256": sha256_file(outside), "role": "diff_summary"})
    _forge(example, outputs=doc["outputs"])
    capsys.readouterr()
    assert main(["verify", str(example)]) == 1
    assert "outside its folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sql", "node"),
    [
        ("DO $$ BEGIN EXECUTE 'UPDATE public.authority_sites SET name = ''x'''; END $$;", "DoStmt"),
        ("SELECT set_config('x.y', 'z', false);", "SelectStmt"),
        ("CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1';", "CreateFunctionStmt"),
    ],
)
def test_a_non_transactional_run_refuses_what_the_plan_cannot_see(
    example: Path, pgdb: PgDatabase, sql: str, node: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing undoes a non-transactional write the gate refuses, so the plan must see every effect."""
    before = pgdb.state()
    text = (example / "migration.yml").read_text()
    text += 'transactional: false\nnon_transactional_reason: "CONCURRENTLY keeps parcels writable"\n'
    (example / "migration.yml").write_text(text)
    (example / "forward.sql").write_text(
        "CREATE INDEX CONCURRENTLY parcels_geom_gist ON public.parcels USING gist (geom);\n" + sql + "\n"
    )
    (code, obj, message), *_ = plan_refusals(example, capsys)
    assert (code, obj) == ("opaque_non_transactional", "statement 2")
    assert message == (
        f"{node} can hide its effects from the static plan, and a transactional: false run cannot roll them "
        "back; run it in a transactional migration"
    )
    assert run(example, pgdb) == 1
    assert receipt(example)["reason"] == f"static plan refused: {message}"
    assert pgdb.state() == before and not has_index(pgdb)


# Code that would run after the gate has judged the post-baseline, in the same transaction.
# Each case names what must refuse it: the session, when the script is done ("apply", with
# the exact reason), or the gate ("gate", with the blocking findings (code, object) that
# must be among its findings, the first of them the one the receipt's reason names).
TEMP = "depending on a temporary object, which the server drops when the session ends; refused"
GOVERNANCE_CHANGED = "the script changed the governance schema kfm_governance; refused"


class AfterGate(NamedTuple):
    sql: str
    refused_by: str  # "apply" | "gate"
    pin: str | tuple[tuple[str, str], ...]
    setup: str = ""  # SQL run before the migration
    declaration: tuple[tuple[str, str], ...] = ()  # (old, new) edits of migration.yml


LATE_FUNCTION = (
    "CREATE FUNCTION public.late() RETURNS trigger LANGUAGE plpgsql AS "
    "$f$ BEGIN ALTER TABLE public.authority_sites ADD COLUMN late int; RETURN NULL; END $f$"
)

AFTER_THE_GATE = {
    # A deferred constraint trigger fires at COMMIT: its DDL would land after the gate. Here it
    # is on a temporary table with a temporary function, which the session refuses first.
    "deferred_trigger": AfterGate(
        "DO $$ BEGIN "
        "EXECUTE 'CREATE TEMP TABLE tick (id int) ON COMMIT DROP'; "
        "EXECUTE 'CREATE FUNCTION pg_temp.late() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$ BEGIN ALTER TABLE public.authority_sites ADD COLUMN late int; RETURN NULL; END $f$'; "
        "EXECUTE 'CREATE CONSTRAINT TRIGGER late AFTER INSERT ON pg_temp.tick DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION pg_temp.late()'; "
        "EXECUTE 'INSERT INTO pg_temp.tick VALUES (1)'; END $$;",
        "apply",
        f"the script left trigger late on table tick {TEMP}",
    ),
    # The same deferred trigger on an allowed table, with a function that was there before and
    # limits that allow the trigger and the update: only firing it before the post-baseline
    # (SET CONSTRAINTS ALL IMMEDIATE) lets the gate see the column it adds to a forbidden table.
    "deferred_trigger_in_scope": AfterGate(
        "CREATE CONSTRAINT TRIGGER late AFTER UPDATE ON public.parcels DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION public.late(); UPDATE parcels SET name = name WHERE id = 1;",
        "gate",
        (
            ("protected_domain_changed", "column:public.authority_sites.late"),
            ("forbidden_object_changed", "column:public.authority_sites.late"),
        ),
        setup=LATE_FUNCTION,
        declaration=(("max_row_backfill: 0", "max_row_backfill: 5\n  max_constraint_delta: 1"),),
    ),
    # A trigger on the ledger fires when the run records itself, after the gate. Its function
    # is temporary, which the session refuses first...
    "ledger_trigger": AfterGate(
        "DO $$ BEGIN "
        "EXECUTE 'CREATE FUNCTION pg_temp.on_ledger() RETURNS trigger LANGUAGE plpgsql AS "
        "$f$ BEGIN ALTER TABLE public.authority_sites ADD COLUMN late int; RETURN NEW; END $f$'; "
        "EXECUTE 'CREATE TRIGGER on_ledger BEFORE INSERT ON kfm_governance.ledger FOR EACH ROW "
        "EXECUTE FUNCTION pg_temp.on_ledger()'; END $$;",
        "apply",
        f"the script left trigger on_ledger on table kfm_governance.ledger {TEMP}",
    ),
    # ... so here with a function that was there before: the governance-schema check.
    "ledger_trigger_existing_function": AfterGate(
        "DO $$ BEGIN EXECUTE 'CREATE TRIGGER on_ledger BEFORE INSERT ON kfm_governance.ledger FOR EACH ROW "
        "EXECUTE FUNCTION public.late()'; END $$;",
        "apply",
        GOVERNANCE_CHANGED,
        setup=LATE_FUNCTION,
    ),
    # And a rule, whose write would not be counted either.
    "ledger_rule": AfterGate(
        "DO $$ BEGIN EXECUTE 'CREATE RULE on_ledger AS ON INSERT TO kfm_governance.ledger DO ALSO "
        "UPDATE public.authority_sites SET name = ''x'''; END $$;",
        "apply",
        GOVERNANCE_CHANGED,
    ),
    # A forbidden table typed by a temporary type is dropped with it when the session ends.
    "typed_by_temp": AfterGate(
        "DO $$ BEGIN EXECUTE 'CREATE TYPE pg_temp.rt_t AS (id int, name text)'; "
        "EXECUTE 'ALTER TABLE public.authority_sites OF pg_temp.rt_t'; END $$;",
        "apply",
        f"the script left table authority_sites {TEMP}",
    ),
    # With track_counts off the write counters see nothing, whatever is written.
    "track_counts": AfterGate(
        "SET LOCAL track_counts = off; UPDATE parcels SET name = name WHERE false;",
        "apply",
        "the script changed the session's enforcement (track_counts on -> off); refused",
    ),
    # A forged entry in the ledger, written where the counters cannot see it.
    "ledger_write": AfterGate(
        "DO $do$ BEGIN EXECUTE $q$CREATE FUNCTION pg_temp.forge() RETURNS void LANGUAGE plpgsql "
        "SET track_counts = off AS $f$ BEGIN INSERT INTO kfm_governance.ledger (migration_id, operation, status, "
        "bundle_digest, artifacts, environment, run_id, pre_schema_fingerprint, pre_protected_fingerprint, "
        "post_schema_fingerprint, post_scope_fingerprint) VALUES ('PG-MIG-2099-01-01-01', 'apply', 'succeeded', "
        "'x', '{}', 'prod', 'forged', 'x', 'x', 'x', 'x'); END $f$ $q$; PERFORM pg_temp.forge(); END $do$;",
        "apply",
        "the script wrote to the ledger in kfm_governance; refused",
    ),
    # Who owns a forbidden table's sequence.
    "sequence_disowned": AfterGate(
        "DO $$ BEGIN EXECUTE 'ALTER SEQUENCE audit.events_id_seq OWNED BY NONE'; END $$;",
        "gate",
        (
            ("protected_domain_changed", "relation:audit.events_id_seq"),
            ("forbidden_object_changed", "relation:audit.events_id_seq"),
        ),
    ),
    # Privileges on built-in objects, and objects added to the system schemas (hidden from the
    # static plan, which refuses pg_catalog targets).
    "builtin_grant": AfterGate(
        "DO $$ BEGIN EXECUTE 'GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_file(text) TO PUBLIC'; END $$;",
        "gate",
        (("cluster_object_changed", "builtin:privileges-and-additions"),),
    ),
    "system_schema_object": AfterGate(
        "DO $$ BEGIN EXECUTE 'CREATE FUNCTION pg_catalog.kfm_backdoor() RETURNS int LANGUAGE sql "
        "AS ''SELECT 1'''; END $$;",
        "gate",
        (("cluster_object_changed", "builtin:privileges-and-additions"),),
    ),
    # What hangs off an extension's table: a rule that empties a forbidden table later, an
    # index and a column default.
    "extension_table_rule": AfterGate(
        "DO $$ BEGIN EXECUTE 'CREATE RULE wipe AS ON INSERT TO public.spatial_ref_sys DO ALSO "
        "DELETE FROM public.authority_sites'; END $$;",
        "gate",
        (("out_of_scope_change", "extension:postgis"),),
    ),
    "extension_table_default": AfterGate(
        "DO $$ BEGIN EXECUTE 'ALTER TABLE public.spatial_ref_sys ALTER COLUMN auth_name SET DEFAULT ''x'''; END $$;",
        "gate",
        (("out_of_scope_change", "extension:postgis"),),
    ),
    "extension_table_index": AfterGate(
        "DO $$ BEGIN EXECUTE 'CREATE INDEX srs_auth ON public.spatial_ref_sys (auth_name)'; END $$;",
        "gate",
        (("out_of_scope_change", "extension:postgis"),),
    ),
    # Another database of the cluster.
    "other_database": AfterGate(
        "DO $$ BEGIN EXECUTE 'ALTER DATABASE postgres SET work_mem = ''1GB'''; END $$;",
        "gate",
        (("cluster_object_changed", "cluster:databases"),),
    ),
    # An aggregate's definition, not its placeholder body (hidden from the static plan, which
    # names public.st_extent(geometry) and refuses it).
    "aggregate_redefined": AfterGate(
        "DO $$ BEGIN EXECUTE 'CREATE OR REPLACE AGGREGATE public.st_extent(geometry) (SFUNC = public.st_combinebbox, "
        "STYPE = box3d, FINALFUNC = public.box2d, COMBINEFUNC = public.st_combinebbox, PARALLEL = safe, "
        "INITCOND = ''BOX3D(-1000 -1000 0,1000 1000 0)'')'; END $$;",
        "gate",
        (("out_of_scope_change", "extension:postgis"),),
    ),
    # A forbidden table's TOAST options.
    "toast_options": AfterGate(
        "DO $$ BEGIN EXECUTE 'ALTER TABLE public.authority_sites SET (toast.autovacuum_enabled = false)'; END $$;",
        "gate",
        (
            ("protected_domain_changed", "relation:public.authority_sites"),
            ("forbidden_object_changed", "relation:public.authority_sites"),
        ),
    ),
    # So does a default the ledger's columns are given.
    "ledger_default": AfterGate(
        "DO $$ BEGIN EXECUTE 'ALTER TABLE kfm_governance.ledger ALTER COLUMN receipt_digest SET DEFAULT md5(''x'')'; "
        "END $$;",
        "apply",
        GOVERNANCE_CHANGED,
    ),
}


@pytest.mark.parametrize("case", sorted(AFTER_THE_GATE))
def test_nothing_runs_after_the_gate(example: Path, pgdb: PgDatabase, case: str) -> None:
    """Changes the gate never saw must not commit: deferred triggers are fired before the
    post-baseline, and the governance schema must be as the run found it."""
    c = AFTER_THE_GATE[case]
    if c.setup:
        pgdb.sql(c.setup)
    for old, new in c.declaration:
        edit_declaration(example, old, new)
    before = pgdb.state()
    append(example, c.sql)
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["status"] == "failed"
    failed = [(v["name"], v["detail"]) for v in r["validation"] if not v["passed"]]
    if c.refused_by == "apply":
        assert failed == [("apply", c.pin)]
        assert r["reason"] == f"forward failed, transaction rolled back: {c.pin}"
        assert not (example / "diffs" / "summary.json").exists()  # refused before any diff
    else:
        assert [name for name, _ in failed] == ["gate"]
        pins = list(c.pin)
        assert {(f["code"], f["object"]) for f in blocking_findings(example)} >= set(pins)
        assert r["reason"].startswith(f"gate refused ({pins[0][0]}: ")
    assert pgdb.sql(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'public.authority_sites'::regclass AND attname = 'late'"
    ) == [(0,)]
    assert pgdb.state() == before
    assert not pgdb.ledger_schema_exists()
    assert main(["verify", str(example)]) == 0


def test_a_ledger_with_a_trigger_someone_added_is_refused(example: Path, pgdb: PgDatabase) -> None:
    """A trigger on the ledger, added outside any run, would fire when a run records itself."""
    from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_DDL

    pgdb.sql(LEDGER_DDL)
    pgdb.sql(
        "CREATE FUNCTION public.on_ledger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;"
        "CREATE TRIGGER on_ledger BEFORE INSERT ON kfm_governance.ledger FOR EACH ROW "
        "EXECUTE FUNCTION public.on_ledger()"
    )
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["status"] == "failed"
    assert r["reason"] == (
        f"kfm_governance on {pgdb.conn_id} has triggers, rules or policies on its tables, which no run creates; "
        "refusing to record runs there until they are removed"
    )
    assert not has_index(pgdb)
    assert pgdb.sql("SELECT count(*) FROM kfm_governance.ledger") == [(0,)]


def test_a_script_that_lifts_its_own_timeout_is_still_stopped(example: Path, pgdb: PgDatabase) -> None:
    """The runner cancels a statement that outlives the declared timeout, even when the
    script turned the server's timeout off, and the run fails closed."""
    before = pgdb.state()
    text = (example / "migration.yml").read_text() + "timeouts:\n  statement_timeout: 1s\n"
    (example / "migration.yml").write_text(text)
    append(example, "SET LOCAL statement_timeout = 0; SELECT pg_sleep(60);")
    # Had the runner not cancelled it, the sleep would have ended and the run passed the gate.
    assert run(example, pgdb) == 1
    r = receipt(example)
    assert r["reason"].startswith("forward failed, transaction rolled back: ") and "57014" in r["reason"]
    assert pgdb.state() == before
    assert not has_index(pgdb)
