"""PostGIS connections: connecting through an Airflow connection id (the postgres provider's
hook, for the CLI and the operators alike), advisory-lock keys and policy-safe database error
messages."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.util.secret_scan import redact

Connect = Callable[[], Any]  # -> a new psycopg.Connection, which the caller closes


# libpq parameters a connection gets when its extras do not set them (docs/connections.md):
# a dead host fails in 10 s instead of the OS's TCP timeout, and the sessions show up as
# ``kfm-migrations`` in pg_stat_activity unless the connection names itself.
DEFAULT_EXTRAS = {"connect_timeout": 10, "fallback_application_name": "kfm-migrations"}


def connector(conn_id: str) -> Connect:
    """Connections made by the postgres provider's ``PostgresHook`` from Airflow's connection
    ``conn_id`` (looked up now, connected on each call): every extra the hook honours
    (``sslmode``, ``sslrootcert``, ``options``, ``keepalives*``, ``iam``, ...) applies, in the
    CLI and in Airflow alike, plus :data:`DEFAULT_EXTRAS` where the connection sets none."""
    from airflow_kfm_migrations.util.connections import lookup

    conn = with_defaults(lookup(conn_id))

    def connect() -> Any:
        import psycopg
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        try:
            c: Any = PostgresHook(postgres_conn_id=conn_id, connection=conn).get_conn()
        except psycopg.Error as exc:
            raise RefusedError(f"cannot connect to {conn_id}: {db_error(exc)}") from None
        if not isinstance(c, psycopg.Connection):  # the hook picks psycopg2 under SQLAlchemy 1.x
            c.close()
            raise RefusedError(
                f"cannot connect to {conn_id}: the postgres provider made a psycopg2 connection "
                "(SQLAlchemy < 2 is installed); this store needs psycopg 3: pip install 'sqlalchemy>=2'"
            )
        c.autocommit = False
        return c

    return connect


def with_defaults(conn: Any) -> Any:
    """A copy of Airflow's ``Connection`` with :data:`DEFAULT_EXTRAS` added where the extras
    (or an ``options`` ``-c application_name=``) do not set them."""
    import json

    from airflow.sdk import Connection

    extra = dict(conn.extra_dejson)
    named = {"application_name", "fallback_application_name"} & set(extra) or "application_name" in str(
        extra.get("options") or ""
    )
    for key, value in DEFAULT_EXTRAS.items():
        if key == "fallback_application_name" and named:
            continue
        extra.setdefault(key, value)
    return Connection(
        conn_id=conn.conn_id,
        conn_type=conn.conn_type,
        description=conn.description,
        host=conn.host,
        schema=conn.schema,
        login=conn.login,
        password=conn.password,
        port=conn.port,
        extra=json.dumps(extra),
    )


def never_connect() -> Any:
    """The connector of a store that only plans."""
    raise RefusedError("this store instance only plans; it never connects")


def advisory_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def db_error(exc: BaseException) -> str:
    """A policy-safe message for a database error: SQLSTATE plus the server's primary text."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if primary:
        return redact(f"{sqlstate or 'error'}: {primary}")
    if type(exc).__name__ in {"OperationalError", "InterfaceError"}:
        return f"{sqlstate or 'connection'}: the connection to the server was lost or refused"
    return f"{sqlstate or type(exc).__name__}: database error"
