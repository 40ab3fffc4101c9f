"""One settings object: the ``[kfm_migrations]`` options and the ``KFM_*`` variables.

Read when :func:`settings` is called, never at import time, so a test, a task or a shell
that changes a variable sees the change on the next call. A ``KFM_*`` variable wins over
the Airflow option of the same meaning; the Airflow side passes its config reader in
(``operators/``), so this module never imports Airflow.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REGISTRY_REL = Path("registry") / "migrations.v1.json"
OFF = frozenset({"off", "0", "false", "no", "none"})

OptionReader = Callable[[str], str | None]  # reads one option of [kfm_migrations], None if unset


@dataclass(frozen=True)
class Settings:
    # where things are (the Airflow side; the CLI takes them as arguments)
    bundles_root: Path
    registry_path: Path
    artifacts_root: str
    environment: str
    fail_on_drift: bool
    # gate thresholds (PostGIS)
    review_index_rows: int
    review_backfill_rows: int
    # backfills
    backfill_log_seconds: float
    backfill_lock_retries: int
    # input caps
    max_declaration_bytes: int
    max_script_bytes: int
    # locks that outlive their holder
    search_heartbeat_seconds: float
    search_lock_stale_seconds: float
    graph_lock_stale_seconds: float


DEFAULT_MAX_DECLARATION_BYTES = 256 * 1024
DEFAULT_MAX_SCRIPT_BYTES = 16 * 1024 * 1024


def _value(env: str, option: str | None, read_option: OptionReader | None, default: str) -> str:
    value = os.environ.get(env)
    if value:
        return value
    if option is not None and read_option is not None:
        got = read_option(option)
        if got:
            return got
    return default


def settings(read_option: OptionReader | None = None) -> Settings:
    """The settings in force now. ``read_option`` reads ``[kfm_migrations]`` (Airflow)."""

    def v(env: str, default: str, option: str | None = None) -> str:
        return _value(env, option, read_option, default)

    root = Path(v("KFM_BUNDLES_ROOT", "migrations", "bundles_root")).resolve()
    search_heartbeat = float(v("KFM_SEARCH_HEARTBEAT_SECONDS", "30"))
    registry = v("KFM_REGISTRY_PATH", "", "registry_path") or str(root / REGISTRY_REL)
    return Settings(
        bundles_root=root,
        registry_path=Path(registry),
        artifacts_root=v("KFM_ARTIFACTS_ROOT", "", "artifacts_root"),
        environment=v("KFM_ENVIRONMENT", "dev", "environment"),
        fail_on_drift=v("KFM_FAIL_ON_DRIFT", "false", "fail_on_drift").lower() in {"1", "true", "yes"},
        review_index_rows=int(v("KFM_REVIEW_INDEX_ROWS", "1000000")),
        review_backfill_rows=int(v("KFM_REVIEW_BACKFILL_ROWS", "100000")),
        backfill_log_seconds=float(v("KFM_BACKFILL_LOG_SECONDS", "10")),
        backfill_lock_retries=int(v("KFM_BACKFILL_LOCK_RETRIES", "8")),
        max_declaration_bytes=int(v("KFM_MAX_DECLARATION_BYTES", str(DEFAULT_MAX_DECLARATION_BYTES))),
        max_script_bytes=int(v("KFM_MAX_SCRIPT_BYTES", str(DEFAULT_MAX_SCRIPT_BYTES))),
        search_heartbeat_seconds=search_heartbeat,
        # A holder whose heartbeat missed three beats is dead (its process is gone or hung).
        search_lock_stale_seconds=float(v("KFM_SEARCH_LOCK_STALE_SECONDS", str(3 * search_heartbeat))),
        graph_lock_stale_seconds=float(v("KFM_GRAPH_LOCK_STALE_SECONDS", "3600")),
    )


def actor() -> str:
    """Who runs: ``KFM_ACTOR``, else ``<login>@cli`` (read only when a run needs it: a worker
    whose uid has no passwd entry can still run with ``KFM_ACTOR`` set)."""
    return os.environ.get("KFM_ACTOR") or f"{getpass.getuser()}@cli"


def cache_setting(variable: str) -> str | None:
    """The raw value of a cache variable (``KFM_PARSE_CACHE``, ``KFM_CAPTURE_CACHE``)."""
    return os.environ.get(variable)
