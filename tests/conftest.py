"""Shared fixtures. Store tests run against the real servers started by scripts/stores/.

With CI=true a missing server FAILS the test; locally it skips with the command to run.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "migrations"
PG_PORT = int(os.environ.get("KFM_PG_PORT", "55432"))
PG_USER = os.environ.get("KFM_PG_USER", "kfm")
PG_PASSWORD = os.environ.get("KFM_PG_PASSWORD", "kfm-local-only")


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
        """Schema + protected fingerprints, taken with the product's own baseline."""
        from airflow_kfm_migrations.declaration.bundle import load_bundle
        from airflow_kfm_migrations.stores.postgis.store import PostgisStore

        bundle = load_bundle(MIGRATIONS / "postgis" / "PG-MIG-2026-02-28-01")
        store = PostgisStore(lambda: self.connect(), self.conn_id)
        with self.connect() as c, c.cursor() as cur:
            b = store.capture(cur, bundle.declaration)
        return b.schema_fingerprint, b.protected_fingerprint


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
