"""The store kinds: the one table that names them.

Pure data, importable from every layer (it imports nothing of the package). A kind's code
lives in ``stores/<package>/``; its declaration model lives in ``contracts/models.py``.
Adding a kind means one subpackage, one contract model and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote


@dataclass(frozen=True)
class Endpoint:
    """Where an Airflow connection reaches, as asset URIs and OpenLineage namespaces name it:
    never credentials. ``database`` is the connection's ``schema`` field (PostgreSQL database,
    Neo4j database)."""

    conn_type: str
    host: str
    port: int | None = None
    database: str | None = None
    login: str | None = None  # PostgreSQL's default database is the user's name

    def authority(self, default_port: int) -> str:
        host = self.host.split("://", 1)[-1].rstrip("/") or "localhost"
        return f"{host}:{self.port or default_port}"


def _seg(name: str) -> str:
    return quote(name, safe="")


def _postgis_location(ep: Endpoint, path: str) -> tuple[str, str, str, str]:
    schema, table = path.split("/", 1)
    return f"postgres://{ep.authority(5432)}", ep.database or ep.login or "postgres", schema, table


def _postgis_asset(ep: Endpoint, path: str) -> str:
    """The postgres provider's form (``postgres://host:port/database/schema/table``)."""
    ns, db, schema, table = _postgis_location(ep, path)
    return f"{ns}/{_seg(db)}/{_seg(schema)}/{_seg(table)}"


def _postgis_dataset(ep: Endpoint, path: str) -> tuple[str, str]:
    """OpenLineage's naming: namespace ``postgres://host:port``, name ``database.schema.table``."""
    ns, db, schema, table = _postgis_location(ep, path)
    return ns, f"{db}.{schema}.{table}"


def _search_namespace(ep: Endpoint) -> str:
    scheme = "elasticsearch" if ep.conn_type.lower() in ("elasticsearch", "elastic") else "opensearch"
    return f"{scheme}://{ep.authority(9200)}"


def _search_asset(ep: Endpoint, path: str) -> str:
    """Our scheme (no provider registers one): ``opensearch://host:port/<index or alias>``,
    ``elasticsearch://`` for an Elasticsearch connection."""
    return f"{_search_namespace(ep)}/{_seg(path)}"


def _search_dataset(ep: Endpoint, path: str) -> tuple[str, str]:
    return _search_namespace(ep), path


def _postgis_target(target: str) -> str | None:
    return target.replace(".", "/", 1) if ":" not in target and "." in target else None


def _search_target(target: str) -> str | None:
    return target if ":" not in target else None


def _graph_target(target: str) -> str | None:
    return target.removeprefix("label:") if target.startswith("label:") else None


def _graph_asset(ep: Endpoint, path: str) -> str:
    """Our scheme (no provider registers one): ``neo4j://host:port/<database>/<label>``."""
    return f"neo4j://{ep.authority(7687)}/{_seg(ep.database or 'neo4j')}/{_seg(path)}"


def _graph_dataset(ep: Endpoint, path: str) -> tuple[str, str]:
    return f"neo4j://{ep.authority(7687)}", f"{ep.database or 'neo4j'}.{path}"


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
    # An object a run changed (``Store.assets``: a path under the store) as the asset URI of
    # the connection's endpoint, and as an OpenLineage dataset (namespace, name). See docs/assets.md.
    asset_uri: Callable[[Endpoint, str], str] | None = field(repr=False, default=None)
    lineage_dataset: Callable[[Endpoint, str], tuple[str, str]] | None = field(repr=False, default=None)
    # A target the static plan names, as such a path (None: not a table, index or label).
    target_path: Callable[[str], str | None] | None = field(repr=False, default=None)
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
        asset_uri=_postgis_asset,
        lineage_dataset=_postgis_dataset,
        target_path=_postgis_target,
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
        asset_uri=_search_asset,
        lineage_dataset=_search_dataset,
        target_path=_search_target,
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
        asset_uri=_graph_asset,
        lineage_dataset=_graph_dataset,
        target_path=_graph_target,
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
