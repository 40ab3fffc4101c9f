"""Airflow connection ids → Airflow ``Connection`` objects, without ever exposing the secret.

There is one way to reach a store, for the CLI and for the operators alike: the connection is
looked up through Airflow's public ``airflow.sdk.BaseHook.get_connection`` and the client is
made by the official provider's hook from it (``stores/*/client.py``). Outside a task,
Airflow's lookup reads ``AIRFLOW_CONN_<ID>`` variables (URI or JSON) and the secrets
backends configured in ``[secrets] backend``, without the metadata database; inside a task
it asks the task's supervisor, as every hook does. Airflow is imported only when a
connection is looked up, so ``validate`` and ``plan`` never import it.

docs/connections.md lists the extras each store honours (the hooks' own) and the old names
this package read before (deprecated).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from airflow_kfm_migrations.errors import InputError, RefusedError

log = logging.getLogger("airflow_kfm_migrations.connections")


@dataclass(frozen=True)
class ConnectionInfo:
    """The fields of an Airflow connection; ``conn`` is Airflow's own ``Connection``."""

    conn_id: str
    conn_type: str | None
    host: str | None
    port: int | None
    login: str | None
    password: str | None = field(repr=False)
    schema: str | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    conn: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:  # never the host or the password
        return f"<connection {self.conn_id}>"


class _Shell:
    cli = False  # set by :func:`in_cli`


def in_cli() -> None:
    """Called by the CLI before it runs a command. Airflow, once a lookup imports it, sends
    every log line at INFO and up to stdout; the CLI's stdout carries its results (JSON with
    ``--format json``), so in the CLI those lines go to stderr, and only this package's
    warnings and everyone's errors."""
    _Shell.cli = True
    if "airflow" not in sys.modules:  # Airflow 3.1 logs at INFO while it is being imported
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


class _CliLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        return record.levelno >= logging.WARNING and record.name.startswith("airflow_kfm_migrations")


def _logs_to_stderr() -> None:
    for h in logging.getLogger().handlers:
        if type(h) is not logging.StreamHandler:
            continue
        if h.stream is not sys.stderr:
            try:
                h.setStream(sys.stderr)
            except ValueError:  # the old stream is closed already (it cannot be flushed)
                h.stream = sys.stderr
        if not any(isinstance(f, _CliLines) for f in h.filters):
            h.addFilter(_CliLines())


def env_var_name(conn_id: str) -> str:
    return f"AIRFLOW_CONN_{conn_id.upper()}"


def lookup(conn_id: str) -> Any:
    """Airflow's ``Connection`` for ``conn_id`` (environment, secrets backends, or the task's
    supervisor). RefusedError when it is not defined; InputError when ``AIRFLOW_CONN_<ID>`` is
    set but Airflow cannot read it. No message carries the connection's value."""
    try:
        from airflow.sdk import BaseHook
    except ImportError:  # pragma: no cover - apache-airflow is a dependency of this package
        raise RefusedError(f"connection {conn_id!r}: Airflow is not installed; pip install apache-airflow") from None
    if _Shell.cli:
        _logs_to_stderr()
    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # broad: Airflow raises several kinds; none may leak details
        name = env_var_name(conn_id)
        if os.environ.get(name, "").strip():
            reason = f"Airflow cannot read it as a connection URI or JSON ({type(exc).__name__})"
            raise InputError(name, "-", reason) from None
        raise RefusedError(
            f"connection {conn_id!r} not found (set {name} or define it in Airflow): {type(exc).__name__}"
        ) from None


def resolve(conn_id: str) -> ConnectionInfo:
    """The connection ``conn_id`` names, looked up by Airflow (see :func:`lookup`)."""
    c = lookup(conn_id)
    return ConnectionInfo(
        conn_id=conn_id,
        conn_type=c.conn_type,
        host=c.host,
        port=c.port,
        login=c.login,
        password=c.password,
        schema=c.schema,
        extra=dict(c.extra_dejson),
        conn=c,
    )


def deprecated_extra(info: ConnectionInfo, old: str, instead: str) -> None:
    """One warning line when the connection still sets an extra this package used to read."""
    if old in info.extra:
        log.warning("connection %s: extra %r is deprecated and no longer read; %s", info.conn_id, old, instead)


def truthy(v: Any) -> bool:
    """An extra's boolean value, as the providers read it (``true``/``1``/``yes``/``on``)."""
    return v is True or (isinstance(v, str) and v.strip().lower() in {"1", "true", "yes", "on", "t", "y"})
