"""PostGIS connections: advisory-lock keys and policy-safe database error messages."""

from __future__ import annotations

import hashlib

from airflow_kfm_migrations.util.secret_scan import redact


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
