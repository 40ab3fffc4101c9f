"""Reaching Neo4j: a driver from an Airflow connection id, policy-safe error text, and the
small facts about this process that a lock records (host identity, PID liveness).

The ``neo4j`` driver is imported only when a connection is made, so that planning works
without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.util.secret_scan import redact

Connect = Callable[[], Any]  # -> neo4j.Driver
RunQuery = Callable[..., list[dict[str, Any]]]  # (query, **params) -> records as dicts
WriteQuery = Callable[..., Any]  # (query, **params) -> the result summary


# ------------------------------------------------------------------------ connections


def connector_from_hook(conn_id: str) -> tuple[Connect, str | None]:
    """Inside Airflow: the Neo4j provider's hook makes the driver; its ``schema`` names the
    database (None: the server's default)."""

    def connect_hook() -> Any:
        from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

        return Neo4jHook(conn_id).get_conn()

    database = None
    try:
        from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

        database = Neo4jHook(conn_id).get_connection(conn_id).schema or None
    except Exception:  # broad: the hook reports connection problems itself at connect time
        database = None
    return connect_hook, database


def connector_from_env(conn_id: str) -> tuple[Connect, str | None]:
    """Outside Airflow: the connection resolved as Airflow would (``AIRFLOW_CONN_<ID>``), with
    the provider's extras (``bolt_scheme``, ``encrypted``, ``certs_self_signed``)."""
    from airflow_kfm_migrations.util.connections import resolve

    info = resolve(conn_id)
    extra = info.extra or {}

    def connect_env() -> Any:
        import neo4j

        scheme = "bolt" if str(extra.get("bolt_scheme", "")).lower() in {"true", "1"} else "neo4j"
        if str(extra.get("encrypted", "")).lower() in {"true", "1"}:
            scheme += "+ssc" if str(extra.get("certs_self_signed", "")).lower() in {"true", "1"} else "+s"
        uri = f"{scheme}://{info.host or 'localhost'}:{info.port or 7687}"
        auth = (info.login, info.password or "") if info.login else None
        try:
            return neo4j.GraphDatabase.driver(uri, auth=auth, connection_timeout=10)
        except Exception as exc:  # broad: a bad URI or driver configuration, reported policy-safe
            raise RefusedError(f"cannot connect to {conn_id}: {neo_error(exc)}") from None

    return connect_env, info.schema or None


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
