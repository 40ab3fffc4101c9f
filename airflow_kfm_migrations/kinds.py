"""The store kinds: the one table that names them.

Pure data, importable from every layer (it imports nothing of the package). A kind's code
lives in ``stores/<package>/``; its declaration model lives in ``contracts/models.py``.
Adding a kind means one subpackage, one contract model and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _postgis_assets(scope: dict[str, Any], conn_id: str) -> list[str]:
    schemas = [s for s in scope["allowed_schemas"] if "*" not in s] or ["public"]
    uris: list[str] = []
    for t in scope["allowed_tables"]:
        if "*" in t:
            continue
        if "." in t:
            uris.append(f"postgis://{conn_id}/{t.replace('.', '/', 1)}")
        else:
            uris += [f"postgis://{conn_id}/{s}/{t}" for s in schemas]
    return uris


def _search_assets(scope: dict[str, Any], conn_id: str) -> list[str]:
    return [f"search://{conn_id}/{a}" for a in scope["allowed_aliases"] if "*" not in a]


def _graph_assets(scope: dict[str, Any], conn_id: str) -> list[str]:
    return [f"neo4j://{conn_id}/{label}" for label in scope["allowed_labels"] if "*" not in label]


@dataclass(frozen=True)
class Kind:
    name: str  # the declaration's ``type``
    id_prefix: str  # migration ids read ``<prefix>-MIG-YYYY-MM-DD-NN``
    store: str  # "module:Class" of the Store implementation, imported when first opened
    extra: str  # the pip extra that installs the kind's client libraries
    forward: tuple[str, str]  # (file name, body) the scaffold writes
    rollback: tuple[str, str]
    default_scope: dict[str, list[str]]  # the scaffold's starting scope and limits
    default_limits: dict[str, int]
    default_conn_id: str
    tool: str  # the runner's client library, as the declaration names it
    # The DAG's outlet asset URIs from the facts of a declaration's scope (``decl_cache``).
    asset_uris: Callable[[dict[str, Any], str], list[str]] = field(repr=False, default=lambda scope, conn: [])
    schedulable: bool = False  # may a registry entry carry a ``schedule`` (recurring runs)
    lock_breakable: bool = False  # does the kind keep a lock that can outlive its holder
    collects_garbage: bool = False  # does an apply keep old objects that ``gc`` removes later
    scripts: tuple[str, ...] = ()  # suffixes of its forward/rollback scripts
    # Does the ledger hold the post-baseline's schema fingerprint? (search records its state
    # after the alias flip, which is later than the post-baseline the receipt lists)
    ledger_has_post_baseline: bool = True
    # The Airflow connection types that reach a store of this kind (``status``/``history``
    # tell the kind a ``--conn-id`` reaches from its type).
    conn_types: tuple[str, ...] = ()
    # What a run needs installed, as alternatives (any one suffices): (extra, modules the
    # client needs, modules only a run inside Airflow needs). The CLI and the operators
    # both reach a store through the provider's hook, so the providers are client modules.
    # Planning needs none of them.
    clients: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()


KINDS: dict[str, Kind] = {
    "postgis": Kind(
        name="postgis",
        id_prefix="PG",
        store="airflow_kfm_migrations.stores.postgis.store:PostgisStore",
        extra="postgis",
        clients=(("postgis", ("psycopg", "airflow.providers.postgres"), ()),),
        forward=(
            "forward.sql",
            "-- Forward change. Runs in one transaction under the governed runner.\n"
            "SET search_path = public;\n-- e.g. CREATE INDEX ... ON my_table (...);\n",
        ),
        rollback=(
            "rollback.sql",
            "-- Undo forward.sql exactly; verified against the pre-baseline.\n"
            "SET search_path = public;\n-- e.g. DROP INDEX IF EXISTS ...;\n",
        ),
        default_scope={
            "allowed_schemas": ["public"],
            "allowed_tables": [],
            "forbidden_schemas": ["kfm_governance"],
            "forbidden_tables": [],
            "protected_schemas": [],
            "protected_tables": [],
        },
        default_limits={
            "max_table_count_touched": 1,
            "max_index_count_delta": 0,
            "max_row_backfill": 0,
            "max_constraint_delta": 0,
        },
        default_conn_id="kfm_postgis",
        tool="psycopg",
        asset_uris=_postgis_assets,
        scripts=(".sql",),
        conn_types=("postgres", "postgresql", "postgis"),
    ),
    "search": Kind(
        name="search",
        id_prefix="SEARCH",
        store="airflow_kfm_migrations.stores.search.store:SearchStore",
        extra="opensearch",
        clients=(
            ("opensearch", ("opensearchpy", "airflow.providers.opensearch"), ()),
            ("elasticsearch", ("elasticsearch", "airflow.providers.elasticsearch"), ()),
        ),
        forward=("forward.json", '{\n  "actions": []\n}\n'),
        rollback=("rollback.json", '{\n  "actions": []\n}\n'),
        default_scope={
            "allowed_index_patterns": [],
            "forbidden_index_patterns": [".kfm-governance*"],
            "allowed_aliases": [],
            "forbidden_aliases": [],
            "protected_indices": [],
        },
        default_limits={"max_index_count_delta": 1, "max_docs_reindexed": 0},
        default_conn_id="kfm_search",
        tool="opensearch-py",
        asset_uris=_search_assets,
        schedulable=True,
        lock_breakable=True,
        collects_garbage=True,
        scripts=(".json",),
        ledger_has_post_baseline=False,
        conn_types=("opensearch", "elasticsearch", "elastic"),
    ),
    "graph": Kind(
        name="graph",
        id_prefix="GRAPH",
        store="airflow_kfm_migrations.stores.graph.store:GraphStore",
        extra="neo4j",
        clients=(("neo4j", ("neo4j", "airflow.providers.neo4j"), ()),),
        forward=(
            "forward.cypher",
            "// Forward change. Schema and data statements run in separate transactions.\n"
            "RETURN 'replace this placeholder with the forward change' AS todo;\n",
        ),
        rollback=(
            "rollback.cypher",
            "// Undo forward.cypher exactly; verified against the pre-baseline.\n"
            "RETURN 'replace this placeholder with the rollback' AS todo;\n",
        ),
        default_scope={
            "allowed_labels": [],
            "forbidden_labels": ["KfmMigration", "KfmLock"],
            "allowed_relationship_types": [],
            "forbidden_relationship_types": [],
            "protected_labels": [],
        },
        default_limits={"max_nodes_changed": 0, "max_relationships_changed": 0, "max_schema_delta": 0},
        default_conn_id="kfm_graph",
        tool="neo4j",
        asset_uris=_graph_assets,
        lock_breakable=True,
        scripts=(".cypher",),
        conn_types=("neo4j", "bolt", "neo4j+s", "neo4j+ssc", "bolt+s", "bolt+ssc"),
    ),
}

# Declarations of type ``other`` validate (the contract allows them) but no store runs them.
DECLARED_ONLY = ("other",)
ALL_TYPES = (*KINDS, *DECLARED_ONLY)
TYPE_PREFIX: dict[str, str] = {**{k.name: k.id_prefix for k in KINDS.values()}, "other": "OTHER"}


def kind_of_prefix(prefix: str) -> str | None:
    return next((k.name for k in KINDS.values() if k.id_prefix == prefix), None)


def kind_of_conn_type(conn_type: str | None) -> str | None:
    """The kind whose store a connection of ``conn_type`` reaches, or None."""
    t = (conn_type or "").lower().replace("_", "+")
    return next((k.name for k in KINDS.values() if t in k.conn_types), None)


def kinds_with(ability: str) -> list[str]:
    """Names of the kinds whose ``Kind`` flag ``ability`` is set, in table order."""
    return [k.name for k in KINDS.values() if getattr(k, ability)]
