"""``kfm-migrations``: argument parsing and printing over the engine and the app layer."""

from __future__ import annotations

from airflow_kfm_migrations.cli.main import main

__all__ = ["main"]
