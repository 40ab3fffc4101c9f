"""``kfm-migrations``: the command line over the same core the Airflow operators use.

Exit codes: 0 ok (including no-op), 1 refused or failed closed, 2 bad usage or
unreadable/invalid input. User mistakes are one line ``file: field: reason``; a
traceback only ever means a bug in this tool.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import InputError, KfmError
from .secret_scan import redact


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"kfm-migrations: usage: {message}\n")
        raise SystemExit(2)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def default_actor() -> str:
    return os.environ.get("KFM_ACTOR") or f"{getpass.getuser()}@cli"


# ------------------------------------------------------------------ validate


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import validate_paths

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
        from rich.table import Table

        table = Table(title="kfm-migrations validate", show_lines=False)
        for col in ("target", "kind", "id", "result", "detail"):
            table.add_column(col)
        for r in results:
            detail = r.note or (f"{len(r.problems)} problem(s)" if r.problems else (r.digest or "")[:16])
            table.add_row(r.target, r.kind, r.migration_id or "", "[green]pass[/]" if r.ok else "[red]FAIL[/]", detail)
        _console().print(table)
    elif results and results[0].ok:
        r = results[0]
        print(f"ok: {r.target}" + (f" ({r.migration_id}, bundle sha256 {r.digest})" if r.migration_id else ""))
    return code


# ----------------------------------------------------------------------- new


def cmd_new(args: argparse.Namespace) -> int:
    from .scaffold import scaffold

    folder = scaffold(Path(args.root), args.type, args.intent, args.owner, default_actor())
    print(f"created {folder} (draft registry entry added); edit its scope and limits, then validate")
    return 0


# -------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="kfm-migrations", description="Governed, reversible migrations for PostGIS, search and graph")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    v = sub.add_parser("validate", help="validate bundles, type folders, the migrations root and fixtures")
    v.add_argument("paths", nargs="+")
    v.add_argument("--base", help="git ref; refuse edits to bundles merged (or later) at that ref")
    v.add_argument("--format", choices=("table", "json"), default="table")
    v.add_argument("--table", action="store_true", help="print the table even for one target")
    v.set_defaults(func=cmd_validate)

    n = sub.add_parser("new", help="scaffold the next free migration id for today")
    n.add_argument("--type", required=True, choices=("postgis", "search", "graph"))
    n.add_argument("--intent")
    n.add_argument("--root", default="migrations", help="migrations root (default: migrations)")
    n.add_argument("--owner", default="kfm-platform")
    n.set_defaults(func=cmd_new)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return p


_EXTRA_COMMANDS: list[Callable[[Any], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
