"""PostGIS connections: connecting through an Airflow connection id, advisory-lock keys and
policy-safe database error messages."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.util.secret_scan import redact

Connect = Callable[[], Any]  # -> a new psycopg.Connection, which the caller closes


def connector_from_hook(conn_id: str) -> Connect:
    """Connections through Airflow's ``PostgresHook`` (secrets backends, metadata DB)."""

    def connect_hook() -> Any:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn: Any = PostgresHook(postgres_conn_id=conn_id).get_conn()
        conn.autocommit = False
        return conn

    return connect_hook


def connector_from_env(conn_id: str) -> Connect:
    """Connections from the parameters ``conn_id`` resolves to (``AIRFLOW_CONN_<ID>``), made
    with psycopg directly."""
    from airflow_kfm_migrations.util.connections import resolve

    info = resolve(conn_id)

    def connect_env() -> Any:
        import psycopg

        kwargs: dict[str, Any] = {
            "host": info.host or "localhost",
            "port": info.port or 5432,
            "user": info.login,
            "password": info.password,
            "dbname": info.schema or "postgres",
            "application_name": "kfm-migrations",
            "connect_timeout": int(info.extra.get("connect_timeout", 10)),
        }
        for k in ("sslmode", "sslrootcert", "sslcert", "sslkey"):
            if k in info.extra:
                kwargs[k] = info.extra[k]
        try:
            return psycopg.connect(**{k: v for k, v in kwargs.items() if v is not None})
        except psycopg.Error as exc:
            raise RefusedError(f"cannot connect to {conn_id}: {db_error(exc)}") from None

    return connect_env


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
