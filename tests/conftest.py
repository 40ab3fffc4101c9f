"""Shared fixtures. Store tests run against the real servers started by scripts/stores/.

With CI=true a missing server FAILS the test; locally it skips with the command to run.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"
PG_PORT = int(os.environ.get("KFM_PG_PORT", "55432"))
PG_USER = os.environ.get("KFM_PG_USER", "kfm")
PG_PASSWORD = os.environ.get("KFM_PG_PASSWORD", "kfm-local-only")
PG_DUMP = os.environ.get("KFM_PG_DUMP", "/usr/lib/postgresql/15/bin/pg_dump")
LEDGER_SCHEMA = "kfm_governance"


@pytest.fixture(scope="session", autouse=True)
def _capture_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Catalog states the PostGIS captures save (postgis_state.py) go to a directory of this
    test session, never to the user's cache; commands the tests start inherit it."""
    old = os.environ.get("KFM_CAPTURE_CACHE")
    os.environ["KFM_CAPTURE_CACHE"] = str(tmp_path_factory.mktemp("capture-cache"))
    yield
    if old is None:
        os.environ.pop("KFM_CAPTURE_CACHE", None)
    else:
        os.environ["KFM_CAPTURE_CACHE"] = old


def server_missing(name: str, how: str) -> None:
    message = f"{name} is not running; start it with `{how}`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing server fails the run)", pytrace=False)
    pytest.skip(message)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def pg_dsn(dbname: str) -> str:
    return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{PG_PORT}/{dbname}"


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[object]:
    if not port_open(PG_PORT):
        server_missing("PostgreSQL/PostGIS", "bash scripts/stores/postgis.sh start")
    import psycopg

    conn = psycopg.connect(pg_dsn("postgres"), autocommit=True)
    yield conn
    conn.close()


class PgDatabase:
    """A throwaway database cloned from the PostGIS template, reachable by an Airflow conn id."""

    def __init__(self, admin: object, name: str) -> None:
        self.admin = admin
        self.name = name
        self.conn_id = f"kfm_test_{name}"
        self.dsn = pg_dsn(name)

    def connect(self, **kw: object) -> object:
        import psycopg

        return psycopg.connect(self.dsn, **kw)

    def sql(self, text: str, params: object = None) -> list[tuple]:
        with self.connect(autocommit=True) as c, c.cursor() as cur:
            cur.execute(text, params)
            return cur.fetchall() if cur.description else []

    def fingerprint(self) -> tuple[str, str]:
        """Schema + protected fingerprints, taken with the product's own capture. Use it only
        where a test checks those values; "the store is unchanged" is :meth:`state`."""
        from airflow_kfm_migrations.declaration.bundle import load_bundle
        from airflow_kfm_migrations.stores.postgis.store import PostgisStore

        bundle = load_bundle(MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01")
        store = PostgisStore(lambda: self.connect(), self.conn_id)
        with self.connect() as c, c.cursor() as cur:
            b = store.capture(cur, bundle.declaration)
        return b.schema_fingerprint, b.protected_fingerprint

    def state(self, *, exclude_schemas: tuple[str, ...] = ()) -> StoreState:
        """The database as an oracle independent of the product sees it: ``pg_dump
        --schema-only --create`` plus an md5 of every ordinary table's rows (the governance
        schema included) plus what pg_dump leaves out at database and cluster level. Two
        equal states mean the store is unchanged. ``exclude_schemas`` leaves schemas out of
        both the dump and the row digests (a rollback test leaves its ledger out this way)."""
        return StoreState(
            schema=self._schema_dump(exclude_schemas),
            rows=self._row_digests(exclude_schemas),
            cluster=self._cluster_facts(),
        )

    def _schema_dump(self, exclude_schemas: tuple[str, ...]) -> str:
        cmd = [PG_DUMP, "--schema-only", "--create", "--no-password",
               "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", PG_USER, "-d", self.name]
        cmd += [f"--exclude-schema={s}" for s in exclude_schemas]
        out = subprocess.run(
            cmd, env={**os.environ, "PGPASSWORD": PG_PASSWORD}, capture_output=True, text=True, check=True, timeout=300
        ).stdout
        return _VOLATILE_DUMP_LINES.sub("", out)

    def _row_digests(self, exclude_schemas: tuple[str, ...]) -> dict[str, tuple[int, str | None]]:
        from psycopg import IsolationLevel, sql

        with self.connect() as c, c.cursor() as cur:
            c.isolation_level = IsolationLevel.REPEATABLE_READ
            cur.execute(
                "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)' AND NOT n.nspname = ANY(%s) "
                "ORDER BY 1, 2",
                (list(exclude_schemas),),
            )
            tables = cur.fetchall()
            out = {}
            for schema, table in tables:
                cur.execute(
                    sql.SQL("SELECT count(*), md5(string_agg(t::text, '' ORDER BY t::text)) FROM {}.{} t").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    )
                )
                out[f"{schema}.{table}"] = cur.fetchone()
            return out

    def _cluster_facts(self) -> dict[str, list[tuple]]:
        """What pg_dump of one database does not show: roles, role settings, the other
        databases, tablespaces, replication, large objects and ALTER SYSTEM. Roles and
        databases that other tests of this session create for themselves are left out
        (``kfm_state_t_*``, ``t_*``): they come and go while this test runs."""
        mine = "(datname = current_database() OR datname !~ '^t_[0-9a-f]{12}$')"
        my_roles = "(rolname = 'kfm_state_' || current_database() OR rolname !~ '^kfm_state_t_[0-9a-f]{12}(_2)?$')"
        queries = {
            "roles": f"SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, "
            f"rolreplication, rolbypassrls, rolconnlimit, rolvaliduntil::text, "
            f"shobj_description(oid, 'pg_authid') FROM pg_catalog.pg_roles WHERE {my_roles} ORDER BY 1",
            "role_members": f"SELECT r.rolname, u.rolname, m.admin_option FROM pg_catalog.pg_auth_members m "
            f"JOIN pg_catalog.pg_roles r ON r.oid = m.roleid JOIN pg_catalog.pg_roles u ON u.oid = m.member "
            f"WHERE {my_roles.replace('rolname', 'r.rolname')} AND {my_roles.replace('rolname', 'u.rolname')} "
            f"ORDER BY 1, 2",
            "role_settings": "SELECT COALESCE(r.rolname, '*'), COALESCE(d.datname, '*'), s.setconfig::text "
            "FROM pg_catalog.pg_db_role_setting s LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole "
            "LEFT JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase "
            f"WHERE (d.datname IS NULL OR {mine.replace('datname', 'd.datname')}) ORDER BY 1, 2, 3",
            "databases": f"SELECT datname, pg_get_userbyid(datdba), datacl::text, datconnlimit, datallowconn, "
            f"datistemplate, shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database "
            f"WHERE {mine} ORDER BY 1",
            "tablespaces": "SELECT spcname, pg_get_userbyid(spcowner), spcacl::text, spcoptions::text "
            "FROM pg_catalog.pg_tablespace ORDER BY 1",
            "replication_slots": "SELECT slot_name, plugin, slot_type, database FROM pg_catalog.pg_replication_slots "
            "WHERE NOT temporary ORDER BY 1",
            "replication_origins": "SELECT roname FROM pg_catalog.pg_replication_origin ORDER BY 1",
            "large_objects": "SELECT m.oid::bigint, pg_get_userbyid(m.lomowner), m.lomacl::text, "
            "(SELECT md5(string_agg(p.data, ''::bytea ORDER BY p.pageno)) FROM pg_catalog.pg_largeobject p "
            "WHERE p.loid = m.oid) FROM pg_catalog.pg_largeobject_metadata m ORDER BY 1",
            "alter_system": "SELECT name, setting FROM pg_catalog.pg_file_settings "
            "WHERE sourcefile LIKE '%postgresql.auto.conf' ORDER BY seqno",
            # pg_dump leaves the system schemas out: what was added to them.
            "system_schema_objects": "SELECT 'class', c.oid::regclass::text FROM pg_catalog.pg_class c "
            "WHERE c.oid >= 16384 AND c.relnamespace IN ('pg_catalog'::regnamespace, "
            "'information_schema'::regnamespace) UNION ALL SELECT 'proc', p.oid::regprocedure::text "
            "FROM pg_catalog.pg_proc p WHERE p.oid >= 16384 AND p.pronamespace IN ('pg_catalog'::regnamespace, "
            "'information_schema'::regnamespace) UNION ALL SELECT 'type', t.oid::regtype::text "
            "FROM pg_catalog.pg_type t WHERE t.oid >= 16384 AND t.typnamespace IN ('pg_catalog'::regnamespace, "
            "'information_schema'::regnamespace) ORDER BY 1, 2",
        }
        from psycopg import IsolationLevel

        with self.connect() as c, c.cursor() as cur:
            c.isolation_level = IsolationLevel.REPEATABLE_READ
            out = {}
            for name, q in queries.items():
                cur.execute(q)
                out[name] = cur.fetchall()
            return out

    def ledger_schema_exists(self) -> bool:
        return self.sql("SELECT to_regnamespace(%s) IS NOT NULL", (LEDGER_SCHEMA,))[0][0]


# pg_dump's header names its own version, and 15.14+ brackets the dump with \restrict
# lines holding a random key: neither says anything about the database.
_VOLATILE_DUMP_LINES = re.compile(r"^(-- Dumped (from|by) .*|\\(un)?restrict .*)\n", re.M)


@dataclass(frozen=True)
class StoreState:
    """What :meth:`PgDatabase.state` saw; equal states mean an unchanged store.

    The other databases are compared where both states have them: other work on the server
    creates and drops databases all the time, and no run can (CREATE and DROP DATABASE cannot
    run in a transaction, and the plan refuses them in either mode). A database being dropped
    (``datconnlimit`` -2, set in place) counts as gone."""

    schema: str
    rows: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    cluster: dict[str, list[tuple]] = field(default_factory=dict)

    def steady(self, other: StoreState) -> StoreState:
        """This state, its databases limited to those ``other`` has too."""
        def live(facts: dict[str, list[tuple]]) -> list[tuple]:
            return [d for d in facts.get("databases", []) if d[3] != -2]

        names = {d[0] for d in live(other.cluster)}
        cluster = dict(self.cluster)
        if "databases" in cluster:
            cluster["databases"] = [d for d in live(self.cluster) if d[0] in names]
        return StoreState(self.schema, self.rows, cluster)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoreState):
            return NotImplemented
        a, b = self.steady(other), other.steady(self)
        return (a.schema, a.rows, a.cluster) == (b.schema, b.rows, b.cluster)


def make_db(admin: object, monkeypatch: pytest.MonkeyPatch | None = None) -> PgDatabase:
    name = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f'CREATE DATABASE "{name}" TEMPLATE kfm_template')  # type: ignore[attr-defined]
    db = PgDatabase(admin, name)
    os.environ[f"AIRFLOW_CONN_{db.conn_id.upper()}"] = db.dsn
    return db


def drop_db(admin: object, db: PgDatabase) -> None:
    admin.execute(  # type: ignore[attr-defined]
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db.name,)
    )
    admin.execute(f'DROP DATABASE IF EXISTS "{db.name}"')  # type: ignore[attr-defined]
    os.environ.pop(f"AIRFLOW_CONN_{db.conn_id.upper()}", None)


PARCELS_SQL = """
CREATE TABLE public.parcels (id serial PRIMARY KEY, name text NOT NULL, geom geometry(Polygon, 4326));
INSERT INTO public.parcels (name, geom)
SELECT 'parcel-' || g, ST_MakeEnvelope(g, g, g + 1, g + 1, 4326) FROM generate_series(1, 200) g;
CREATE TABLE public.authority_sites (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO public.authority_sites VALUES (1, 'Fort Larned'), (2, 'Pawnee Rock');
CREATE SCHEMA governance;
CREATE TABLE governance.rules (id int PRIMARY KEY, rule text);
INSERT INTO governance.rules VALUES (1, 'no raw coordinates');
CREATE SCHEMA audit;
CREATE TABLE audit.events (id bigserial PRIMARY KEY, what text);
"""


@pytest.fixture
def pgdb(pg_admin: object) -> Iterator[PgDatabase]:
    """A fresh database per test with the example's parcels world in it."""
    db = make_db(pg_admin)
    db.sql(PARCELS_SQL)
    yield db
    drop_db(pg_admin, db)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A private copy of the contract's PostGIS example bundle (tests never write into the repo)."""
    src = MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01"
    dst = tmp_path / "postgis" / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("baselines", "diffs", "receipts"))
    return dst


S3_PORT = int(os.environ.get("KFM_S3_PORT", "9380"))
S3_ACCESS_KEY = os.environ.get("KFM_S3_ACCESS_KEY", "kfm-local")
S3_SECRET_KEY = os.environ.get("KFM_S3_SECRET_KEY", "kfm-local-only")
S3_CONN_ID = "kfm_s3"


def s3_conn_uri(endpoint: str, access_key: str = S3_ACCESS_KEY, secret_key: str = S3_SECRET_KEY) -> str:
    """An Airflow ``aws`` connection to an S3-compatible server: the keys as login and
    password, the server as ``endpoint_url`` in the extra (amazon provider)."""
    from urllib.parse import quote

    return (
        f"aws://{quote(access_key, safe='')}:{quote(secret_key, safe='')}@/"
        f"?endpoint_url={quote(endpoint, safe='')}&region_name=us-east-1"
    )


@dataclass(frozen=True)
class S3Bucket:
    """A fresh bucket on the local s3proxy (scripts/stores/s3proxy.sh) for one test, reachable
    as ``s3://kfm_s3@<bucket>/<prefix>/...`` through the Airflow connection ``kfm_s3``
    (``AIRFLOW_CONN_KFM_S3`` is set for the test and inherited by commands it starts)."""

    endpoint: str
    bucket: str
    prefix: str
    access_key: str = S3_ACCESS_KEY
    secret_key: str = S3_SECRET_KEY
    conn_id: str = S3_CONN_ID

    @property
    def conn_uri(self) -> str:
        return s3_conn_uri(self.endpoint, self.access_key, self.secret_key)

    def url(self, *parts: str) -> str:
        """``s3://kfm_s3@<bucket>/<prefix>[/parts...]``: what artifacts_root or verify takes."""
        return "/".join([f"s3://{self.conn_id}@{self.bucket}", self.prefix, *parts])

    def client(self) -> object:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )

    def keys(self, under: str = "") -> list[str]:
        """Every object key below ``<prefix>/<under>``, relative to the prefix, sorted."""
        start = f"{self.prefix}/{under}".rstrip("/") + "/"
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)  # type: ignore[attr-defined]
        return sorted(o["Key"][len(self.prefix) + 1:] for page in pages for o in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        """One object's bytes, ``key`` relative to the prefix."""
        obj = self.client().get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")  # type: ignore[attr-defined]
        return obj["Body"].read()


@pytest.fixture(scope="session")
def s3_server() -> str:
    """The local S3-compatible server's endpoint URL (fails under CI=true when it is down)."""
    if not port_open(S3_PORT):
        server_missing("s3proxy (S3-compatible store)", "bash scripts/stores/s3proxy.sh start")
    return f"http://127.0.0.1:{S3_PORT}"


@pytest.fixture
def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket and prefix per test on the local s3proxy, with ``AIRFLOW_CONN_KFM_S3``
    pointing at it; the bucket and everything in it are removed afterwards."""
    store = S3Bucket(endpoint=s3_server, bucket="kfm-t-" + uuid.uuid4().hex[:12], prefix="run-" + uuid.uuid4().hex[:8])
    client = store.client()
    client.create_bucket(Bucket=store.bucket)  # type: ignore[attr-defined]
    monkeypatch.setenv(f"AIRFLOW_CONN_{store.conn_id.upper()}", store.conn_uri)
    yield store
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket)  # type: ignore[attr-defined]
    for page in pages:
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=store.bucket, Key=obj["Key"])  # type: ignore[attr-defined]
    client.delete_bucket(Bucket=store.bucket)  # type: ignore[attr-defined]


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """``state() == before`` failures show what changed: a diff of the dumps, the tables
    whose rows differ and the cluster facts that differ."""
    if op != "==" or not (isinstance(left, StoreState) and isinstance(right, StoreState)):
        return None
    left, right = left.steady(right), right.steady(left)
    import difflib

    out = ["the store's state differs:"]
    if left.schema != right.schema:
        diff = difflib.unified_diff(left.schema.splitlines(), right.schema.splitlines(), lineterm="", n=1)
        out.append("schema (pg_dump):")
        out.extend("  " + line for line in list(diff)[2:60])
    for table in sorted(left.rows.keys() | right.rows.keys()):
        if left.rows.get(table) != right.rows.get(table):
            out.append(f"rows of {table}: {left.rows.get(table)} != {right.rows.get(table)}")
    for fact in sorted(left.cluster.keys() | right.cluster.keys()):
        if left.cluster.get(fact) != right.cluster.get(fact):
            out.append(f"cluster {fact}: {left.cluster.get(fact)} != {right.cluster.get(fact)}")
    return out
