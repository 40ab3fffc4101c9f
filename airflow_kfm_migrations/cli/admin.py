"""``kfm-migrations gc`` and ``kfm-migrations break-lock``: arguments and printing."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from airflow_kfm_migrations.app.admin import break_lock_migration, gc_migration
from airflow_kfm_migrations.cli.common import load_bundle_arg, report, run_options
from airflow_kfm_migrations.errors import InputError


def _parse_now(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError("--now", "-", f"not an ISO 8601 timestamp: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def cmd_gc(args: argparse.Namespace) -> int:
    now = _parse_now(args.now)
    bundle = load_bundle_arg(args.bundle)
    return report(gc_migration(bundle, run_options(args, dry_run=args.dry_run), now))


def cmd_break_lock(args: argparse.Namespace) -> int:
    reason = " ".join(args.reason.split())
    if not reason:
        raise InputError("--reason", "-", "give the reason for breaking the lock")
    bundle = load_bundle_arg(args.bundle)
    return report(break_lock_migration(bundle, run_options(args, dry_run=args.dry_run), reason, print))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle")
    p.add_argument("--conn-id", required=True, help="Airflow connection id (AIRFLOW_CONN_<ID> works)")
    p.add_argument("--env", choices=("dev", "stage", "prod"), default="dev")
    p.add_argument("--artifacts", help="folder of the receipts (default: the bundle)")
    p.add_argument("--quiet", action="store_true")


def register(subparsers: Any) -> None:
    """Add ``gc`` and ``break-lock`` to the ``kfm-migrations`` sub-commands."""
    g = subparsers.add_parser("gc", help="delete old search indices whose rollback retention expired")
    _common(g)
    g.add_argument("--now", help="ISO 8601 time to judge the retention against (default: now; UTC if naive)")
    g.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete and write nothing")
    g.set_defaults(func=cmd_gc)

    b = subparsers.add_parser("break-lock", help="remove a stale or stuck migration lock (search, graph)")
    _common(b)
    b.add_argument("--reason", required=True, help="why the lock is broken (kept in the receipt)")
    b.add_argument("--dry-run", action="store_true", help="show the holder; remove and write nothing")
    b.set_defaults(func=cmd_break_lock)
