"""OpenSearch / Elasticsearch store: strict action files, static plan, blue/green apply
with the alias flip held back until the gate passed, cluster baselines, a document lock
and an in-store ledger (index ``.kfm-governance``).

A search cluster has no transactions. The stand-in is blue/green: ``apply`` creates the
new indices and reindexes into them while readers keep following the old aliases; every
``aliases`` action is held back. The lifecycle takes the post-baseline and runs the gate
*before* the flip; ``commit`` then performs all held-back alias actions in one atomic
``_aliases`` call, and ``abort`` deletes the indices the run created without ever touching
an alias. Changes to indices that already existed (``put_mapping``/``put_settings``) are
durable before the gate, so a declaration that keeps the default ``transactional: true``
may not contain them (the plan refuses).

:class:`SearchStore` is the entry point (the KINDS table names it); the work is done by
the modules beside it:

- :mod:`.client` — the cluster calls (:class:`SearchClient`), the opensearch-py and
  elasticsearch-py bindings, :class:`CallError`, clients from an Airflow connection;
- :mod:`.actions` — the action files; :mod:`.scope` — the declared scope as name tests;
- :mod:`.plan` — the static plan; :mod:`.capture` — baselines; :mod:`.evaluate` — the gate;
- :mod:`.session` — a run holding the lock (apply, rollback, flip, commit, abort), with
  :mod:`.reindex` (one reindex action), :mod:`.lock` (the lock document),
  :mod:`.governance` (the governance index and ledger) and :mod:`.gc` (old indices kept
  for ``old_index_retention_days``, deleted by ``kfm-migrations gc``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from airflow_kfm_migrations.contracts.models import (
    Baseline,
    DiffSummary,
    Finding,
    LimitCheck,
    SearchDeclaration,
    WriteCount,
)
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import AdminRefused, RefusedError
from airflow_kfm_migrations.stores.base import LedgerRecord, LockHolder, Plan
from airflow_kfm_migrations.stores.search import capture as baselines
from airflow_kfm_migrations.stores.search import evaluate as gate
from airflow_kfm_migrations.stores.search import governance, lock
from airflow_kfm_migrations.stores.search.actions import load_actions
from airflow_kfm_migrations.stores.search.client import (
    CallError,
    ClientFactory,
    SearchClient,
    client_factory,
)
from airflow_kfm_migrations.stores.search.plan import rehearsable, static_plan
from airflow_kfm_migrations.stores.search.session import SearchSession


class SearchStore:
    kind: ClassVar[str] = "search"

    def __init__(self, factory: ClientFactory | None, conn_id: str) -> None:
        self._factory = factory
        self.conn_id = conn_id
        self._client: SearchClient | None = None

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_conn_id(cls, conn_id: str, *, use_hook: bool = False) -> SearchStore:
        # One way to reach the store, with or without Airflow running the task: the provider's hook.
        return cls(client_factory(conn_id), conn_id)

    @classmethod
    def for_planning(cls, conn_id: str) -> SearchStore:
        """A store that can plan and evaluate but never connects."""
        return cls(None, conn_id)

    @property
    def client(self) -> SearchClient:
        if self._client is None:
            if self._factory is None:
                raise RefusedError("this store was opened for planning only; it cannot connect")
            self._client = self._factory()
        return self._client

    # -- static ---------------------------------------------------------------

    def plan(self, bundle: Bundle) -> Plan:
        return static_plan(bundle, self.kind)

    def rehearsable(self, bundle: Bundle) -> bool:
        """True when the forward is pure blue/green, so ``abort`` after ``apply`` leaves no trace."""
        return rehearsable(bundle)

    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]:
        names = {c.table for c in summary.changes if c.kind == "index" and c.change == "added" and c.table}
        for act in load_actions(bundle.by_role("forward")):
            if act.name == "aliases":
                names |= {al for op, _ix, al in act.alias_ops() if op == "add"}
        return sorted(names)  # index and alias names: KINDS["search"].asset_uri names them

    # -- baseline / gate ------------------------------------------------------

    def capture(self, client: SearchClient, decl: SearchDeclaration) -> Baseline:
        return baselines.capture(client, decl)

    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str:
        return baselines.scope_fingerprint(bundle, baseline)

    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]:
        return gate.evaluate(bundle, pre, post, writes, facts)

    # -- ledger / session -----------------------------------------------------

    def ledger_entry(self, migration_id: str, run_id: str) -> dict[str, Any] | None:
        """The ledger document of one run, read without locks or writes (for ``verify --conn-id``)."""
        return governance.read_entry(self.client, migration_id, run_id)

    def ledger_entries(self, migration_id: str | None = None) -> list[LedgerRecord]:
        """Every ledger document (of ``migration_id``), newest first, read without locks or writes."""
        return governance.entries(self.client, migration_id)

    def observe(self, bundle: Bundle) -> Baseline:
        """A baseline of the cluster now, without the lock (a capture only reads)."""
        decl = bundle.declaration
        assert isinstance(decl, SearchDeclaration)
        return self.capture(self.client, decl)

    @contextmanager
    def session(self, bundle: Bundle, run_id: str) -> Iterator[SearchSession]:
        decl = bundle.declaration
        assert isinstance(decl, SearchDeclaration)
        s = SearchSession(lambda: self.client, self.conn_id, bundle, run_id)
        try:
            s.open()
        except BaseException:  # broad on purpose: any failure, even an interrupt, re-raised below
            s.release_if_ours()  # a lock taken just before a later step of open() failed
            raise
        try:
            yield s
        finally:
            s.close()

    # -- LockBreaking ---------------------------------------------------------

    def lock_holder(self, bundle: Bundle) -> LockHolder | None:
        """Who holds the lock document of ``bundle``'s migration, or None. ``token`` is the
        document's (seq_no, primary_term)."""
        try:
            return lock.read_lock(self.client, bundle.migration_id)
        except CallError as exc:
            raise AdminRefused(f"cannot break the lock on {self.conn_id}: {exc.line()}") from None

    def break_lock(self, bundle: Bundle, holder: LockHolder, *, run_id: str, reason: str) -> None:
        """Delete exactly ``holder``'s lock document (LockedError when it changed since it was
        read) and record a ``break_lock`` document in the governance index."""
        try:
            lock.break_lock(self.client, bundle.migration_id, holder, run_id=run_id, reason=reason)
        except CallError as exc:
            raise AdminRefused(f"cannot break the lock on {self.conn_id}: {exc.line()}") from None
