"""Reaching Neo4j: a driver from an Airflow connection id, policy-safe error text, and the
small facts about this process that a lock records (host identity, PID liveness).

The ``neo4j`` driver is imported only when a connection is made, so that planning works
without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from airflow_kfm_migrations.errors import InputError, RefusedError
from airflow_kfm_migrations.util.secret_scan import redact

Connect = Callable[[], Any]  # -> neo4j.Driver
RunQuery = Callable[..., list[dict[str, Any]]]  # (query, **params) -> records as dicts
WriteQuery = Callable[..., Any]  # (query, **params) -> the result summary


# ------------------------------------------------------------------------ connections


# The Neo4j hook's boolean extras (it tests them for truth, so the string "false" is true).
HOOK_FLAGS = ("neo4j_scheme", "encrypted", "certs_self_signed", "certs_trusted_ca")


def connector(conn_id: str) -> tuple[Connect, str | None]:
    """Drivers for Airflow's connection ``conn_id`` (looked up now; a new driver on each call),
    in the CLI and in Airflow alike, as the Neo4j provider's ``Neo4jHook.get_conn`` makes
    them: the URI from the hook's own ``get_uri`` (``bolt://`` unless the extra
    ``neo4j_scheme`` is true; ``+ssc`` for ``certs_self_signed``, ``+s`` for
    ``certs_trusted_ca``), ``encrypted`` from the extra for the plain schemes, and the login
    and password when both are set. (``get_conn`` itself also logs the URI at INFO, which
    would land in the CLI's stdout.) The connection's ``schema`` names the database (None: the
    server's default)."""
    from airflow_kfm_migrations.util.connections import deprecated_extra, env_var_name, resolve

    info = resolve(conn_id)
    deprecated_extra(
        info, "bolt_scheme", "the Neo4j provider connects with bolt:// unless the extra neo4j_scheme is true"
    )
    for key in HOOK_FLAGS:
        value = info.extra.get(key)
        if isinstance(value, str) and value.strip().lower() in {"", "false", "0", "no", "off", "f", "n"}:
            # A URI's query gives strings, and the hook takes any non-empty one as true.
            raise InputError(
                env_var_name(conn_id),
                key,
                f"{value!r} would be read as true: leave the extra out, or give "
                '{"' + key + '": false} as JSON (?__extra__={...} or the JSON form of the connection)',
            )
    conn = info.conn

    def connect() -> Any:
        from urllib.parse import urlsplit

        import neo4j
        from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

        try:
            uri = Neo4jHook(conn_id).get_uri(conn)
            kwargs: dict[str, Any] = {}
            if urlsplit(uri).scheme in ("bolt", "neo4j"):
                kwargs["encrypted"] = conn.extra_dejson.get("encrypted", False)
            auth = (conn.login, conn.password) if conn.login is not None and conn.password is not None else None
            return neo4j.GraphDatabase.driver(uri, auth=auth, **kwargs)
        except Exception as exc:  # broad: a bad URI or driver configuration, reported policy-safe
            raise RefusedError(f"cannot connect to {conn_id}: {neo_error(exc)}") from None

    return connect, info.schema or None


# ----------------------------------------------------------------------------- errors


_VALUE = re.compile(r"""\s=\s*('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s,)]+)""")


def mask_values(text: str) -> str:
    """``text`` with property values (`` = 'x'``) masked."""
    return _VALUE.sub(" = <value>", text)


def neo_error(exc: BaseException) -> str:
    """A policy-safe message: the Neo4j status code and the first line of the server's text,
    with property values (`` = 'x'``) masked. Driver errors (no status code) may name hosts:
    only their type is reported."""
    code = getattr(exc, "code", None)
    name = type(exc).__name__
    if not code:
        return f"{name}: the connection to the server was lost or refused"
    message = str(getattr(exc, "message", None) or "").strip()
    first = message.splitlines()[0][:300] if message else "database error"
    return redact(f"{code}: {mask_values(first)}")


# -------------------------------------------------------------------------- durations


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|h|d)?\s*$", re.I)


def seconds(interval: str) -> float | None:
    """A declared timeout (``"30s"``, ``"5min"``, ``"1500"``) in seconds; None when unreadable."""
    m = _INTERVAL.match(interval or "")
    if not m:
        return None
    unit = (m.group(2) or "ms").lower()  # PostgreSQL's default unit is ms
    mult = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "h": 3600, "d": 86400}[unit]
    return float(m.group(1)) * mult
    return True
