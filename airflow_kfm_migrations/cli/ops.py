"""``kfm-migrations status``, ``history`` and ``migrate``: arguments and printing.

Each prints a rich table for people, JSON for machines (``--format json``) or a Markdown
table for pull requests (``--format markdown``). The work is in ``app/status.py``,
``app/history.py`` and ``app/migrate.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.cli.common import console, default_actor, stopped_by_signals
from airflow_kfm_migrations.kinds import KINDS
from airflow_kfm_migrations.util.cancel import Cancellation
from airflow_kfm_migrations.util.secret_scan import redact

FORMATS = ("table", "json", "markdown")
ENVIRONMENTS = ("dev", "stage", "prod")


def _short(digest: str | None, n: int = 12) -> str:
    return digest[:n] if digest else "-"


def _markdown(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return (text or " ").replace("|", "\\|").replace("\n", " ")

    out = [f"**{cell(title)}**", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _print(fmt: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], doc: dict[str, Any]) -> None:
    if fmt == "json":
        print(redact(json.dumps(doc, indent=2)))
    elif fmt == "markdown":
        print(redact(_markdown(title, columns, rows)))
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(escape(redact(c)) for c in row))
        console().print(table)


def _root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    from airflow_kfm_migrations.config import settings

    return settings().bundles_root


# -------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.app.status import status
    from airflow_kfm_migrations.config import settings

    env = args.env or settings().environment
    rep = status(
        _root(args.root),
        args.conn_id,
        env,
        kind=args.type,
        drift=not args.no_drift,
        fail_on_drift=args.fail_on_drift,
    )
    drift_text = {None: "-", False: "no", True: "DRIFT"}
    rows = [
        (
            r.migration_id,
            r.registry_status,
            r.state,
            r.applied_at or "-",
            _short(r.receipt_digest),
            r.checksums if r.checksums != "changed" else "CHANGED: " + ", ".join(r.changed_files),
            "no (changed by later runs)" if r.drift is False and r.drift_note else drift_text[r.drift],
            "yes" if r.pending else "no",
        )
        for r in rep.rows
    ]
    title = f"status of {rep.kind} on {rep.conn_id} ({rep.environment})"
    columns = ("migration", "registry", "ledger", "at", "receipt", "checksums", "drift", f"pending ({env})")
    _print(args.format, title, columns, rows, rep.as_json())
    return rep.exit_code


# ------------------------------------------------------------------- history


def cmd_history(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.app.history import history

    rep = history(args.conn_id, args.migration_id, kind=args.type)
    rows = [
        (e.applied_at, e.migration_id, e.operation, e.status, e.actor or "-", _short(e.receipt_digest), e.run_id[:12])
        for e in rep.entries
    ]
    title = f"ledger of {rep.kind} on {rep.conn_id}" + (f" for {rep.migration_id}" if rep.migration_id else "")
    _print(
        args.format, title, ("at", "migration", "operation", "outcome", "actor", "receipt", "run"), rows, rep.as_json()
    )
    return 0


# ------------------------------------------------------------------- migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.app.migrate import MigrateRow, migrate
    from airflow_kfm_migrations.engine.run import RunOptions

    def log(line: str) -> None:
        sys.stderr.write(redact(line) + "\n")

    def progress(row: MigrateRow) -> None:
        if not args.quiet:
            took = f" in {row.seconds:.2f} s" if row.seconds is not None else ""
            why = f": {row.reason}" if row.reason and row.outcome != "succeeded" else ""
            log(f"{row.migration_id}: {row.outcome}{took}{why}")

    opts = RunOptions(
        conn_id=args.conn_id,
        environment=args.env,
        dry_run=args.dry_run,
        actor=default_actor(),
        log=log if args.verbose else (lambda _line: None),
        cancel=Cancellation(),
    )
    with stopped_by_signals(opts):  # a stopped run fails closed, and the series stops there
        rep = migrate(
            Path(args.root),
            opts,
            to=args.to,
            kind=args.type,
            artifacts_root=Path(args.artifacts) if args.artifacts else None,
            on_result=progress,
        )
    rows = [
        (
            str(i),
            r.migration_id,
            r.outcome,
            f"{r.seconds:.2f}" if r.seconds is not None else "-",
            r.receipt or "-",
            r.reason or "",
        )
        for i, r in enumerate(rep.rows, 1)
    ]
    what = "dry run" if rep.dry_run else "migrate"
    title = f"{what}: {rep.kind} on {rep.conn_id} ({rep.environment}), {len(rep.rows)} pending"
    if args.format != "table" or rows:
        _print(args.format, title, ("#", "migration", "outcome", "seconds", "receipt", "reason"), rows, rep.as_json())
    else:
        print(f"nothing to migrate: no pending {rep.kind} migration on {rep.conn_id} in {rep.environment}")
    return rep.exit_code


# ------------------------------------------------------------------- parsers


def register(subparsers: Any) -> None:
    """Add ``status``, ``history`` and ``migrate`` to the ``kfm-migrations`` sub-commands."""
    s = subparsers.add_parser("status", help="each registry entry of the store's kind as the store sees it")
    s.add_argument("root", nargs="?", help="migrations root (default: KFM_BUNDLES_ROOT, else ./migrations)")
    s.add_argument("--conn-id", required=True, help="Airflow connection id (AIRFLOW_CONN_<ID> works)")
    s.add_argument("--env", choices=ENVIRONMENTS, help="environment of 'pending' (default: KFM_ENVIRONMENT, else dev)")
    s.add_argument("--type", choices=tuple(KINDS), help="the store kind (default: from the registry or connection)")
    s.add_argument("--format", choices=FORMATS, default="table")
    s.add_argument("--fail-on-drift", action="store_true", help="exit 1 when an applied migration drifted")
    s.add_argument("--no-drift", action="store_true", help="do not take baselines to judge drift")
    s.set_defaults(func=cmd_status)

    h = subparsers.add_parser("history", help="the store's ledger, newest first")
    h.add_argument("migration_id", nargs="?", help="only this migration's entries")
    h.add_argument("--conn-id", required=True, help="Airflow connection id (AIRFLOW_CONN_<ID> works)")
    h.add_argument("--type", choices=tuple(KINDS), help="the store kind (default: from the id or connection)")
    h.add_argument("--format", choices=FORMATS, default="table")
    h.set_defaults(func=cmd_history)

    m = subparsers.add_parser("migrate", help="apply the store's pending migrations in order (one connection)")
    m.add_argument("root", help="migrations root (holds registry/migrations.v1.json)")
    m.add_argument("--conn-id", required=True, help="Airflow connection id (AIRFLOW_CONN_<ID> works)")
    m.add_argument("--env", required=True, choices=ENVIRONMENTS)
    m.add_argument("--to", help="stop after this migration (in apply order)")
    m.add_argument("--dry-run", action="store_true", help="list what would run and what preflight refuses; run nothing")
    m.add_argument("--type", choices=tuple(KINDS), help="the store kind (default: from the registry or connection)")
    m.add_argument("--artifacts", help="artifacts root: each migration writes into DIR/<id> (default: its bundle)")
    m.add_argument("--format", choices=FORMATS, default="table")
    m.add_argument("--verbose", action="store_true", help="log every check of every run (stderr)")
    m.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    m.set_defaults(func=cmd_migrate)
