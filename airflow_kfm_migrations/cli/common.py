"""What every sub-command shares: the console, the actor, loading a bundle, run options."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.config import actor
from airflow_kfm_migrations.declaration.bundle import Bundle, load_bundle
from airflow_kfm_migrations.engine.run import RunOptions, RunResult
from airflow_kfm_migrations.util.cancel import Cancellation
from airflow_kfm_migrations.util.secret_scan import redact


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def default_actor() -> str:
    """``KFM_ACTOR``, else ``<user>@cli``."""
    return actor()


def load_bundle_arg(path: str) -> Bundle:
    return load_bundle(Path(path))


def run_options(args: argparse.Namespace, *, dry_run: bool | None = None) -> RunOptions:
    """RunOptions from the common flags; the log goes to stderr, secrets redacted."""

    def log(line: str) -> None:
        sys.stderr.write(redact(line) + "\n")

    registry = getattr(args, "registry", None)
    return RunOptions(
        conn_id=args.conn_id,
        environment=args.env,
        artifacts_dir=Path(args.artifacts) if args.artifacts else None,
        dry_run=getattr(args, "dry_run", False) if dry_run is None else dry_run,
        fail_on_drift=getattr(args, "fail_on_drift", False),
        actor=default_actor(),
        registry_path=Path(registry) if registry else None,
        log=log if not args.quiet else (lambda _l: None),
        cancel=Cancellation(),
    )


@contextmanager
def stopped_by_signals(opts: RunOptions) -> Iterator[None]:
    """While inside, the first SIGTERM or SIGINT (a CI job's timeout, Ctrl-C) stops the run the
    way Airflow's ``on_kill`` does: the running statement or reindex is cancelled on the
    server, and the run fails closed through its normal path (undone, lock released, a
    receipt saying why). The handlers are then back to what they were, so a second signal
    ends the process at once."""
    cancel = opts.cancel
    if cancel is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def stop(signum: int, _frame: Any) -> None:
        restore()
        name = signal.Signals(signum).name
        sys.stderr.write(f"kfm-migrations: {name}: stopping the run (a second {name} ends the process)\n")
        cancel.cancel(f"stopped by {name}")

    for sig in signals:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        restore()


def report(result: RunResult) -> int:
    """One line on stdout: the outcome, the receipt's path and the reason; returns the exit code."""
    tail = f" ({result.reason})" if result.reason else ""
    if result.receipt_path is not None:
        print(f"{result.status}: receipt {result.receipt_path}{tail}")
    else:
        print(f"{result.status}{tail}")
    return result.exit_code
