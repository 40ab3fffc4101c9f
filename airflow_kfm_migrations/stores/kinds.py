"""The store kinds: the one table that names them.

Pure data, importable from every layer (it imports nothing of the package). A kind's code
lives in ``stores/<package>/``; its declaration model lives in ``contracts/models.py``.
Adding a kind means one subpackage, one contract model and one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str  # the declaration's ``type``
    id_prefix: str  # migration ids read ``<prefix>-MIG-YYYY-MM-DD-NN``
    store: str  # "module:Class" of the Store implementation, imported when first opened
    extra: str  # the pip extra that installs the kind's client libraries
    forward: str  # file names the scaffold writes
    rollback: str
    schedulable: bool = False  # may a registry entry carry a ``schedule`` (recurring runs)
    lock_breakable: bool = False  # does the kind keep a lock that can outlive its holder
    collects_garbage: bool = False  # does an apply keep old objects that ``gc`` removes later
    scripts: tuple[str, ...] = ()  # suffixes of its forward/rollback scripts
    # Does the ledger hold the post-baseline's schema fingerprint? (search records its state
    # after the alias flip, which is later than the post-baseline the receipt lists)
    ledger_has_post_baseline: bool = True


KINDS: dict[str, Kind] = {
    "postgis": Kind(
        name="postgis",
        id_prefix="PG",
        store="airflow_kfm_migrations.stores.postgis.store:PostgisStore",
        extra="postgis",
        forward="forward.sql",
        rollback="rollback.sql",
        scripts=(".sql",),
    ),
    "search": Kind(
        name="search",
        id_prefix="SEARCH",
        store="airflow_kfm_migrations.stores.search.store:SearchStore",
        extra="opensearch",
        forward="forward.json",
        rollback="rollback.json",
        schedulable=True,
        lock_breakable=True,
        collects_garbage=True,
        scripts=(".json",),
        ledger_has_post_baseline=False,
    ),
    "graph": Kind(
        name="graph",
        id_prefix="GRAPH",
        store="airflow_kfm_migrations.stores.graph.store:GraphStore",
        extra="neo4j",
        forward="forward.cypher",
        rollback="rollback.cypher",
        lock_breakable=True,
        scripts=(".cypher",),
    ),
}

# Declarations of type ``other`` validate (the contract allows them) but no store runs them.
DECLARED_ONLY = ("other",)
ALL_TYPES = (*KINDS, *DECLARED_ONLY)


def kind_of_prefix(prefix: str) -> str | None:
    return next((k.name for k in KINDS.values() if k.id_prefix == prefix), None)


def kinds_with(ability: str) -> list[str]:
    """Names of the kinds whose ``Kind`` flag ``ability`` is set, in table order."""
    return [k.name for k in KINDS.values() if getattr(k, ability)]
