"""``kfm-migrations``: the command line over the same core the Airflow operators use.

Exit codes: 0 ok (including no-op), 1 refused or failed closed, 2 bad usage or
unreadable/invalid input. User mistakes are one line ``file: field: reason``; a
traceback only ever means a bug in this tool.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from airflow_kfm_migrations import __version__
from airflow_kfm_migrations.cli.admin import register as register_admin
from airflow_kfm_migrations.cli.common import (
    console,
    default_actor,
    load_bundle_arg,
    report,
    run_options,
    stopped_by_signals,
)
from airflow_kfm_migrations.cli.ops import register as register_ops
from airflow_kfm_migrations.cli.review import plan_table, print_wide, validate_tables
from airflow_kfm_migrations.errors import InputError, KfmError
from airflow_kfm_migrations.kinds import KINDS
from airflow_kfm_migrations.util.connections import in_cli
from airflow_kfm_migrations.util.secret_scan import redact


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"kfm-migrations: usage: {message}\n")
        raise SystemExit(2)


# ------------------------------------------------------------------ validate


def cmd_validate(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.app.validate import validate_paths

    results = validate_paths([Path(p) for p in args.paths], base=args.base)
    code = max((r.exit_code for r in results), default=0)
    if args.format == "json":
        doc = [
            {
                "target": r.target,
                "kind": r.kind,
                "migration_id": r.migration_id,
                "bundle_digest": r.digest,
                "ok": r.ok,
                "note": r.note,
                "problems": [{"file": p.file, "field": p.field, "reason": p.reason} for p in r.problems],
            }
            for r in results
        ]
        print(json.dumps({"ok": code == 0, "exit_code": code, "results": doc}, indent=2))
        return code
    for r in results:
        for p in r.problems:
            sys.stderr.write(redact(p.line()) + "\n")
    if len(results) > 1 or args.table:
        for table in validate_tables(results):
            print_wide(table)
    elif results and results[0].ok:
        r = results[0]
        print(f"ok: {r.target}" + (f" ({r.migration_id}, bundle sha256 {r.digest})" if r.migration_id else ""))
    return code


# ----------------------------------------------------------------------- new


def cmd_new(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.declaration.scaffold import scaffold

    folder = scaffold(Path(args.root), args.type, args.intent, args.owner, default_actor())
    print(f"created {folder} (draft registry entry added); edit its scope and limits, then validate")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.app.init import init_root

    root = Path(args.root)
    init_root(root)
    print(f"created the migrations root {root} (empty registry {root / 'registry' / 'migrations.v1.json'})")
    print(f"next: kfm-migrations new --root {root} --type postgis --intent '...'")
    return 0


# ---------------------------------------------------------------- plan / run


def cmd_plan(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.stores.base import open_store

    bundle = load_bundle_arg(args.bundle)
    store = open_store(bundle.type, args.conn_id or "-", plan_only=True)  # planning never connects
    plan = store.plan(bundle)
    if args.format == "json":
        print(json.dumps(plan.as_json(), indent=2))
    elif args.format == "markdown":
        from airflow_kfm_migrations.app.plan_report import estimate_rows, plan_markdown

        # Only the row estimates connect, read-only, and only with --conn-id.
        estimates = estimate_rows(bundle, plan, args.conn_id) if args.conn_id else None
        print(redact(plan_markdown(bundle, plan, estimates=estimates, conn_id=args.conn_id)))
    else:
        print_wide(plan_table(plan))
        con = console()
        for f in plan.findings:
            con.print(f"{f.tier}: {f.code} {f.object or ''}: {f.message}")
        con.print("plan: " + ("[red]REFUSED[/]" if plan.refused else "[green]ok[/]"))
    return 1 if plan.refused else 0


class _BackfillBar:
    """A rich progress bar for backfill batches (batches, rows, rate, ETA) on stderr."""

    def __init__(self) -> None:
        self.progress: Any = None
        self.task: Any = None

    def __call__(self, ev: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[keys]} rows · batch {task.fields[batch]} · {task.fields[rate]} rows/s"),
                TextColumn("· ETA {task.fields[eta]} ·"),
                TimeElapsedColumn(),
                console=console(stderr=True),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                f"{ev.phase} backfill", total=ev.estimate, keys="0", batch=0, rate="-", eta="?"
            )
        eta = f"{ev.eta_s:.0f}s" if ev.eta_s is not None else "?"
        of = f"/{ev.estimate:,}" if ev.estimate is not None else ""
        self.progress.update(
            self.task,
            completed=ev.keys,
            total=ev.estimate,
            keys=f"{ev.keys:,}{of}",
            batch=ev.batch_no,
            rate=f"{ev.rate:,.0f}",
            eta=eta,
        )
        if ev.final:
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def cmd_run(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.engine import run_backfill, run_migration

    bundle = load_bundle_arg(args.bundle)
    opts = run_options(args)
    bar = None
    if getattr(bundle.declaration, "backfill", None) is not None and not args.quiet:
        bar = opts.progress = _BackfillBar()
    with stopped_by_signals(opts):
        result = run_migration(bundle, opts)
        if getattr(bundle.declaration, "backfill", None) is None or result.status not in {"succeeded", "noop"}:
            return report(result)
        # The schema part is committed (or was already): the backfill runs, resumes or is a no-op.
        try:
            filled = run_backfill(bundle, opts)
        finally:
            if bar is not None:
                bar.close()
    if filled.receipt_path is None and filled.status in {"noop", "succeeded"}:
        return report(result)  # already complete, or a dry run: the schema run's outcome stands
    return report(filled)


def cmd_rollback(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.engine import rollback_migration

    bundle = load_bundle_arg(args.bundle)
    reason = " ".join((args.reason or "").split()) or None
    opts = run_options(args)
    with stopped_by_signals(opts):
        return report(rollback_migration(bundle, opts, reason=reason))


def cmd_verify(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.app.verify import verify
    from airflow_kfm_migrations.declaration.bundle import DECLARATION_FILE

    target, bundle = str(args.target), Path(args.bundle) if args.bundle else None
    if "://" not in target and not target.rstrip("/").endswith("receipt_ref.json") and not args.write_ref:
        checked = verify(Path(target), bundle=bundle)
        print(f"verified: {len(checked)} digests match ({', '.join(checked[:4])}{', ...' if len(checked) > 4 else ''})")
        if args.conn_id:
            from airflow_kfm_migrations.app.verify import verify_against_ledger

            print(verify_against_ledger(Path(target), args.conn_id))
        return 0
    dest = Path(args.write_ref) if args.write_ref else None
    if dest is not None and (dest.parent / DECLARATION_FILE).is_file():
        why = "in a bundle the pointer goes to receipts/receipt_ref.json (other files are inputs)"
        raise InputError(str(dest), "--write-ref", why)
    # An object store URL or a receipt_ref.json pointer: fetched into a private temporary folder.
    if "airflow" not in sys.modules:  # Airflow's and the clients' info lines stay off the output
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from airflow_kfm_migrations.operators.artifacts import ref_for, verify_target

    with verify_target(target) as (receipt, stage):
        try:
            checked = verify(receipt, bundle=bundle)
            ledger = verify_against_ledger_line(receipt, args.conn_id)
        except KfmError as exc:
            raise (stage.named(exc) if stage is not None else exc) from None
        kept = f"receipts/history/{json.loads(receipt.read_bytes())['receipt_digest']}.json"
        where = stage.url_of(kept) if stage is not None else str(receipt)
        print(f"verified: {len(checked)} digests match ({', '.join(checked[:4])}{', ...' if len(checked) > 4 else ''})")
        print(f"receipt: {redact(where)}")
        if ledger:
            print(ledger)
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(ref_for(receipt, stage, dest))
            print(f"pointer: {dest} (commit it with the bundle; verify {dest} checks it)")
    return 0


def verify_against_ledger_line(receipt: Path, conn_id: str | None) -> str | None:
    if not conn_id:
        return None
    from airflow_kfm_migrations.app.verify import verify_against_ledger

    return verify_against_ledger(receipt, conn_id)


def cmd_record(args: argparse.Namespace) -> int:
    from airflow_kfm_migrations.app.promote import promote

    done = promote(
        Path(args.registry),
        args.migration_id,
        args.status,
        actor=default_actor(),
        ref=args.ref,
        receipt=Path(args.receipt) if args.receipt else None,
        bundle=Path(args.bundle) if args.bundle else None,
        conn_id=args.conn_id,
        superseded_by=args.superseded_by,
    )
    if done.ledger:
        print(done.ledger)
    if done.stage_skipped_by:
        print(f"stage skipped: approved by {done.stage_skipped_by}")
    entry = done.entry
    print(f"{entry.migration_id}: {entry.status} ({len(entry.events)} events)")
    return 0


# -------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kfm-migrations", description="Governed, reversible migrations for PostGIS, search and graph")
    p.add_argument("--version", action="version", version=f"kfm-migrations {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    it = sub.add_parser("init", help="create a migrations root: an empty registry, its schemas, the type folders")
    it.add_argument("root", nargs="?", default="migrations", help="the folder (default: migrations)")
    it.set_defaults(func=cmd_init)

    v = sub.add_parser("validate", help="validate bundles, type folders, the migrations root and fixtures")
    v.add_argument("paths", nargs="+")
    v.add_argument("--base", help="git ref; refuse edits to bundles merged (or later) at that ref")
    v.add_argument("--format", choices=("table", "json"), default="table")
    v.add_argument("--table", action="store_true", help="print the table even for one target")
    v.set_defaults(func=cmd_validate)

    n = sub.add_parser("new", help="scaffold the next free migration id for today")
    n.add_argument("--type", required=True, choices=tuple(KINDS))
    n.add_argument("--intent")
    n.add_argument("--root", default="migrations", help="migrations root with a registry (default: migrations)")
    n.add_argument("--owner", default="kfm-platform")
    n.set_defaults(func=cmd_new)

    pl = sub.add_parser("plan", help="static plan of a bundle (no connection, no writes)")
    pl.add_argument("bundle")
    pl.add_argument("--conn-id", help="with --format markdown: estimated rows of the tables touched (read-only)")
    pl.add_argument(
        "--format", choices=("table", "json", "markdown"), default="table", help="markdown: a pull-request comment"
    )
    pl.set_defaults(func=cmd_plan)

    for name, func, helptext in (
        ("run", cmd_run, "run a migration under the governed lifecycle"),
        ("rollback", cmd_rollback, "run the rollback artifact and verify the store equals the pre-baseline"),
    ):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("bundle")
        r.add_argument("--conn-id", required=True, help="Airflow connection id (AIRFLOW_CONN_<ID> works)")
        r.add_argument("--env", choices=("dev", "stage", "prod"), default="dev")
        r.add_argument("--artifacts", help="folder for baselines, diffs and receipts (default: the bundle)")
        r.add_argument("--registry", help="registry file (default: the one of the bundle's migrations root)")
        r.add_argument("--quiet", action="store_true")
        if name == "run":
            r.add_argument("--dry-run", action="store_true", help="rehearse in a transaction that is rolled back")
            r.add_argument("--fail-on-drift", action="store_true")
        else:
            r.add_argument("--reason", help="why the rollback is asked for (kept in the receipt's policy notes)")
        r.set_defaults(func=func)

    ve = sub.add_parser("verify", help="recompute every digest of a receipt and its chain")
    ve.add_argument(
        "target",
        help="run_receipt.json, an artifacts folder, either as an object store URL "
        "(s3://<conn_id>@bucket/prefix/<migration_id>, gs://..., file://...), or a receipt_ref.json pointer",
    )
    ve.add_argument("--bundle", help="the bundle folder, when it is not where the receipt says (moved, elsewhere)")
    ve.add_argument(
        "--conn-id",
        help="also check the run against the ledger in the store (AIRFLOW_CONN_<ID>): a committed "
        "outcome must be recorded there with the same receipt digest, any other must be absent",
    )
    ve.add_argument(
        "--write-ref",
        metavar="PATH",
        help="after verifying, write a receipt_ref.json pointer to this receipt at PATH (e.g. in the bundle, "
        "to commit with it): its URL in an object store, else its path relative to PATH's folder",
    )
    ve.set_defaults(func=cmd_verify)

    rg = sub.add_parser(
        "record",
        help="append a registry status event; executed_<env> and rolled_back need the receipt that evidences them",
    )
    rg.add_argument("migration_id")
    rg.add_argument("status")
    rg.add_argument("--ref", required=True, help="PR, issue or decision record")
    rg.add_argument(
        "--receipt",
        help="receipt (or artifacts folder) that evidences the transition: for executed_<env>, an apply run in "
        "<env> that succeeded or was a no-op; for rolled_back, a rollback run that ended rolled_back",
    )
    rg.add_argument("--bundle", help="the bundle folder, when it is not where the receipt says")
    rg.add_argument("--conn-id", help="also check the receipt against the ledger in the store (AIRFLOW_CONN_<ID>)")
    rg.add_argument("--superseded-by")
    rg.add_argument("--registry", default="migrations/registry/migrations.v1.json")
    rg.set_defaults(func=cmd_record)

    register_admin(sub)  # gc and break-lock (cli/admin.py)
    register_ops(sub)  # status, history and migrate (cli/ops.py)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    in_cli()  # Airflow's log lines, once a connection lookup imports it, go to stderr
    try:
        return int(args.func(args))
    except KfmError as exc:
        lines = getattr(exc, "problems", None)
        text = "\n".join(p.line() for p in lines) if lines else str(exc)
        sys.stderr.write(redact(text) + "\n")
        return exc.exit_code
    except InputError as exc:  # pragma: no cover - InputError is a KfmError; kept for clarity
        sys.stderr.write(redact(exc.line()) + "\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("kfm-migrations: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
