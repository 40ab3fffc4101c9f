"""The capture state shared through the governance schema (``shared_state``): a worker that
never captured the database (its cache directory empty, as on a new pod or Celery worker)
starts from the state the last committed run left there; only committed runs write it; a
state no committed run vouches for is never reused; ``off`` turns it off."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import msgspec
import pytest
from conftest import PgDatabase

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.contracts.models import baseline_json
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.base import LedgerRecord
from airflow_kfm_migrations.stores.postgis import shared_state
from airflow_kfm_migrations.stores.postgis import state as postgis_state
from airflow_kfm_migrations.stores.postgis.store import PostgisStore

pytestmark = pytest.mark.postgis

# A forbidden change the static plan cannot see: only the baselines show it.
CHANGE = "COMMENT ON TABLE governance.rules IS 'hidden'"
SNEAKY = "DO $$ BEGIN EXECUTE '" + CHANGE.replace("'", "''") + "'; END $$;"


def _second(example: Path, mid: str, forward: str, rollback: str) -> Path:
    """Another migration of the example's scope (the example itself would be a no-op now)."""
    folder = example.parent / mid
    shutil.copytree(example, folder)
    yml = folder / "migration.yml"
    yml.write_text(yml.read_text().replace(example.name, mid))
    (folder / "forward.sql").write_text(f"SET search_path = public;\n{forward}\n")
    (folder / "rollback.sql").write_text(f"SET search_path = public;\n{rollback}\n")
    return folder


def _receipt(bundle: Path) -> dict:
    return json.loads((bundle / "receipts" / "run_receipt.json").read_text())


def _worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    """A worker of its own: a new, empty capture cache directory."""
    d = tmp_path / f"worker-{name}"
    monkeypatch.setenv("KFM_CAPTURE_CACHE", str(d))
    return d


def _rows(db: PgDatabase) -> list[tuple]:
    return db.sql("SELECT key, run_id, digest FROM kfm_governance.capture_state ORDER BY key")


# Other tests on the server create and drop databases meanwhile (see test_postgis_state.py):
# neither the cluster's databases object nor the global fingerprint is ever reused.
_STEADY = (
    (re.compile(rb'("digest": ")[0-9a-f]{64}(",\n\s*"id": "cluster:databases")'), rb"\g<1>" + b"0" * 64 + rb"\g<2>"),
    (re.compile(rb'("global_fingerprint": ")[0-9a-f]{64}'), rb"\g<1>" + b"0" * 64),
)


def _bytes(store: PostgisStore, cur, decl) -> bytes:  # type: ignore[no-untyped-def]
    out = baseline_json(store.capture(cur, decl))
    for rx, to in _STEADY:
        out = rx.sub(to, out)
    return out


def _both(store: PostgisStore, db: PgDatabase, decl, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    """``store``'s capture and a full one, in one repeatable-read snapshot (roles are
    cluster-wide, and tests running alongside create and drop theirs)."""
    import psycopg

    with db.connect() as c:
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with c.cursor() as cur:
            got = _bytes(store, cur, decl)
            with monkeypatch.context() as m:
                m.setenv("KFM_CAPTURE_CACHE", "off")
                return got, _bytes(PostgisStore(db.connect, db.conn_id), cur, decl)


def test_a_fresh_worker_starts_from_the_state_the_last_run_left(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _worker(monkeypatch, tmp_path, "a")
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    run_a = _receipt(example)["run_id"]
    [(key, run_id, digest)] = _rows(pgdb)
    assert run_id == run_a
    assert pgdb.sql("SELECT capture_state FROM kfm_governance.ledger WHERE run_id = %s", (run_a,)) == [(digest,)]

    # Worker b has never captured this database: its pre-baseline starts from the shared state.
    cache_b = _worker(monkeypatch, tmp_path, "b")
    second = _second(
        example, "PG-MIG-2026-02-28-02", "CREATE INDEX parcels_name ON parcels (name);", "DROP INDEX parcels_name;"
    )
    assert main(["run", str(second), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    metrics = _receipt(second)["metrics"]
    assert metrics["pre_capture_state"] == "governance"
    assert metrics["pre_capture_reused"] > 0
    # It left its own state for the next worker, and its cache file for itself.
    [(key2, run_b, _)] = _rows(pgdb)
    assert key2 == key and run_b == _receipt(second)["run_id"]
    assert list(cache_b.glob("pg-catalog-*.msgpack"))

    # A capture on a third new worker equals a full one.
    _worker(monkeypatch, tmp_path, "c")
    decl = load_bundle(example).declaration
    store = PostgisStore(pgdb.connect, pgdb.conn_id)
    got, want = _both(store, pgdb, decl, monkeypatch)
    assert store.captures.source == "governance" and store.reused > 0
    assert got == want
    assert b"index:public.parcels_name" in got


def test_a_refused_run_leaves_the_shared_state_and_the_store_as_they_were(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _worker(monkeypatch, tmp_path, "a")
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    before_rows = _rows(pgdb)
    before = pgdb.state()
    _worker(monkeypatch, tmp_path, "b")
    bad = _second(example, "PG-MIG-2026-02-28-03", SNEAKY, "SELECT 1;")
    assert main(["run", str(bad), "--conn-id", pgdb.conn_id, "--quiet"]) == 1
    r = _receipt(bad)
    assert r["status"] == "failed" and r["reason"].startswith("gate refused (protected_domain_changed: ")
    assert _rows(pgdb) == before_rows
    assert pgdb.state() == before


def _forge(db: PgDatabase, decl, sql: str) -> bytes:  # type: ignore[no-untyped-def]
    """A state that claims the catalog already holds what ``sql`` makes: its objects captured
    with ``sql`` run (and rolled back), its snapshot, counts and names those of a capture
    taken now. What a writer of the state table would leave to hide ``sql`` from the next
    pre-baseline."""
    store = PostgisStore(db.connect, db.conn_id)
    with db.connect() as c, c.cursor() as cur:
        store.capture(cur, decl)
        now = store.captures.last
        cur.execute(sql)
        store.capture(cur, decl)
        c.rollback()
    changed = store.captures.last
    assert now is not None and changed is not None
    return postgis_state.encode(
        msgspec.structs.replace(changed, snapshot=now.snapshot, own_xid=None, counts=now.counts, names=now.names)
    )


def test_a_forged_state_cannot_hide_a_forbidden_change(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _worker(monkeypatch, tmp_path, "a")
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    decl = load_bundle(example).declaration
    forged = _forge(pgdb, decl, CHANGE)
    sha = shared_state.digest(forged)
    # The state table rewritten consistently (payload and its digest), the ledger untouched.
    pgdb.sql("UPDATE kfm_governance.capture_state SET payload = %s, digest = %s", (forged, sha))

    _worker(monkeypatch, tmp_path, "b")
    bad = _second(example, "PG-MIG-2026-02-28-03", SNEAKY, "COMMENT ON TABLE governance.rules IS NULL;")
    assert main(["run", str(bad), "--conn-id", pgdb.conn_id, "--quiet"]) == 1
    r = _receipt(bad)
    assert r["status"] == "failed" and r["reason"].startswith("gate refused (protected_domain_changed: ")

    # The trust boundary (docs/stores/postgis.md): a writer who also rewrites the ledger row's
    # digest is trusted like the ledger itself. The same forgery is then reused and hides the
    # change, which shows that the check above is what stopped it.
    pgdb.sql("UPDATE kfm_governance.ledger SET capture_state = %s", (sha,))
    _worker(monkeypatch, tmp_path, "c")
    shutil.rmtree(bad / "receipts")
    assert main(["run", str(bad), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert _receipt(bad)["metrics"]["pre_capture_state"] == "governance"


def test_a_state_no_run_vouches_for_is_ignored(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _worker(monkeypatch, tmp_path, "a")
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    decl = load_bundle(example).declaration
    [(key, run_id, payload)] = pgdb.sql("SELECT key, run_id, payload FROM kfm_governance.capture_state")
    genuine = postgis_state.decode(bytes(payload), key)
    assert genuine is not None
    # A state that decodes and belongs to the key, but is not the one the run left.
    altered = postgis_state.encode(msgspec.structs.replace(genuine, schema_root="0" * 64))
    for n, (sql, params) in enumerate(
        (
            ("UPDATE kfm_governance.capture_state SET payload = %s", (altered,)),  # digest column kept
            ("UPDATE kfm_governance.capture_state SET run_id = 'no-such-run'", None),  # no ledger row names it
        )
    ):
        pgdb.sql("UPDATE kfm_governance.capture_state SET run_id = %s, payload = %s", (run_id, payload))
        pgdb.sql(sql, params)
        _worker(monkeypatch, tmp_path, str(n))
        store = PostgisStore(pgdb.connect, pgdb.conn_id)
        got, want = _both(store, pgdb, decl, monkeypatch)
        assert store.captures.source == "none" and store.reused == 0
        assert got == want


def test_off_neither_writes_nor_reads_the_shared_state(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KFM_CAPTURE_CACHE", "off")
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert _rows(pgdb) == []
    assert pgdb.sql("SELECT capture_state FROM kfm_governance.ledger") == [(None,)]
    # A state another worker left is not read either.
    _worker(monkeypatch, tmp_path, "a")
    second = _second(
        example, "PG-MIG-2026-02-28-02", "CREATE INDEX parcels_name ON parcels (name);", "DROP INDEX parcels_name;"
    )
    assert main(["run", str(second), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    assert len(_rows(pgdb)) == 1
    monkeypatch.setenv("KFM_CAPTURE_CACHE", "off")
    store = PostgisStore(pgdb.connect, pgdb.conn_id)
    with pgdb.connect() as c, c.cursor() as cur:
        store.capture(cur, load_bundle(example).declaration)
    assert store.captures.source == "none" and store.reused == 0


def test_a_non_transactional_run_and_a_held_connection_share_their_state(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``transactional: false`` records and commits statement by statement; inside ``held()``
    (``migrate``, ``status``) the state is written on the held connection after the commit."""
    _worker(monkeypatch, tmp_path, "a")
    yml = example / "migration.yml"
    yml.write_text(
        yml.read_text()
        + "\ntransactional: false\nnon_transactional_reason: the test of a run that commits as it goes\n"
    )
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    [(_key, run_id, _digest)] = _rows(pgdb)
    assert run_id == _receipt(example)["run_id"]

    _worker(monkeypatch, tmp_path, "b")
    bundle = load_bundle(example)
    store = PostgisStore(pgdb.connect, pgdb.conn_id)
    with store.held(), store.session(bundle, "run-held") as s:
        pre = s.baseline()
        assert store.captures.source == "governance"
        with s.conn.cursor() as cur:
            cur.execute("CREATE INDEX parcels_name ON public.parcels (name)")
        post = s.baseline()
        s.record(
            LedgerRecord(
                bundle.migration_id,
                "apply",
                "succeeded",
                bundle.digest,
                {},
                "dev",
                "run-held",
                pre.schema_fingerprint,
                pre.protected_fingerprint,
                post.schema_fingerprint,
                "x",
            )
        )
        s.commit()
    assert [r[1] for r in _rows(pgdb)] == ["run-held"]
    _worker(monkeypatch, tmp_path, "c")
    fresh = PostgisStore(pgdb.connect, pgdb.conn_id)
    got, want = _both(fresh, pgdb, bundle.declaration, monkeypatch)
    assert fresh.captures.source == "governance" and got == want
    assert b"index:public.parcels_name" in got


def test_a_role_that_cannot_read_the_governance_schema_gets_no_state_and_no_error(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The read is guarded: a role without rights on kfm_governance reads nothing, and the
    transaction it reads in (a capture's) goes on."""
    _worker(monkeypatch, tmp_path, "a")
    assert main(["run", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    [(key, _run_id, _digest)] = _rows(pgdb)
    role = f"kfm_ro_{pgdb.name}"[:60]
    pgdb.sql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role}")
    try:
        with pgdb.connect() as c, c.cursor() as cur:
            assert shared_state.fetch(cur, key) is not None
            cur.execute(f"SET ROLE {role}")
            assert shared_state.fetch(cur, key) is None
            cur.execute("SELECT 1")  # the transaction is still usable
            c.rollback()
    finally:
        pgdb.sql(f"DROP ROLE {role}")
