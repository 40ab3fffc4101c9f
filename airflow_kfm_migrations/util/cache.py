"""Where the caches live: the declaration-facts cache (DAG parsing) and the PostGIS
capture state. Each has a variable that names a directory or turns it ``off``."""

from __future__ import annotations

import os
from pathlib import Path

from airflow_kfm_migrations.config import OFF, cache_setting


def cache_dir(variable: str = "KFM_PARSE_CACHE") -> Path | None:
    """The cache directory ``variable`` names, the default one, or None when it says ``off``."""
    value = (cache_setting(variable) or "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "airflow-kfm-migrations"
