"""A capture that reuses an earlier one (postgis_state.py) must give exactly the bytes a full
capture gives, after any change, committed or in the capture's own transaction, by this
session or by another. Each step below changes something whose digest lives in another
object's family, or that a DELETE alone removes, and compares the two captures."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PgDatabase

from airflow_kfm_migrations.contracts.models import baseline_json
from airflow_kfm_migrations.declaration.bundle import load_bundle
from airflow_kfm_migrations.stores.postgis import state as postgis_state
from airflow_kfm_migrations.stores.postgis.store import PostgisStore

pytestmark = pytest.mark.postgis

RICH = """
CREATE SCHEMA app;
CREATE SCHEMA other;
CREATE TYPE app.mood AS ENUM ('calm', 'busy');
CREATE DOMAIN app.posint AS int CHECK (VALUE > 0);
CREATE TABLE app.owner (id int PRIMARY KEY, name text);
CREATE TABLE app.item (id serial PRIMARY KEY, owner_id int REFERENCES app.owner (id), qty app.posint,
                       m app.mood, note text DEFAULT 'n', CHECK (id > 0));
CREATE INDEX item_note ON app.item (lower(note)) WHERE qty > 1;
CREATE SEQUENCE app.counter;
CREATE TABLE app.counted (id int DEFAULT nextval('app.counter'), label text);
CREATE VIEW app.item_v AS SELECT i.id, o.name FROM app.item i JOIN app.owner o ON o.id = i.owner_id;
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN NEW.note := 't'; RETURN NEW; END$$;
CREATE TRIGGER item_touch BEFORE INSERT ON app.item FOR EACH ROW EXECUTE FUNCTION app.touch();
ALTER TABLE app.item ENABLE ROW LEVEL SECURITY;
CREATE POLICY item_pol ON app.item USING (qty > 0);
CREATE TABLE app.parent (id int, kind text);
CREATE TABLE app.child () INHERITS (app.parent);
CREATE TABLE app.part (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE app.part_1 PARTITION OF app.part FOR VALUES FROM (0) TO (10);
CREATE STATISTICS app.item_stats ON owner_id, qty FROM app.item;
CREATE RULE owner_rule AS ON DELETE TO app.owner DO INSTEAD NOTHING;
COMMENT ON TABLE app.item IS 'items';
COMMENT ON COLUMN app.item.note IS 'a note';
CREATE TABLE other.ref (id int, item_id int REFERENCES app.item (id));
CREATE TABLE app.cash (amount money, spot geometry(Point, 4326));
CREATE FUNCTION app.positive(n int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT n > 0';
ALTER TABLE app.item ADD CONSTRAINT item_calm CHECK (m <> 'busy' OR app.positive(qty));
CREATE OPERATOR CLASS app.int_order FOR TYPE integer USING btree
    AS OPERATOR 1 <, OPERATOR 3 =, OPERATOR 5 >, FUNCTION 1 btint4cmp(integer, integer);
CREATE INDEX item_id_order ON app.item (id app.int_order);
"""

# (label, SQL, reuse expected). {role} is a role created for the test.
STEPS: list[tuple[str, str, bool]] = [
    ("create index", "CREATE INDEX item_qty ON app.item (qty)", True),
    ("drop index", "DROP INDEX app.item_qty", True),
    ("rename a referenced table", "ALTER TABLE app.owner RENAME TO owners", True),
    ("rename a referenced column", "ALTER TABLE app.item RENAME COLUMN owner_id TO owner", True),
    ("rename a sequence a default uses", "ALTER SEQUENCE app.counter RENAME TO counter2", True),
    (
        "replace a trigger's function body",
        "CREATE OR REPLACE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN NEW.note := 'changed'; RETURN NEW; END$$",
        True,
    ),
    ("rename a trigger's function", "ALTER FUNCTION app.touch() RENAME TO touch2", True),
    ("rename an enum type a column uses", "ALTER TYPE app.mood RENAME TO mood2", True),
    ("an enum label in a default", "ALTER TABLE app.item ALTER COLUMN m SET DEFAULT 'calm'", True),
    # An enum label renders in constants of the enum and of every type built on it, which
    # pg_depend does not link to the label: a changed label starts afresh.
    ("rename that label", "ALTER TYPE app.mood2 RENAME VALUE 'calm' TO 'relaxed'", False),
    ("add a label", "ALTER TYPE app.mood2 ADD VALUE 'sleepy'", False),
    ("rename a domain a column uses", "ALTER DOMAIN app.posint RENAME TO posint2", True),
    # Digests name what they would otherwise hold by per-database OID: a function a CHECK
    # calls, an enum constant's type, an index's operator class.
    ("rename a function a CHECK calls", "ALTER FUNCTION app.positive(int) RENAME TO positive2", True),
    (
        "rename an operator class an index uses",
        "ALTER OPERATOR CLASS app.int_order USING btree RENAME TO int_order2",
        True,
    ),
    ("drop a column comment", "COMMENT ON COLUMN app.item.note IS NULL", True),
    ("comment an index", "COMMENT ON INDEX app.item_note IS 'lower-case notes'", True),
    ("drop a policy", "DROP POLICY item_pol ON app.item", True),
    ("detach an inheritance child", "ALTER TABLE app.child NO INHERIT app.parent", True),
    ("attach it again", "ALTER TABLE app.child INHERIT app.parent", True),
    ("rename an inheritance child", "ALTER TABLE app.child RENAME TO kid", True),
    ("detach a partition", "ALTER TABLE app.part DETACH PARTITION app.part_1", True),
    ("attach a partition", "ALTER TABLE app.part ATTACH PARTITION app.part_1 FOR VALUES FROM (0) TO (5)", True),
    ("disown a sequence", "ALTER SEQUENCE app.item_id_seq OWNED BY NONE", True),
    ("disable FK enforcement", "ALTER TABLE app.owners DISABLE TRIGGER ALL", True),
    (
        "rename a disabled FK",
        "ALTER TABLE app.item RENAME CONSTRAINT item_owner_id_fkey TO item_owner_fk",
        True,
    ),
    ("enable FK enforcement", "ALTER TABLE app.owners ENABLE TRIGGER ALL", True),
    ("grant on a table", "GRANT SELECT ON app.item TO {role}", True),
    ("grant on a column", "GRANT UPDATE (note) ON app.item TO {role}", True),
    ("revoke", "REVOKE SELECT ON app.item FROM {role}", True),
    ("change an owner", "ALTER TABLE app.counted OWNER TO {role}", True),
    ("drop statistics", "DROP STATISTICS app.item_stats", True),
    ("drop a rule", "DROP RULE owner_rule ON app.owners", True),
    ("drop a default", "ALTER TABLE app.item ALTER COLUMN note DROP DEFAULT", True),
    ("set not null", "ALTER TABLE app.item ALTER COLUMN note SET NOT NULL", True),
    ("add a column", "ALTER TABLE app.item ADD COLUMN extra int", True),
    ("drop a column", "ALTER TABLE app.item DROP COLUMN extra", True),
    ("rename an index", "ALTER INDEX app.item_note RENAME TO item_note2", True),
    ("cluster on an index", "CLUSTER app.item USING item_pkey", True),
    ("a view over a view", "CREATE VIEW app.v2 AS SELECT * FROM app.item_v", True),
    ("make a table an extension member", "ALTER EXTENSION postgis ADD TABLE app.counted", True),
    ("and not any more", "ALTER EXTENSION postgis DROP TABLE app.counted", True),
    ("grant on the schema", "GRANT USAGE ON SCHEMA app TO {role}", True),
    ("drop a referenced table", "DROP TABLE app.owners CASCADE", True),
    ("drop a table another schema references", "DROP TABLE app.item CASCADE", True),
    ("rename an extension's type a column uses", "ALTER TYPE public.geometry RENAME TO geom_x", True),
    ("and back", "ALTER TYPE public.geom_x RENAME TO geometry", True),
    # Built-in objects have no pg_depend rows to follow: changing one starts afresh.
    ("rename a built-in type a column uses", "ALTER TYPE pg_catalog.money RENAME TO cash_money", False),
    ("and back", "ALTER TYPE pg_catalog.cash_money RENAME TO money", False),
    ("new schema and table", "CREATE SCHEMA newer; CREATE TABLE newer.t (id int PRIMARY KEY)", True),
    # More new objects than the capture inserts one by one among the reused ones.
    ("a wide new table", "CREATE TABLE newer.wide (" + ", ".join(f"c{i} int" for i in range(80)) + ")", True),
    ("and a column more", "ALTER TABLE newer.wide ADD COLUMN c80 int", True),
    ("rename a schema", "ALTER SCHEMA newer RENAME TO newest", False),
    ("rename a role", "ALTER ROLE {role} RENAME TO {role}_2", False),
    ("and back", "ALTER ROLE {role}_2 RENAME TO {role}", False),
]


@pytest.fixture
def rich(pgdb: PgDatabase) -> PgDatabase:
    pgdb.sql(RICH)
    return pgdb


@pytest.fixture
def role(pgdb: PgDatabase) -> Iterator[str]:
    """A role of this test's own (roles are cluster-wide: only the test that needs one makes one)."""
    name = f"kfm_state_{pgdb.name}"[:60]
    pgdb.sql(f"DROP ROLE IF EXISTS {name}; CREATE ROLE {name}")
    yield name
    pgdb.sql(f"DROP OWNED BY {name}; DROP ROLE {name}")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "capture-cache"
    monkeypatch.setenv("KFM_CAPTURE_CACHE", str(d))
    return d


# Another test's DROP DATABASE marks the database invalid in place (pg_database.datconnlimit
# -2), which even a repeatable-read snapshot sees: the cluster's databases object and the
# global fingerprint can differ between two captures of one snapshot. Neither is ever reused
# (every capture computes them in full), so they are left out of the comparison.
_STEADY = (
    (re.compile(rb'("digest": ")[0-9a-f]{64}(",\n\s*"id": "cluster:databases")'), rb"\g<1>" + b"0" * 64 + rb"\g<2>"),
    (re.compile(rb'("global_fingerprint": ")[0-9a-f]{64}'), rb"\g<1>" + b"0" * 64),
)


def _bytes(store: PostgisStore, cur, decl) -> bytes:  # type: ignore[no-untyped-def]
    out = baseline_json(store.capture(cur, decl))
    for rx, to in _STEADY:
        out, n = rx.subn(to, out)
        assert n == 1
    return out


def full(db: PgDatabase, decl, monkeypatch: pytest.MonkeyPatch, cur) -> bytes:  # type: ignore[no-untyped-def]
    """A capture that reuses nothing, through ``cur``."""
    with monkeypatch.context() as m:
        m.setenv("KFM_CAPTURE_CACHE", "off")
        return _bytes(PostgisStore(db.connect, db.conn_id), cur, decl)


def both(store: PostgisStore, db: PgDatabase, decl, monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    """``store``'s capture and a full one, in one repeatable-read snapshot: roles are
    cluster-wide, and tests running alongside create and drop theirs."""
    import psycopg

    with db.connect() as c:
        c.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with c.cursor() as cur:
            return _bytes(store, cur, decl), full(db, decl, monkeypatch, cur)


def _delta(got: bytes, want: bytes) -> str:
    a, b = json.loads(got), json.loads(want)
    oa = {o["id"]: o["digest"] for o in a.pop("objects")}
    ob = {o["id"]: o["digest"] for o in b.pop("objects")}
    objects = sorted(k for k in oa.keys() | ob.keys() if oa.get(k) != ob.get(k))
    rest = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return f"objects {objects[:10]}, fields {rest}"


def test_each_committed_change_gives_the_full_capture(
    example, rich, role: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = rich
    decl = load_bundle(example).declaration
    store = PostgisStore(db.connect, db.conn_id)
    first, want = both(store, db, decl, monkeypatch)
    assert store.reused == 0
    assert first == want
    before = first
    for label, sql, reuse in STEPS:
        db.sql(sql.format(role=role))
        got, want = both(store, db, decl, monkeypatch)
        assert got == want, f"after '{label}' the reusing capture differs from a full one: {_delta(got, want)}"
        assert want != before, f"'{label}' changed nothing the baseline sees"
        if reuse:
            assert store.reused > 0, f"after '{label}' nothing was reused"
        else:
            assert store.reused == 0, f"after '{label}' the capture should have started afresh"
        before = want


def test_a_change_in_the_capture_s_own_transaction(example, rich, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a run does: capture, change (here also in a subtransaction), capture again, roll back."""
    db = rich
    decl = load_bundle(example).declaration
    store = PostgisStore(db.connect, db.conn_id)
    with db.connect() as c, c.cursor() as cur:
        cur.execute("SELECT pg_current_xact_id()")  # the run's ledger DDL gives it an id first
        # A later transaction completes before the capture: this one's id is then below the
        # snapshot's xmax, and only its own id marks the rows it writes as new.
        db.sql("CREATE TABLE other.bump (id int)")
        pre = _bytes(store, cur, decl)
        store.adopt(store._last)
        cur.execute("ALTER TABLE app.counted RENAME TO counted2; ALTER TYPE app.mood RENAME TO mood2")
        cur.execute(
            "DO $$BEGIN BEGIN CREATE INDEX parent_kind ON app.parent (kind); "
            "COMMENT ON TABLE app.child IS 'a child'; EXCEPTION WHEN others THEN RAISE; END; END$$"
        )
        # Nothing of the session's own may change how a capture renders: a temporary type
        # shadowing a built-in one, output settings.
        cur.execute(
            "CREATE DOMAIN pg_temp.money AS int; CREATE TEMP TABLE pg_class (x int); "
            "SET LOCAL quote_all_identifiers = on; SET LOCAL bytea_output = escape; "
            "SET LOCAL IntervalStyle = iso_8601; SET LOCAL TimeZone = 'Asia/Tokyo'"
        )
        post = _bytes(store, cur, decl)
        assert store.reused > 0
        assert post == full(db, decl, monkeypatch, cur)
        assert post != pre
        c.rollback()
    # The post-state was never committed: the store starts from the pre-capture again.
    again, want = both(store, db, decl, monkeypatch)
    assert store.reused > 0
    assert again == want


def test_a_change_another_session_commits_between_two_captures(
    example, rich, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = rich
    decl = load_bundle(example).declaration
    store = PostgisStore(db.connect, db.conn_id)
    with db.connect() as c, c.cursor() as cur:
        cur.execute("SELECT pg_current_xact_id()")
        _bytes(store, cur, decl)
        store.adopt(store._last)
        db.sql("CREATE INDEX owner_name ON app.owner (name); COMMENT ON COLUMN app.item.note IS NULL")
        post = _bytes(store, cur, decl)  # read committed: the next statement sees it
        assert post == full(db, decl, monkeypatch, cur)
        c.rollback()


def test_a_rolled_back_rename_is_not_kept(example, rich, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An update rolled back leaves the old row version, with its old xmin: a state captured
    with the new name must never become a starting point."""
    db = rich
    decl = load_bundle(example).declaration
    store = PostgisStore(db.connect, db.conn_id)
    with db.connect() as c, c.cursor() as cur:
        _bytes(store, cur, decl)
    with db.connect() as c, c.cursor() as cur:
        cur.execute("ALTER TABLE app.owner RENAME TO owners")
        _bytes(store, cur, decl)  # own writes: not adopted
        c.rollback()
    got, want = both(store, db, decl, monkeypatch)
    assert got == want


def test_a_new_process_starts_from_the_cache_file(example, rich, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = rich
    decl = load_bundle(example).declaration
    with db.connect() as c, c.cursor() as cur:
        _bytes(PostgisStore(db.connect, db.conn_id), cur, decl)
    files = list(cache.glob("pg-catalog-*.msgpack"))
    assert len(files) == 1 and files[0].stat().st_mode & 0o077 == 0
    db.sql("ALTER TABLE app.owner RENAME TO owners")
    store = PostgisStore(db.connect, db.conn_id)
    got, want = both(store, db, decl, monkeypatch)
    assert store.reused > 0
    assert got == want
    # A damaged or foreign file is ignored: the capture starts afresh and is still right.
    files[0].write_bytes(b"\x93not a state")
    db.sql("ALTER TABLE app.owners RENAME TO owner")
    store = PostgisStore(db.connect, db.conn_id)
    got, want = both(store, db, decl, monkeypatch)
    assert store.reused == 0
    assert got == want


def test_another_database_or_conn_id_never_shares_a_state(example, rich, pg_admin, cache: Path) -> None:
    db = rich
    decl = load_bundle(example).declaration
    store = PostgisStore(db.connect, db.conn_id)
    with db.connect() as c, c.cursor() as cur:
        _bytes(store, cur, decl)
        k1 = store._last.key if store._last else None
    other = PostgisStore(db.connect, db.conn_id + "_other")
    with db.connect() as c, c.cursor() as cur:
        _bytes(other, cur, decl)
    assert other.reused == 0 and other._last is not None and other._last.key != k1


def test_off_turns_reuse_off(example, rich, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    db = rich
    decl = load_bundle(example).declaration
    monkeypatch.setenv("KFM_CAPTURE_CACHE", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    store = PostgisStore(db.connect, db.conn_id)
    for _ in range(2):
        with db.connect() as c, c.cursor() as cur:
            _bytes(store, cur, decl)
        assert store.reused == 0
    assert not postgis_state.enabled() and not any(tmp_path.rglob("pg-catalog-*"))


def test_a_failure_while_reusing_falls_back_to_a_full_capture(
    example, rich, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the thread that builds the reused objects dies half-way."""
    import threading

    from airflow_kfm_migrations.stores.postgis import capture as postgis

    db = rich
    decl = load_bundle(example).declaration
    with db.connect() as c, c.cursor() as cur:
        _bytes(PostgisStore(db.connect, db.conn_id), cur, decl)
    real = postgis.trusted_baseline_object
    calls = []

    def dies_in_the_worker(*args):  # type: ignore[no-untyped-def]
        if threading.current_thread().name == "kfm-capture-reuse":
            calls.append(1)
            if len(calls) > 3:
                raise MemoryError("injected")
        return real(*args)

    monkeypatch.setattr(postgis, "trusted_baseline_object", dies_in_the_worker)
    store = PostgisStore(db.connect, db.conn_id)
    got, want = both(store, db, decl, monkeypatch)
    assert calls and store.reused == 0
    assert got == want


@pytest.mark.parametrize("commit", [True, False], ids=["commit", "rollback"])
def test_a_session_saves_the_state_it_ends_with_once(
    example, rich, cache: Path, monkeypatch: pytest.MonkeyPatch, commit: bool
) -> None:
    """A run's pre-baseline state is followed by its post-baseline's: the file is written once,
    when the session ends, with the post-state if the run committed and the pre-state if not."""
    db = rich
    bundle = load_bundle(example)
    store = PostgisStore(db.connect, db.conn_id)
    with store.session(bundle, "run-state") as s:
        s.baseline()
        with s.conn.cursor() as cur:
            cur.execute("CREATE INDEX owner_name ON app.owner (name)")
        s.baseline()
        s.commit() if commit else s.abort()
        assert not list(cache.glob("pg-catalog-*.msgpack"))
    assert len(list(cache.glob("pg-catalog-*.msgpack"))) == 1
    assert store._prior is not None and postgis_state.load(store._prior.key) == store._prior
    fresh = PostgisStore(db.connect, db.conn_id)  # as the next process does
    got, want = both(fresh, db, bundle.declaration, monkeypatch)
    assert fresh.reused > 0 and got == want
    assert (b'"index:app.owner_name"' in got) is commit
