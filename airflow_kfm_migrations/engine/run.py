"""One run's options, its result, and the recorder every exit path goes through.

A :class:`RunRecorder` collects the checks, policy notes, metrics and outputs of one run
(apply, rollback, backfill, gc, break_lock) and writes its artifacts and its receipt in
:meth:`RunRecorder.finish`. Every outcome but invalid input (exit 2, nothing written) ends
there, so every outcome has a receipt.

Each run writes its outputs into a folder of its own, ``runs/<operation>-<run_id>/``, and
its receipt lists those files: a later run (a rollback, a re-apply) never overwrites the
evidence an earlier receipt points to. The declared paths at the top of the artifacts
folder (``baselines/pre.json``, ``diffs/summary.json``...) then show the latest run's
outputs, as hard links (or copies) of the files in its run folder.
"""

from __future__ import annotations

import functools
import gc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from airflow_kfm_migrations.contracts.models import Baseline, DiffSummary, ValidationCheck, baseline_json
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.engine.receipts import carried_outputs, output_refs, write_receipt
from airflow_kfm_migrations.evidence.diff import touched_csv
from airflow_kfm_migrations.evidence.prov import prov_jsonld
from airflow_kfm_migrations.stores.base import BatchEvent, Cancellable, LedgerRecord, Plan, Store, StoreSession
from airflow_kfm_migrations.util.cancel import Cancellation
from airflow_kfm_migrations.util.digest import dump_json, publish_copy, write_bytes_atomic

_P = ParamSpec("_P")
_R = TypeVar("_R")

RUNS = "runs"  # each run's own outputs: runs/<operation>-<run_id>/
EXIT = {"succeeded": 0, "noop": 0, "failed": 1, "rolled_back": 1, "rollback_failed": 1}


@dataclass
class RunOptions:
    conn_id: str
    environment: str = "dev"
    artifacts_dir: Path | None = None
    dry_run: bool = False
    fail_on_drift: bool = False
    actor: str = "unknown"
    registry_path: Path | None = None
    use_hook: bool = False
    prov: bool = True
    log: Callable[[str], None] = print
    progress: Callable[[BatchEvent], None] | None = None  # after each backfill batch
    # Runs work that may finish after the run returns (its PROV document), e.g. in a thread
    # while the next migration of a series runs; the caller waits for it. None: right away.
    defer: Callable[[Callable[[], None]], None] | None = None
    # Set from another thread (Airflow's on_kill) to stop the run: the session stops its
    # server-side work and the run fails closed, with a receipt saying why. None: never.
    cancel: Cancellation | None = None

    @property
    def cancelled(self) -> str | None:
        """Why the run was asked to stop, or None."""
        return self.cancel.reason if self.cancel is not None else None


@dataclass
class RunResult:
    status: str
    reason: str | None
    receipt_path: Path | None
    summary: DiffSummary | None = None
    plan: Plan | None = None
    pre: Baseline | None = None
    post: Baseline | None = None
    receipt_digest: str | None = None
    checks: list[ValidationCheck] = field(default_factory=list)
    assets: list[str] = field(default_factory=list)
    operation: str = "apply"
    resumable: bool = False  # a backfill interrupted with its progress kept: a re-run resumes

    @property
    def exit_code(self) -> int:
        if self.operation == "rollback" and self.status == "rolled_back":
            return 0  # a rollback asked for and verified is a success
        return EXIT[self.status]


class RunRecorder:
    """State of one run; every exit path goes through :meth:`finish`."""

    def __init__(self, bundle: Bundle, opts: RunOptions, operation: str) -> None:
        self.bundle = bundle
        self.opts = opts
        self.operation = operation
        self.run_id = uuid.uuid4().hex
        self.started = datetime.now(UTC)
        self.dir = opts.artifacts_dir or bundle.root
        self.run_dir = self.dir / RUNS / f"{operation}-{self.run_id}"
        self.checks: list[ValidationCheck] = []
        self.policy: list[str] = []
        self.metrics: dict[str, int | float | str] = {}
        self.registry: dict[str, str | bool | None] = {"in_registry": False, "status": None, "note": None}
        self.pre: Baseline | None = None
        self.post: Baseline | None = None
        self.summary: DiffSummary | None = None
        self.plan: Plan | None = None
        self.outputs: list[tuple[str, Path]] = []
        self.assets: list[str] = []

    def check(self, name: str, passed: bool, detail: str | None = None) -> None:
        self.checks.append(ValidationCheck(name=name, passed=passed, detail=detail))
        self.opts.log(f"[{'pass' if passed else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))

    def _write(self, role: str, rel: str, data: bytes) -> None:
        """One output: into this run's folder (listed in the receipt), then published at
        ``rel`` in the artifacts folder as the latest run's view."""
        own = self.run_dir / rel
        write_bytes_atomic(own, data)
        publish_copy(own, self.dir / rel)
        self.outputs.append((role, own))

    def add_output(self, role: str, rel: str, doc: dict[str, Any]) -> None:
        """Write a JSON output of this run (e.g. a backfill summary) and list it in the receipt."""
        if self.opts.dry_run:
            return
        self._write(role, rel, dump_json(doc))

    def write_outputs(self) -> None:
        paths = self.bundle.declaration.artifacts
        if self.pre is not None:
            self._write("baseline_pre", paths.baselines.pre, baseline_json(self.pre))
        if self.post is not None:
            self._write("baseline_post", paths.baselines.post, baseline_json(self.post))
        if self.summary is not None:
            self._write(
                "diff_summary", paths.diffs.summary, dump_json(self.summary.model_dump(mode="json", by_alias=True))
            )
            writes = [(w.table, w.inserted, w.updated, w.deleted) for w in self.summary.writes]
            self._write("diff_touched", paths.diffs.touched, touched_csv(self.summary.changes, writes).encode())

    def finish(self, status: str, reason: str | None) -> RunResult:
        if self.opts.dry_run:
            self.opts.log(f"dry run: {status}" + (f" ({reason})" if reason else "") + "; nothing was written")
            return RunResult(
                status,
                reason,
                None,
                self.summary,
                self.plan,
                self.pre,
                self.post,
                None,
                self.checks,
                operation=self.operation,
            )
        self.write_outputs()
        outputs = output_refs(self.dir, self.outputs)
        if status == "noop" and not outputs:
            # A no-op produced nothing new: the evidence of the state is still the last
            # run's outputs, carried forward so that verify keeps guarding them.
            outputs = carried_outputs(self.dir)
        path, receipt = write_receipt(
            self.dir,
            self.bundle,
            run_id=self.run_id,
            operation=self.operation,
            actor=self.opts.actor,
            started_at=self.started,
            environment=self.opts.environment,
            status=status,
            reason=reason,
            store={"kind": self.bundle.type, "conn_id": self.opts.conn_id},
            registry=self.registry,
            outputs=outputs,
            validation=self.checks,
            policy=self.policy,
            metrics=self.metrics,
        )
        prov_rel = self.bundle.declaration.artifacts.receipts.prov
        if self.opts.prov and prov_rel:
            own, view = self.run_dir / prov_rel, self.dir / prov_rel

            def write_prov() -> None:
                write_bytes_atomic(own, prov_jsonld(receipt))
                publish_copy(own, view)

            if self.opts.defer is not None:
                self.opts.defer(write_prov)
            else:
                write_prov()
        return RunResult(
            status,
            reason,
            path,
            self.summary,
            self.plan,
            self.pre,
            self.post,
            receipt.receipt_digest,
            self.checks,
            self.assets,
            self.operation,
        )

    def note_receipt(self, session: StoreSession, result: RunResult) -> None:
        """Store the receipt's digest with the ledger entry the run committed."""
        if not result.receipt_digest or self.opts.dry_run:
            return
        try:
            session.set_receipt_digest(self.run_id, result.receipt_digest)
        except Exception as exc:  # broad on purpose: the run is committed; a store error here only leaves a gap
            self.opts.log(f"note: could not store the receipt digest in the ledger ({type(exc).__name__})")

    def ledger_record(self, store: Store, operation: str, status: str) -> LedgerRecord:
        assert self.pre is not None and self.post is not None
        return LedgerRecord(
            migration_id=self.bundle.migration_id,
            operation=operation,
            status=status,
            bundle_digest=self.bundle.digest,
            artifacts={a.rel: a.sha256 for a in self.bundle.artifacts},
            environment=self.opts.environment,
            run_id=self.run_id,
            pre_schema_fingerprint=self.pre.schema_fingerprint,
            pre_protected_fingerprint=self.pre.protected_fingerprint,
            post_schema_fingerprint=self.post.schema_fingerprint,
            post_scope_fingerprint=store.scope_fingerprint(self.bundle, self.post),
            actor=self.opts.actor,
        )

    def log_summary(self) -> None:
        s = self.summary
        if s is None:
            return
        self.opts.log(f"diff: {len(s.changes)} object change(s), {len(s.writes)} table(s) written")
        for lc in s.limits:
            self.opts.log(
                f"  limit {lc.name}: observed {lc.observed} / declared {lc.declared} {'ok' if lc.ok else 'EXCEEDED'}"
            )
        for f in s.findings:
            if f.tier != "informational":
                self.opts.log(
                    f"  {f.tier} {f.code} {f.object or ''}: {f.message}"
                    + (f" (approved by {f.approved_by})" if f.approved_by else "")
                )
        self.opts.log(f"verdict: {s.verdict}")


@contextmanager
def cancellable(opts: RunOptions, target: object) -> Iterator[None]:
    """While inside: ``opts.cancel`` stops ``target``'s server-side work (a session, a backfill
    engine), when it is ``Cancellable``."""
    if opts.cancel is None or not isinstance(target, Cancellable):
        yield
        return
    with opts.cancel.registered(target.cancel):
        yield


def cycle_collector_paused(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with Python's cyclic garbage collector paused (reference counting still
    frees everything as usual). A PostGIS run holds two baselines of 120k objects each, and
    every collection of the oldest generation would walk all of them: about a tenth of a run
    of a 10,000-table catalog. Cycles made meanwhile are collected once the run is over."""

    @functools.wraps(fn)
    def paused(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        collecting = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if collecting:
                gc.enable()

    return paused
