"""Maintenance commands: ``kfm-migrations gc`` and ``kfm-migrations break-lock``.

``gc`` deletes the old indices a search apply kept for a rollback once their retention
(``old_index_retention_days``, recorded with the apply in the ledger and the receipt) has
expired; never an index an alias points to, never a forbidden or protected one. It runs
under the migration lock and writes a receipt (operation ``gc``).

``break-lock`` removes a stale or stuck lock (search: the ``lock:<migration_id>`` document
of ``.kfm-governance``; graph: the ``:KfmLock`` node), after printing who held it since
when, and writes a receipt (operation ``break_lock``) naming the previous holder.

Both are wired into the CLI by :func:`register`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.errors import InputError, LockedError, RefusedError


class AdminRefused(RefusedError):
    """A maintenance command refused (exit 1)."""


# ------------------------------------------------------------------ shared


def _options(args: argparse.Namespace, *, dry_run: bool = False) -> Any:
    from airflow_kfm_migrations.cli.main import default_actor
    from airflow_kfm_migrations.engine.lifecycle import RunOptions
    from airflow_kfm_migrations.util.secret_scan import redact

    def log(line: str) -> None:
        sys.stderr.write(redact(line) + "\n")

    return RunOptions(
        conn_id=args.conn_id,
        environment=args.env,
        artifacts_dir=Path(args.artifacts) if args.artifacts else None,
        dry_run=dry_run,
        actor=default_actor(),
        registry_path=Path(args.registry) if getattr(args, "registry", None) else None,
        log=log if not args.quiet else (lambda _l: None),
    )


def _carry_outputs(run: Any) -> None:
    """Keep the evidence of the last run guarded: a maintenance receipt lists the previous
    receipt's outputs again, but only those whose files are still unchanged."""
    from airflow_kfm_migrations.engine.receipts import carried_outputs
    from airflow_kfm_migrations.util.digest import sha256_file

    for ref in carried_outputs(run.dir):
        f = run.dir / ref.path
        if f.is_file() and sha256_file(f) == ref.sha256:
            run.outputs.append((ref.role, f))


def _report(result: Any) -> int:
    tail = f" ({result.reason})" if result.reason else ""
    if result.receipt_path is not None:
        print(f"{result.status}: receipt {result.receipt_path}{tail}")
    else:
        print(f"{result.status}{tail}")
    return 0 if result.status in {"succeeded", "noop"} else 1


def _parse_now(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError("--now", "-", f"not an ISO 8601 timestamp: {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _load(path: str) -> Any:
    from airflow_kfm_migrations.declaration.bundle import load_bundle

    return load_bundle(Path(path))


# ------------------------------------------------------------------ gc


def gc_migration(bundle: Any, opts: Any, now: datetime) -> Any:
    """Delete the expired old indices of a search migration; returns a lifecycle RunResult."""
    from airflow_kfm_migrations.engine.lifecycle import _Run, open_store
    from airflow_kfm_migrations.stores.search.store import CallError, SearchStore

    run = _Run(bundle, opts, "gc")
    if bundle.type != "search":
        run.check("store", False, f"gc is for search bundles, not {bundle.type}")
        return run.finish("failed", f"gc only applies to search migrations (this is {bundle.type})")
    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    assert isinstance(store, SearchStore)
    decisions: list[Any] = []
    try:
        with store.session(bundle, run.run_id) as s:
            run.check("lock", True)
            last = s.last_entry()
            if last is None or last.get("operation") != "apply":
                run.check("ledger", True, "not applied" if last is None else f"last operation {last.get('operation')}")
                _carry_outputs(run)
                return run.finish("noop", "no apply with old indices kept; nothing to collect")
            kept = last.get("retained_indices") or []
            run.check("ledger", True, f"apply run {str(last.get('run_id'))[:12]} kept {len(kept)} old index(es)")
            decisions = s.collect_garbage(now, dry_run=opts.dry_run)
    except LockedError as exc:
        run.check("lock", False, str(exc))
        return run.finish("failed", str(exc))
    except CallError as exc:
        run.check("gc", False, exc.line())
        return run.finish("failed", f"gc stopped: {exc.line()}")
    except RefusedError as exc:
        run.check("store", False, str(exc))
        return run.finish("failed", str(exc))
    for d in decisions:
        opts.log(f"{d.action}: {d.index} ({d.why})")
    deleted = [d.index for d in decisions if d.action in {"deleted", "would_delete"}]
    held = [d for d in decisions if d.action == "kept"]
    run.check(
        "retention",
        True,
        "; ".join(f"{d.index}: {d.action}, {d.why}" for d in decisions) or "no old index recorded",
    )
    run.metrics.update(
        gc_now=now.isoformat(),
        gc_deleted=len(deleted),
        gc_kept=len(held),
        gc_already_gone=sum(1 for d in decisions if d.action == "gone"),
    )
    if deleted:
        run.metrics["gc_deleted_indices"] = ",".join(deleted)
    if held:
        run.metrics["gc_kept_indices"] = ",".join(d.index for d in held)
    _carry_outputs(run)
    if not deleted:
        return run.finish("noop", "no old index is due for deletion")
    what = "would delete" if opts.dry_run else "deleted"
    return run.finish(
        "succeeded", f"{what} {', '.join(deleted)} (retention expired; a rollback needing them is no longer possible)"
    )


def cmd_gc(args: argparse.Namespace) -> int:
    now = _parse_now(args.now)
    bundle = _load(args.bundle)
    return _report(gc_migration(bundle, _options(args, dry_run=args.dry_run), now))


# ------------------------------------------------------------------ break-lock


def break_lock_migration(bundle: Any, opts: Any, reason: str) -> Any:
    """Remove the lock of the bundle's store, naming the previous holder in the receipt."""
    from airflow_kfm_migrations.engine.lifecycle import _Run, open_store

    run = _Run(bundle, opts, "break_lock")
    run.policy.append(f"lock broken by hand: {reason}")
    run.metrics["break_lock_reason"] = reason[:200]
    if bundle.type not in {"search", "graph"}:
        run.check("store", False, f"break-lock supports search and graph, not {bundle.type}")
        return run.finish("failed", f"break-lock is not available for {bundle.type} (its locks end with the session)")
    store = open_store(bundle.type, opts.conn_id, use_hook=opts.use_hook)
    try:
        holder = _break_search(store, bundle, run, reason) if bundle.type == "search" else _break_graph(store, run)
    except RefusedError as exc:
        run.check("break_lock", False, str(exc))
        return run.finish("failed", str(exc))
    _carry_outputs(run)
    if holder is None:
        run.check("break_lock", True, "no lock held")
        return run.finish("noop", "no lock was held; nothing to break")
    run.check("break_lock", True, f"removed the lock of run {holder['owner'][:12]} held since {holder['since']}")
    return run.finish("succeeded", f"lock of run {holder['owner']} (held since {holder['since']}) broken: {reason}")


def _say_holder(run: Any, holder: dict[str, Any]) -> None:
    age = float(holder.get("age_seconds", 0))
    stale = "stale" if holder.get("stale") else "NOT stale: the holder may still be running"
    print(
        f"lock held by run {holder['owner']} since {holder['since']} ({age:.0f} s ago; {stale})"
        + (f", migration {holder['migration']}" if holder.get("migration") else "")
    )
    run.metrics.update(
        previous_holder=str(holder["owner"]),
        previous_holder_since=str(holder["since"]),
        previous_lock_age_seconds=round(age, 1),
        previous_lock_stale=int(bool(holder.get("stale"))),
    )
    if holder.get("migration"):
        run.metrics["previous_holder_migration"] = str(holder["migration"])


def _break_search(store: Any, bundle: Any, run: Any, reason: str) -> dict[str, Any] | None:
    from airflow_kfm_migrations.stores.search.store import CallError, break_lock, read_lock

    mid = bundle.migration_id
    try:
        seen = read_lock(store.client, mid)
        if seen is None:
            return None
        holder, seq = seen
        info = {"owner": holder.owner, "since": holder.since, "age_seconds": holder.age_seconds, "stale": holder.stale}
        _say_holder(run, info)
        if run.opts.dry_run:
            return info
        break_lock(store.client, mid, holder, seq, run_id=run.run_id, reason=reason)
    except CallError as exc:
        raise AdminRefused(f"cannot break the lock on {store.conn_id}: {exc.line()}") from None
    return info


def _break_graph(store: Any, run: Any) -> dict[str, Any] | None:
    from airflow_kfm_migrations.stores.graph.store import LOCK_KEY, LOCK_LABEL, LOCK_STALE_SECONDS

    try:
        driver = store._connect()
    except RefusedError:
        raise
    except Exception as exc:
        raise AdminRefused(f"cannot connect to {store.conn_id} ({type(exc).__name__})") from None
    try:
        kw: dict[str, Any] = {"database": store.database} if store.database else {}
        with driver.session(**kw) as s:
            rows = [
                r.data()
                for r in s.run(
                    f"MATCH (l:{LOCK_LABEL} {{key: $key}}) RETURN l.migration_id AS mid, l.run_id AS run, "
                    "l.acquired_at AS at, timestamp() - l.acquired_at AS age",
                    key=LOCK_KEY,
                )
            ]
            if not rows:
                return None
            h = rows[0]
            age = float(h["age"] or 0) / 1000
            since = datetime.fromtimestamp(float(h["at"] or 0) / 1000, UTC).isoformat()
            info = {
                "owner": str(h["run"]),
                "since": since,
                "age_seconds": round(age, 1),
                "stale": age > LOCK_STALE_SECONDS,
                "migration": str(h["mid"]),
            }
            _say_holder(run, info)
            if run.opts.dry_run:
                return info
            summary = s.run(
                f"MATCH (l:{LOCK_LABEL} {{key: $key, run_id: $run}}) DELETE l", key=LOCK_KEY, run=h["run"]
            ).consume()
            if summary.counters.nodes_deleted != 1:
                raise LockedError("the graph lock changed since it was read (released or taken over); not broken")
            return info
    except RefusedError:
        raise
    except Exception as exc:  # neo4j errors: name the kind, never the URI
        raise AdminRefused(f"cannot break the graph lock on {store.conn_id} ({type(exc).__name__})") from None
    finally:
        driver.close()


def cmd_break_lock(args: argparse.Namespace) -> int:
    reason = " ".join(args.reason.split())
    if not reason:
        raise InputError("--reason", "-", "give the reason for breaking the lock")
    bundle = _load(args.bundle)
    return _report(break_lock_migration(bundle, _options(args, dry_run=args.dry_run), reason))


# ------------------------------------------------------------------ parser


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
