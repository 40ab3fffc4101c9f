"""Keeping a run's writes out of protected and forbidden indices, seen from the cluster.

- :func:`reindex_problem`: right before a reindex starts, its source and dest are resolved
  on the cluster (the plan judged the names only): a source that is, or is an alias of, a
  forbidden index or a protected one without approval, and a dest that is an alias, are
  refused before anything is written.
- :func:`guarded_written`: the write counters of the protected and forbidden indices
  (:func:`.capture.write_counters`) compared with those at the start of the run; any write
  into them during the run, by whatever means, is named.
- :func:`indices_to_block`: with ``protect_with_write_block: true``, the protected indices
  the run sets ``index.blocks.write: true`` on for its duration (every existing protected
  index no approval covers), with the value each had before (restored by
  :func:`.inflight.lift_block`; a killed run's blocks are lifted by the next run).
"""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.contracts.models import SearchDeclaration
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.stores.search.capture import write_counters, written_between
from airflow_kfm_migrations.stores.search.client import CallError, SearchClient
from airflow_kfm_migrations.stores.search.scope import SearchScopeRules


def unapproved_guarded(decl: SearchDeclaration, rules: SearchScopeRules, index: str) -> str | None:
    """``forbidden`` or ``protected`` when nothing of the run may write into ``index``, else None."""
    if rules.index_forbidden(index):
        return "forbidden"
    if rules.index_protected(index) and not approval_covers(decl, f"protected:{index}"):
        return "protected"
    return None


def reindex_problem(client: SearchClient, decl: SearchDeclaration, source: str, dest: str) -> str | None:
    """Why the reindex ``source`` -> ``dest`` must not start on this cluster, or None."""
    rules = SearchScopeRules(decl)
    try:
        behind = sorted(client.get_indices(source))
    except CallError as exc:
        if exc.status == 404:
            return None  # the reindex itself fails, naming the missing source
        raise
    for ix in behind:
        guarded = unapproved_guarded(decl, rules, ix)
        if guarded:
            via = "" if ix == source else f" (through the alias {source})"
            return (
                f"plan_guarded_source: the reindex source {source} resolves to {guarded} index {ix}{via}; "
                "a reindex may not read it"
            )
    aliases = {al for meta in client.get_alias().values() for al in (meta.get("aliases") or {})}
    if dest in aliases:
        return f"the reindex dest {dest} is an alias; a reindex writes into one concrete index it names"
    return None


def guarded_counters(client: SearchClient, decl: SearchDeclaration) -> dict[str, list[Any]]:
    """The write counters of every existing index nothing of the run may write into."""
    rules = SearchScopeRules(decl)
    return {k: v for k, v in write_counters(client).items() if unapproved_guarded(decl, rules, k)}


def guarded_written(client: SearchClient, decl: SearchDeclaration, before: dict[str, list[Any]]) -> dict[str, str]:
    """The indices of ``before`` (see :func:`guarded_counters`) written since: name -> what happened."""
    return written_between(before, write_counters(client))


def describe_written(written: dict[str, str], decl: SearchDeclaration) -> str:
    rules = SearchScopeRules(decl)
    return "; ".join(
        f"{'forbidden' if rules.index_forbidden(ix) else 'protected'} index {ix} was written during the run ({what})"
        for ix, what in sorted(written.items())
    )


def indices_to_block(client: SearchClient, decl: SearchDeclaration) -> list[tuple[str, str | None]]:
    """(index, its ``index.blocks.write`` now) for every existing protected index no approval
    covers and that is not write-blocked already."""
    rules = SearchScopeRules(decl)
    out: list[tuple[str, str | None]] = []
    for name, meta in sorted(client.get_indices("*").items()):
        if name.startswith(".") or not rules.index_protected(name) or approval_covers(decl, f"protected:{name}"):
            continue
        blocks = ((meta.get("settings") or {}).get("index") or {}).get("blocks") or {}
        value = blocks.get("write")
        previous = None if value is None else str(value).lower()
        if previous != "true":
            out.append((name, previous))
    return out
