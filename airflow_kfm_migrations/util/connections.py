"""Airflow connection ids → connection parameters, without ever exposing the secret.

Inside Airflow the providers' hooks resolve connections (secrets backends, metadata DB).
The CLI resolves ``AIRFLOW_CONN_<ID>`` environment variables the same way Airflow
does (URI or JSON form) without importing Airflow, and falls back to Airflow's own
lookup when the variable is absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from airflow_kfm_migrations.errors import InputError, RefusedError


@dataclass(frozen=True)
class ConnectionInfo:
    conn_id: str
    conn_type: str | None
    host: str | None
    port: int | None
    login: str | None
    password: str | None = field(repr=False)
    schema: str | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __str__(self) -> str:  # never the host or the password
        return f"<connection {self.conn_id}>"


def env_var_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def _from_uri(conn_id: str, uri: str) -> ConnectionInfo:
    parts = urlsplit(uri)
    if not parts.scheme:
        raise InputError(env_var_name(conn_id), "-", "not a connection URI or JSON")
    conn_type = parts.scheme.replace("-", "_")
    if conn_type in {"postgresql", "postgres"}:
        conn_type = "postgres"
    extra: dict[str, Any] = {}
    if parts.query:
        q = dict(parse_qsl(parts.query, keep_blank_values=True))
        extra = json.loads(q["__extra__"]) if "__extra__" in q else q
    try:
        port = parts.port
    except ValueError:
        raise InputError(env_var_name(conn_id), "port", "not a number") from None
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=conn_type,
        host=unquote(parts.hostname) if parts.hostname else None,
        port=port,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        schema=unquote(parts.path.lstrip("/")) or None,
        extra=extra,
    )


def _from_json(conn_id: str, text: str) -> ConnectionInfo:
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(env_var_name(conn_id), "-", "invalid JSON connection") from None
    extra = d.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra) if extra.strip() else {}
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=d.get("conn_type"),
        host=d.get("host"),
        port=int(d["port"]) if d.get("port") not in (None, "") else None,
        login=d.get("login"),
        password=d.get("password"),
        schema=d.get("schema"),
        extra=extra,
    )


def resolve(conn_id: str) -> ConnectionInfo:
    raw = os.environ.get(env_var_name(conn_id))
    if raw:
        raw = raw.strip()
        return _from_json(conn_id, raw) if raw.startswith("{") else _from_uri(conn_id, raw)
    try:
        from airflow.sdk.bases.hook import BaseHook

        c = BaseHook.get_connection(conn_id)
    except Exception as exc:  # Airflow raises several kinds; none may leak details
        raise RefusedError(
            f"connection {conn_id!r} not found (set {env_var_name(conn_id)} or define it in Airflow): "
            f"{type(exc).__name__}"
        ) from None
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=c.conn_type,
        host=c.host,
        port=c.port,
        login=c.login,
        password=c.password,
        schema=c.schema,
        extra=c.extra_dejson,
    )
