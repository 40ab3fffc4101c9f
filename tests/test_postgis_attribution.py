"""Database- and cluster-level objects on a shared server, against the real one: what other
sessions change there during a run (or between an apply and its rollback) is reported, not
judged; what the run's own transaction changes is refused, however it is hidden. And digests
carry no per-database identity: one migration history gives the same baseline in any
database."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import LEDGER_SCHEMA, PgDatabase, drop_db
from test_postgis import append, blocking_findings, has_index, receipt, run, summary

from airflow_kfm_migrations.cli import main
from airflow_kfm_migrations.contracts.models import Baseline
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.postgis import attribution
from airflow_kfm_migrations.stores.postgis.catalog_global import CLUSTER_KINDS, GLOBAL_QUERIES
from airflow_kfm_migrations.util.digest import sha256_file

LOCK = 727_271  # an advisory lock the test holds while the run's script waits for it


def _other_database(admin: object) -> Iterator[str]:
    """Create a database from another session, as other work on the server does; dropped
    afterwards. Named like the test databases, which the oracle (``state()``) leaves out."""
    name = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')  # type: ignore[attr-defined]
    try:
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[attr-defined]


@pytest.fixture
def other_databases(pg_admin: object) -> Iterator[Callable[[], str]]:
    made: list[Iterator[str]] = []

    def create() -> str:
        gen = _other_database(pg_admin)
        made.append(gen)
        return next(gen)

    yield create
    for gen in made:
        next(gen, None)


def run_while(
    example: Path, db: PgDatabase, meanwhile: Callable[[], object], *extra: str, wait_first: bool = False
) -> int:
    """Run the migration, its forward script waiting (after its other statements, or before
    them with ``wait_first``) for an advisory lock this test holds, and do ``meanwhile`` from
    other sessions while it waits: after the pre-baseline, before the post-baseline."""
    text = (example / "migration.yml").read_text() + "timeouts:\n  lock_timeout: 120s\n"
    (example / "migration.yml").write_text(text)
    wait = f"SELECT pg_advisory_xact_lock({LOCK});"
    if wait_first:
        (example / "forward.sql").write_text(wait + "\n" + (example / "forward.sql").read_text())
    else:
        append(example, wait)
    holder = db.connect(autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (LOCK,))
    rc: list[int] = []
    worker = threading.Thread(target=lambda: rc.append(run(example, db, *extra)))
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while not holder.execute(
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (LOCK,),
        ).fetchone():
            assert worker.is_alive() and time.monotonic() < deadline, "the run never waited for the lock"
            time.sleep(0.05)
        meanwhile()
    finally:
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
        holder.close()
        worker.join()
    return rc[0]


def findings(bundle: Path) -> set[tuple[str, str, str]]:
    return {(f["code"], f.get("object") or "", f["tier"]) for f in summary(bundle)["findings"]}


@pytest.mark.postgis
# wait_first: the run's transaction has no id yet when the other session takes one (its first
# write comes after), so the other's database row carries an older id than anything the run wrote.
@pytest.mark.parametrize("wait_first", [False, True], ids=["written_before", "written_after"])
def test_a_database_another_session_creates_during_the_run_is_reported_not_judged(
    example: Path, pgdb: PgDatabase, other_databases: Callable[[], str], wait_first: bool
) -> None:
    # As on a store that has run migrations before: the session writes nothing before the
    # pre-baseline, which starts from an earlier capture's state (and compares xid ages).
    from airflow_kfm_migrations.stores.postgis.catalog import LEDGER_DDL

    pgdb.sql(LEDGER_DDL)
    pgdb.fingerprint()
    assert run_while(example, pgdb, other_databases, wait_first=wait_first) == 0
    r = receipt(example)
    assert r["status"] == "succeeded" and has_index(pgdb)
    assert ("global_object_changed_elsewhere", "cluster:databases", "informational") in findings(example)
    assert not [f for f in findings(example) if f[0] == "cluster_object_changed"]
    (msg,) = [f["message"] for f in summary(example)["findings"] if f["object"] == "cluster:databases"]
    assert msg.startswith("cluster changed by another session during the run (this run's transaction wrote none of ")
    # The receipt carries it: the diff summary it lists, by digest.
    (ref,) = [o for o in r["outputs"] if o["role"] == "diff_summary"]
    assert ref["sha256"] == sha256_file(example / ref["path"])


@pytest.mark.postgis
def test_a_database_created_between_apply_and_rollback_does_not_refuse_the_rollback(
    example: Path, pgdb: PgDatabase, other_databases: Callable[[], str]
) -> None:
    assert run(example, pgdb) == 0
    other_databases()
    # Not drift either: the re-run is a no-op.
    assert run(example, pgdb) == 0
    assert receipt(example)["status"] == "noop" and receipt(example)["metrics"]["drift"] == 0
    other_databases()
    assert main(["rollback", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 0
    r = receipt(example)
    assert r["status"] == "rolled_back" and not has_index(pgdb)
    checks = {v["name"]: v["passed"] for v in r["validation"]}
    assert checks["schema_equals_pre"] and checks["protected_equals_pre"] and checks["global_objects_unchanged"]


COMMENT_ON_DATABASE = "EXECUTE format('COMMENT ON DATABASE %I IS %L', current_database(), 'mine');"

# The run's own change to a database- or cluster-level object, however hidden: (SQL, the
# object that must be refused, what the attribution says).
OWN_CHANGES = {
    "comment_on_the_database": (
        f"DO $$ BEGIN {COMMENT_ON_DATABASE} END $$;",
        "database:current",
        "this run's transaction wrote pg_shdescription",
    ),
    "role_setting": (
        "DO $$ BEGIN EXECUTE 'ALTER ROLE CURRENT_USER SET work_mem = ''1GB'''; END $$;",
        "role:kfm",
        "this run's transaction wrote pg_db_role_setting",
    ),
    # A function that turns the write counters off for its own duration (the session's
    # setting is back when the script ends): the catalog row still carries the transaction's id.
    "hidden_from_the_write_counters": (
        "DO $do$ BEGIN EXECUTE $q$CREATE FUNCTION pg_temp.quiet() RETURNS void LANGUAGE plpgsql "
        f"SET track_counts = off AS $f$ BEGIN {COMMENT_ON_DATABASE} END $f$ $q$; PERFORM pg_temp.quiet(); END $do$;",
        "database:current",
        "pg_shdescription hold(s) rows this run's transaction wrote, which the write counters did not see",
    ),
}


@pytest.mark.postgis
@pytest.mark.parametrize("case", sorted(OWN_CHANGES))
def test_the_run_s_own_global_change_is_refused_while_another_session_creates_a_database(
    example: Path, pgdb: PgDatabase, other_databases: Callable[[], str], case: str
) -> None:
    sql, obj, why = OWN_CHANGES[case]
    before = pgdb.state()
    append(example, sql)
    assert run_while(example, pgdb, other_databases) == 1
    r = receipt(example)
    assert r["status"] == "failed" and r["reason"].startswith("gate refused (cluster_object_changed: ")
    (own,) = [f for f in blocking_findings(example) if f["object"] == obj]
    assert own["code"] == "cluster_object_changed" and own["message"].endswith(f"({why})")
    assert pgdb.state() == before and not has_index(pgdb)
    assert pgdb.sql("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (pgdb.name,))
    assert pgdb.sql("SELECT count(*) FROM pg_db_role_setting WHERE setconfig::text LIKE '%%1GB%%'") == [(0,)]


@pytest.mark.postgis
def test_a_rollback_that_changes_a_global_object_is_not_committed(example: Path, pgdb: PgDatabase) -> None:
    assert run(example, pgdb) == 0
    with (example / "rollback.sql").open("a") as fh:
        fh.write(f"DO $$ BEGIN {COMMENT_ON_DATABASE} END $$;\n")
    assert main(["rollback", str(example), "--conn-id", pgdb.conn_id, "--quiet"]) == 1
    r = receipt(example)
    assert r["status"] == "rollback_failed"
    assert r["reason"].startswith("the rollback changed cluster:databases (cluster_object_changed: cluster changed ")
    assert r["reason"].endswith("(this run's transaction wrote pg_shdescription)); rollback not committed")
    (check,) = [v for v in r["validation"] if v["name"] == "global_objects_unchanged"]
    assert not check["passed"] and "database:current: database changed during the rollback" in check["detail"]
    assert has_index(pgdb) and pgdb.sql("SELECT operation FROM kfm_governance.ledger") == [("apply",)]
    comment = "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()"
    assert pgdb.sql(comment) == [(None,)]


def _as_an_earlier_release(db: PgDatabase, decl: object, ghost: bool = False) -> tuple[Baseline, Baseline]:
    """The store's baseline now, and as earlier releases wrote it: a few digests with OIDs, the
    cluster's databases, tablespaces and replication as one object, the schema fingerprint
    over every object (``ghost``: with an object the store does not have)."""
    from airflow_kfm_migrations.stores.postgis import legacy
    from airflow_kfm_migrations.stores.postgis.capture import digest_rows
    from airflow_kfm_migrations.stores.postgis.store import PostgisStore
    from airflow_kfm_migrations.util.digest import leaf, merkle_root

    with db.connect() as c, c.cursor() as cur:
        now = PostgisStore(db.connect, db.conn_id).capture(cur, decl)  # type: ignore[arg-type]
        old = {r[1]: r for r in digest_rows(cur, legacy.LEGACY_QUERY)}
    objects = [o.model_dump(by_alias=True) for o in now.objects if o.kind != "cluster"]
    for o in objects:
        o["digest"] = old[o["id"]][4] if o["id"] in old else o["digest"]
    (cluster,) = [r for oid, r in old.items() if oid.startswith("cluster:")]
    objects.append({"id": cluster[1], "kind": "cluster", "schema": None, "table": None, "digest": cluster[4]})
    if ghost:
        objects.append(
            {"id": "relation:public.ghost", "kind": "table", "schema": "public", "table": "ghost", "digest": "0" * 64}
        )
    objects.sort(key=lambda o: o["id"])
    doc = now.model_dump(by_alias=True) | {"objects": objects, "global_fingerprint": None}
    doc["schema_fingerprint"] = merkle_root(leaf(o["id"], o["digest"]) for o in objects if o["kind"] != "rows")
    doc["protected_fingerprint"] = merkle_root(leaf(o["id"], o["digest"]) for o in objects if o.get("protected"))
    return now, Baseline.model_validate(doc)


@pytest.mark.postgis
@pytest.mark.parametrize("restores", [True, False], ids=["restored", "not_restored"])
def test_a_rollback_of_an_apply_an_earlier_release_recorded(
    example: Path, pgdb: PgDatabase, monkeypatch: pytest.MonkeyPatch, other_databases: Callable[[], str], restores: bool
) -> None:
    """Earlier releases recorded fingerprints over every object, with OIDs in a few digests.
    The rollback judges the store as they would, and compares the database's own objects with
    the apply's pre-baseline (which the ledger's fingerprint authenticates): databases other
    sessions create meanwhile do not refuse it, an object missing does."""
    from airflow_kfm_migrations.engine import rollback

    decl = load_bundle(example).declaration
    now, pre = _as_an_earlier_release(pgdb, decl, ghost=not restores)
    assert run(example, pgdb) == 0
    applied = receipt(example)
    assert pre.schema_fingerprint != now.schema_fingerprint and pre.global_fingerprint is None
    pgdb.sql(
        f"UPDATE {LEDGER_SCHEMA}.ledger SET pre_schema_fingerprint = %s, pre_protected_fingerprint = %s",
        (pre.schema_fingerprint, pre.protected_fingerprint),
    )
    monkeypatch.setattr(
        rollback, "_apply_pre_baseline", lambda _run, run_id: pre if run_id == applied["run_id"] else None
    )
    other_databases()
    status = main(["rollback", str(example), "--conn-id", pgdb.conn_id, "--quiet"])
    r = receipt(example)
    checks = {v["name"]: v["passed"] for v in r["validation"]}
    if restores:
        assert status == 0 and r["status"] == "rolled_back" and not has_index(pgdb)
        assert checks["schema_equals_pre"] and checks["protected_equals_pre"]
    else:
        assert status == 1 and r["status"] == "rollback_failed" and has_index(pgdb)
        assert not checks["schema_equals_pre"] and checks["protected_equals_pre"]


# -------------------------------------------------- the same schema in two databases

MIGRATIONS = {
    "PG-MIG-2027-01-01-01": (
        """
        CREATE SCHEMA app;
        CREATE TYPE app.mood AS ENUM ('calm', 'busy', 'sad');
        CREATE DOMAIN app.posint AS integer CHECK (VALUE > 0);
        CREATE DOMAIN app.gentle AS app.mood CHECK (VALUE <> 'sad');
        CREATE SEQUENCE app.ticket;
        CREATE TABLE app.item (
            id serial PRIMARY KEY,
            mood app.mood NOT NULL DEFAULT 'calm' CHECK (mood <> 'sad'),
            feel app.gentle,
            qty app.posint,
            label text,
            ticket bigint DEFAULT nextval('app.ticket'),
            geom geometry(Point, 4326)
        );
        CREATE INDEX item_geom ON app.item USING gist (geom);
        CREATE INDEX item_busy ON app.item (mood) WHERE mood = 'busy';
        """,
        "DROP SCHEMA app CASCADE;",
        "",
    ),
    "PG-MIG-2027-01-01-02": (
        """
        CREATE FUNCTION app.positive(n integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT n > 0';
        CREATE FUNCTION app.stamp() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN NEW.label := coalesce(NEW.label, 'new'); RETURN NEW; END $$;
        CREATE TRIGGER item_stamp BEFORE INSERT ON app.item FOR EACH ROW EXECUTE FUNCTION app.stamp();
        ALTER TABLE app.item ADD CONSTRAINT item_qty_positive CHECK (app.positive(qty));
        ALTER TABLE app.item ADD CONSTRAINT item_near CHECK (ST_SRID(geom) = 4326);
        CREATE VIEW app.calm_items AS SELECT id, label FROM app.item WHERE mood = 'calm';
        ALTER TABLE app.item ENABLE ROW LEVEL SECURITY;
        CREATE POLICY item_not_sad ON app.item USING (mood <> 'sad');
        """,
        "DROP VIEW app.calm_items; DROP POLICY item_not_sad ON app.item;",
        "",
    ),
    "PG-MIG-2027-01-01-03": (
        """
        CREATE TABLE app.zone (id int PRIMARY KEY, area geometry(Polygon, 4326), EXCLUDE USING gist (area WITH &&));
        CREATE STATISTICS app.item_moods ON (mood = 'busy'), qty FROM app.item;
        COMMENT ON TABLE app.item IS 'items';
        COMMENT ON COLUMN app.item.mood IS 'how it feels';
        COMMENT ON TYPE app.mood IS 'moods';
        GRANT USAGE ON SCHEMA app TO PUBLIC;
        GRANT SELECT ON app.calm_items TO PUBLIC;
        """,
        "DROP TABLE app.zone;",
        "review:grant_widened",
    ),
    "PG-MIG-2027-01-01-04": (
        """
        CREATE OPERATOR CLASS app.int_order FOR TYPE integer USING btree AS
            OPERATOR 1 <, OPERATOR 3 =, OPERATOR 5 >, FUNCTION 1 btint4cmp(integer, integer);
        CREATE INDEX item_qty_order ON app.item ((qty::integer) app.int_order);
        CREATE COLLATION app.bytewise FROM "C";
        ALTER TABLE app.zone ADD COLUMN code text COLLATE app.bytewise;
        CREATE INDEX zone_code ON app.zone (code);
        ALTER TYPE app.mood ADD VALUE 'sleepy';
        """,
        "DROP INDEX app.zone_code;",
        "",
    ),
}


def _bundle(root: Path, mid: str, forward: str, rollback: str, covers: str) -> Path:
    folder = root / mid
    folder.mkdir(parents=True)
    recorded = (
        "\n  recorded:\n    - by: kfm-governance\n      at: '2027-01-01T10:00:00+00:00'\n      ref: GOV-1\n"
        f"      covers: ['{covers}']"
        if covers
        else ""
    )
    (folder / "migration.yml").write_text(
        f'migration_id: {mid}\ntype: postgis\nintent: "one step of the app schema"\n'
        "scope:\n  allowed_schemas:\n    - app\n"
        "limits:\n  max_table_count_touched: 10\n  max_index_count_delta: 10\n  max_constraint_delta: 10\n"
        "  max_row_backfill: 0\nrequires_rollback: true\n"
        "approvals:\n  required_reviewers:\n    - kfm-governance\n  change_class: standard" + recorded + "\n"
        'runner:\n  tool: "psql"\n  command: "scripts/migrate.sh"\n  environment:\n    - KFM_DB_DSN_REF\n'
        "artifacts:\n  forward:\n    - forward.sql\n  rollback:\n    - rollback.sql\n"
        "  baselines:\n    pre: baselines/pre.json\n    post: baselines/post.json\n"
        "  diffs:\n    summary: diffs/summary.json\n"
    )
    (folder / "forward.sql").write_text(forward)
    (folder / "rollback.sql").write_text(rollback + "\n")
    return folder


@pytest.fixture
def fresh_databases(pg_admin: object) -> Iterator[list[PgDatabase]]:
    """Two databases built apart, each with PostGIS created in it: the extension's objects,
    like everything created after initdb, get other OIDs in each."""
    dbs = []
    try:
        for _ in range(2):
            name = "t_" + uuid.uuid4().hex[:12]
            pg_admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')  # type: ignore[attr-defined]
            db = PgDatabase(pg_admin, name)
            dbs.append(db)
            os.environ[f"AIRFLOW_CONN_{db.conn_id.upper()}"] = db.dsn
            db.sql("CREATE EXTENSION postgis")
        yield dbs
    finally:
        for db in dbs:
            drop_db(pg_admin, db)


@pytest.mark.postgis
def test_one_migration_history_gives_the_same_baseline_in_two_databases(
    fresh_databases: list[PgDatabase], tmp_path: Path
) -> None:
    bundles = [_bundle(tmp_path / "bundles", mid, *steps) for mid, steps in MIGRATIONS.items()]
    posts = []
    for db in fresh_databases:
        for b in bundles:
            out = tmp_path / db.name / b.name
            assert main(["run", str(b), "--conn-id", db.conn_id, "--quiet", "--artifacts", str(out)]) == 0, json.loads(
                (out / "receipts" / "run_receipt.json").read_text()
            )["reason"]
        posts.append(Baseline.model_validate_json((out / "baselines" / "post.json").read_bytes()))
    # The OIDs differ: the extension's and the schema's objects were numbered apart.
    oids = [db.sql("SELECT 'app.mood'::regtype::oid, 'public.geometry'::regtype::oid")[0] for db in fresh_databases]
    assert oids[0][0] != oids[1][0] and oids[0][1] != oids[1][1]
    # Every object digests the same, but those other sessions change on a shared server
    # meanwhile (the cluster's databases, roles), which no schema fingerprint covers.
    a, b = ({o.id: o.digest for o in p.objects if o.kind not in ("cluster", "role")} for p in posts)
    assert sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)) == []
    assert {k for k in a if k.startswith(("constraint:", "index:", "statistics:", "extension:"))} >= {
        "constraint:app.item.item_mood_check",
        "constraint:app.gentle.gentle_check",
        "constraint:app.item.item_qty_positive",
        "constraint:app.item.item_near",
        "constraint:app.zone.zone_area_excl",
        "index:app.item_geom",
        "index:app.item_qty_order",
        "index:app.zone_code",
        "statistics:app.item_moods",
        "extension:postgis",
    }
    assert posts[0].schema_fingerprint == posts[1].schema_fingerprint
    assert {k: n for k, n in posts[0].counts.items() if k != "role"} == {
        k: n for k, n in posts[1].counts.items() if k != "role"
    }


# -------------------------------------------------- server-less: the catalogs behind each kind


_VIEWS = {"pg_roles": "pg_authid", "pg_replication_slots": None}


def _named_catalogs(query: str) -> set[str | None]:
    """The catalogs a digest query reads (views by the catalog behind them), and the ones its
    names come from: owners and ACLs (pg_authid), reg* casts (pg_namespace...)."""
    cats: set[str | None] = set()
    for name in re.findall(r"pg_catalog\.(pg_\w+)", query):
        cats.add(_VIEWS.get(name, name))
    if "pg_get_userbyid" in query or "acl::text" in query or "pg_roles" in query:
        cats.add("pg_authid")
    # A reg* cast of a column renders a name; of a constant ('pg_class'::regclass), a built-in OID.
    if re.search(r"[^']::reg(proc|procedure|type|class|oper|operator|namespace)\b", query):
        cats.add("pg_namespace")
    if re.search(r"[^']::reg(proc|procedure)\b", query):
        cats.add("pg_proc")
    if re.search(r"[^']::reg(type|procedure)\b", query):
        cats.add("pg_type")
    if "shobj_description" in query:
        cats.add("pg_shdescription")
    if "ext WHERE classid" in query:  # catalog_sql.not_ext
        cats.add("pg_depend")
    return cats


def test_every_catalog_a_global_digest_reads_is_attributed() -> None:
    """A catalog left out would let the run's own change pass as another session's."""
    for kind in CLUSTER_KINDS - {"cluster"}:
        assert _named_catalogs(GLOBAL_QUERIES[kind]) <= attribution.KIND_CATALOGS[kind], kind
    # The cluster's objects, one per concern, each with its own catalogs.
    for part in GLOBAL_QUERIES["cluster"].split(" UNION ALL "):
        (oid,) = re.findall(r"'(cluster:[a-z-]+)'", part)
        cats = attribution.CLUSTER_CATALOGS[oid]
        named = _named_catalogs(part)
        if cats is None:
            assert named == {None}, oid  # replication slots: a view over no catalog
        else:
            assert named <= cats, oid
    assert attribution.KIND_CATALOGS["default_acl"] >= _named_catalogs(GLOBAL_QUERIES["default_acl"])
    # Every global kind is known, and the unknown stays strict.
    assert set(attribution.KIND_CATALOGS) >= CLUSTER_KINDS - {"cluster"}
    assert attribution.catalogs_of("cluster:something-new", "cluster") is None
    assert attribution.catalogs_of("gadget:x", "gadget") is None
