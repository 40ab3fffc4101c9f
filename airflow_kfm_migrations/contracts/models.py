"""Pydantic v2 models: the single source of truth for every contract.

The JSON Schemas under ``contracts/schemas/`` (and their copies in
``migrations/registry/schemas/``) are generated from these models by
``python -m airflow_kfm_migrations.contracts.export``; a test keeps them in step.

Rules that hold for every model: unknown fields are refused, and anything that JSON
Schema can express (patterns, enums, conditional requirements) is expressed on the
model, so that a JSON Schema validator and pydantic agree on every document.
Cross-field policy that JSON Schema cannot state (allowed ∩ forbidden = ∅, protected
objects inside allowed scope, file existence) lives in ``policy.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from airflow_kfm_migrations.stores.kinds import TYPE_PREFIX as KIND_PREFIXES
from airflow_kfm_migrations.util.digest import dump_json

SCHEMA_BASE = "https://airflow-kfm-migrations.dev/schemas/"

MigrationType = Literal["postgis", "search", "graph", "other"]
TYPE_PREFIX = KIND_PREFIXES  # the id prefix of each declaration type (stores/kinds.py)
ID_PATTERN = r"^(PG|SEARCH|GRAPH|OTHER)-MIG-[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])-[0-9]{2}$"


def _id_pattern(prefix: str) -> str:
    return rf"^{prefix}-MIG-[0-9]{{4}}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])-[0-9]{{2}}$"


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
NonNegInt = Annotated[int, Field(ge=0, strict=True)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
# A database/search/graph object name, optionally qualified, optionally a glob pattern.
ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.*?$:\-]+$")]
# Relative POSIX path inside a bundle; containment is re-checked on disk by the loader.
RelPath = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$"
    ),
]
ConnId = Annotated[str, StringConstraints(min_length=1, max_length=250, pattern=r"^[A-Za-z0-9_.-]+$")]
# Environment entries are the *names* of secret references, never values.
SecretRefName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Z][A-Z0-9_]*$")]
PgInterval = Annotated[str, StringConstraints(pattern=r"^[0-9]+(ms|s|min|h)$")]
Environment = Literal["dev", "stage", "prod"]
ChangeClass = Literal["routine", "standard", "governance-critical"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------- scope


class PostgisScope(Strict):
    """Schemas and tables. A table is ``name`` (any allowed schema) or ``schema.name``.
    Every entry may be a glob pattern (``*``, ``?``)."""

    allowed_schemas: list[ObjectName] = Field(
        default_factory=list, description="Schemas the migration may change; nothing outside them may change"
    )
    allowed_tables: list[ObjectName] = Field(
        default_factory=list,
        description="Tables the migration may change or write, within the allowed schemas; "
        "empty means every table of those schemas",
    )
    forbidden_schemas: list[ObjectName] = Field(
        default_factory=list, description="Schemas that must not change at all; no approval can allow it"
    )
    forbidden_tables: list[ObjectName] = Field(
        default_factory=list, description="Tables that must not change or be written; no approval can allow it"
    )
    protected_schemas: list[ObjectName] = Field(
        default_factory=list,
        description="Schemas whose objects are fingerprinted and may change only with an approval "
        "covering 'protected:<object>'",
    )
    protected_tables: list[ObjectName] = Field(
        default_factory=list,
        description="Tables whose definition and row contents are fingerprinted and may change only with an "
        "approval covering 'protected:<table>'",
    )
    protected_row_digest_max_rows: NonNegInt = Field(
        default=100_000,
        description="Cap on the rows digested per protected or forbidden table. A larger table gets a fixed "
        "'over the cap' digest instead, so its row contents are not fingerprinted (the write counters still "
        "see every write to it)",
    )


class SearchScope(Strict):
    """Indices and aliases, as names or glob patterns. Dot-indices are always forbidden."""

    allowed_index_patterns: list[ObjectName] = Field(
        default_factory=list, description="Indices the migration may create, change, reindex into or delete"
    )
    forbidden_index_patterns: list[ObjectName] = Field(
        default_factory=list, description="Indices that must not change or be written; no approval can allow it"
    )
    allowed_aliases: list[ObjectName] = Field(default_factory=list, description="Aliases the migration may move")
    forbidden_aliases: list[ObjectName] = Field(
        default_factory=list, description="Aliases that must not change; no approval can allow it"
    )
    protected_indices: list[ObjectName] = Field(
        default_factory=list,
        description="Indices whose definition and document count are fingerprinted and may change only "
        "with an approval covering 'protected:<index>'",
    )


class GraphScope(Strict):
    """Node labels and relationship types, as names or glob patterns."""

    allowed_labels: list[ObjectName] = Field(
        default_factory=list, description="Labels whose nodes, constraints and indexes the migration may change"
    )
    forbidden_labels: list[ObjectName] = Field(
        default_factory=list, description="Labels that must not change; no approval can allow it"
    )
    allowed_relationship_types: list[ObjectName] = Field(
        default_factory=list, description="Relationship types the migration may create, delete or change"
    )
    forbidden_relationship_types: list[ObjectName] = Field(
        default_factory=list, description="Relationship types that must not change; no approval can allow it"
    )
    protected_labels: list[ObjectName] = Field(
        default_factory=list,
        description="Labels whose nodes (labels and full property maps) are fingerprinted and may change "
        "only with an approval covering 'protected:<Label>'",
    )


class OtherScope(Strict):
    """Scope of a declaration of type ``other``: validated, but no store runs it."""

    allowed: list[ObjectName] = Field(default_factory=list, description="Objects the migration may change")
    forbidden: list[ObjectName] = Field(default_factory=list, description="Objects that must not change")


# -------------------------------------------------------------------------- limits
# An undeclared limit is 0: nothing of that kind may change (fail closed).


class PostgisLimits(Strict):
    """Blast-radius caps the gate compares with what the run did. An undeclared limit is 0."""

    max_table_count_touched: NonNegInt = Field(
        default=0, description="Tables with a changed object or written rows (trigger writes included)"
    )
    max_index_count_delta: NonNegInt = Field(default=0, description="Indexes added, removed or changed")
    max_row_backfill: NonNegInt = Field(
        default=0,
        description="Rows inserted, updated or deleted by the run, all tables together; also the cap on "
        "backfill.max_rows",
    )
    max_constraint_delta: NonNegInt = Field(default=0, description="Constraints added, removed or changed")


class SearchLimits(Strict):
    """Blast-radius caps the gate compares with what the run did. An undeclared limit is 0."""

    max_index_count_delta: NonNegInt = Field(default=0, description="Indices created or deleted")
    max_docs_reindexed: NonNegInt = Field(default=0, description="Documents processed by the reindex actions")


class GraphLimits(Strict):
    """Blast-radius caps the gate compares with what the run did. An undeclared limit is 0."""

    max_nodes_changed: NonNegInt = Field(
        default=0, description="Nodes created plus deleted, plus the larger of labels added and labels removed"
    )
    max_relationships_changed: NonNegInt = Field(default=0, description="Relationships created plus deleted")
    max_schema_delta: NonNegInt = Field(
        default=0, description="Constraints and indexes added or removed (a changed one counts twice)"
    )


class OtherLimits(Strict):
    """Blast-radius cap of a declaration of type ``other``."""

    max_objects_touched: NonNegInt = Field(default=0, description="Objects the migration may touch")


# ----------------------------------------------------------------------- approvals


class RecordedApproval(Strict):
    """One approval given: who, when, where it is recorded, and what it covers."""

    by: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Who approved: a reviewer or team named in required_reviewers"
    )
    at: AwareDatetime = Field(description="When, with a time zone")
    ref: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="Issue, ADR or decision record that holds the approval"
    )
    covers: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        description="Finding codes or objects this approval explicitly covers, e.g. "
        "'review:index_on_large_table' or 'protected:public.authority_sites'",
    )


class Approvals(Strict):
    """Who must approve, how critical the change is, and the approvals given so far."""

    required_reviewers: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        min_length=1, description="Reviewers whose recorded approval a stage or prod run needs"
    )
    change_class: ChangeClass = Field(
        description="governance-critical is required when a protected object is inside the allowed scope"
    )
    recorded: list[RecordedApproval] = Field(default_factory=list, description="Approvals given so far")


# -------------------------------------------------------------------------- runner


class Runner(Strict):
    """How the migration is run. Informational except ``conn_id``."""

    tool: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="The client the migration is written for, e.g. psycopg, opensearch-py, neo4j"
    )
    command: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = Field(
        default=None, description="A repository wrapper command, if there is one; not executed by the runner"
    )
    conn_id: ConnId | None = Field(default=None, description="Airflow connection id of the target store")
    environment: list[SecretRefName] = Field(
        default_factory=list, description="Names of secret references; never secret values"
    )


# ------------------------------------------------------------------------ artifacts


class BaselinePaths(Strict):
    """Where a run writes its baselines, relative to the artifacts folder."""

    pre: RelPath = Field(default="baselines/pre.json", description="The baseline taken before the forward")
    post: RelPath = Field(default="baselines/post.json", description="The baseline taken after the forward")


class DiffPaths(Strict):
    """Where a run writes its diff, relative to the artifacts folder."""

    summary: RelPath = Field(default="diffs/summary.json", description="The diff_summary.v1 document")
    touched: RelPath = Field(
        default="diffs/touched.csv", description="One CSV line per touched object or written table, for reviewers"
    )


class ReceiptPaths(Strict):
    """Where a run writes its receipt files, relative to the artifacts folder."""

    run_receipt: RelPath = Field(
        default="receipts/run_receipt.json",
        description="Declared for the contract; the runner always writes "
        "the latest receipt to receipts/run_receipt.json",
    )
    prov: RelPath | None = Field(
        default="receipts/prov.jsonld", description="The run as W3C PROV JSON-LD; null writes none"
    )
    receipt_ref: RelPath | None = Field(
        default=None, description="Declared for the contract; the runner always writes receipts/receipt_ref.json"
    )


class Artifacts(Strict):
    """The bundle's input files, and where its outputs go."""

    forward: list[RelPath] = Field(min_length=1, description="Forward scripts, run in this order")
    rollback: list[RelPath] = Field(
        default_factory=list, description="Rollback scripts that undo the forward; required with requires_rollback"
    )
    baselines: BaselinePaths = Field(default_factory=BaselinePaths, description="Baseline output paths")
    diffs: DiffPaths = Field(default_factory=DiffPaths, description="Diff output paths")
    receipts: ReceiptPaths = Field(default_factory=ReceiptPaths, description="Receipt output paths")
    notes: RelPath | None = Field(
        default=None, description="Reviewer notes; notes.md in the bundle folder is read even when not named"
    )


class Timeouts(Strict):
    """Timeouts of the run, as PostgreSQL intervals (e.g. 5s, 15min)."""

    lock_timeout: PgInterval = Field(
        default="5s", description="How long a statement may wait for a lock (PostGIS, backfill batches)"
    )
    statement_timeout: PgInterval = Field(
        default="15min",
        description="How long one statement (PostGIS, Neo4j) or one reindex task (search) may run",
    )


class Backfill(Strict):
    """A bounded, batched data change run after the schema part (postgis only).
    Declare exactly one of ``set`` and ``sql_template``."""

    table: ObjectName = Field(description="The table to fill: schema.table, or table (schema public)")
    key_column: ObjectName = Field(
        description="A NOT NULL column with a unique index of its own; each batch is a range of its values, "
        "in order. Checked before the first batch"
    )
    set: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = Field(
        default=None,
        description="The SET clause of the generated UPDATE of table over the batch's key range",
    )
    sql_template: Annotated[str, StringConstraints(min_length=1, max_length=20000)] | None = Field(
        default=None,
        description="Instead of set: one UPDATE, INSERT, DELETE or MERGE using {lo} and {hi}, the batch's "
        "key range (inclusive)",
    )
    where: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = Field(
        default=None, description="With set only: a condition the updated rows must meet"
    )
    batch_size: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = Field(
        default=5000, description="Keys per batch; each batch is its own transaction"
    )
    pause_ms: NonNegInt = Field(default=0, description="Pause between batches, in milliseconds")
    max_rows: NonNegInt = Field(
        description="Cap on the rows the whole backfill writes, all tables and trigger writes included; "
        "must not exceed limits.max_row_backfill"
    )
    lock_timeout: PgInterval | None = Field(
        default=None, description="lock_timeout of each batch; default: timeouts.lock_timeout"
    )
    rollback_set: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = Field(
        default=None,
        description="The SET clause of a batched reverse UPDATE over the committed batches, run by a "
        "rollback or a compensation",
    )
    verify_columns: list[ObjectName] = Field(
        default_factory=list,
        description="Columns digested (with the key, in key order) before the first batch; after a "
        "rollback their digest must equal that value",
    )

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"oneOf": [{"required": ["set"]}, {"required": ["sql_template"]}]},  # type: ignore[dict-item]
    )

    @model_validator(mode="after")
    def _one_body(self) -> Backfill:
        if (self.set is None) == (self.sql_template is None):
            raise ValueError("declare exactly one of 'set' or 'sql_template'")
        return self


class GraphInvariants(Strict):
    """Conditions the graph must meet after the forward; each broken one is a hard fail."""

    exclusive_labels: list[tuple[ObjectName, ObjectName]] = Field(
        default_factory=list, description="Pairs of labels that no node may carry together"
    )
    required_relationships: list[RequiredRelationship] = Field(
        default_factory=list, description="Relationships every node of a label must have"
    )
    required_constraints: list[ObjectName] = Field(
        default_factory=list, description="Names of constraints that must exist"
    )
    ontology_file: RelPath | None = Field(
        default=None,
        description="A file of the bundle describing the ontology; digested as an input, not interpreted",
    )


class RequiredRelationship(Strict):
    """Every node of ``label`` must have a relationship of ``type`` in ``direction``."""

    label: ObjectName = Field(description="The label whose nodes are checked")
    type: ObjectName = Field(description="The relationship type they must have")
    direction: Literal["out", "in", "any"] = Field(
        default="out", description="out: (n)-[:type]->(), in: (n)<-[:type]-(), any: either"
    )


GraphInvariants.model_rebuild()


# -------------------------------------------------------------------- declaration

_CONDITIONAL = [
    {
        "if": {"properties": {"transactional": {"const": False}}, "required": ["transactional"]},
        "then": {"required": ["non_transactional_reason"]},
    },
    {
        "if": {"properties": {"requires_rollback": {"const": True}}},
        "then": {"properties": {"artifacts": {"required": ["rollback"], "properties": {"rollback": {"minItems": 1}}}}},
    },
]


class _DeclarationBase(Strict):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        json_schema_extra={"allOf": _CONDITIONAL},  # type: ignore[dict-item]
    )

    intent: Annotated[str, StringConstraints(min_length=10, max_length=2000)] = Field(
        description="What the migration does and why, in plain language"
    )
    requires_rollback: Annotated[bool, Field(strict=True)] = Field(
        description="true: artifacts.rollback must name a non-empty rollback script. false: notes.md must "
        "give the reason, the approval reference and the alternative safety strategy"
    )
    approvals: Approvals = Field(description="Reviewers, change class and recorded approvals")
    runner: Runner = Field(description="How the migration is run and on which connection")
    artifacts: Artifacts = Field(description="Input scripts and output paths")
    transactional: Annotated[bool, Field(strict=True)] = Field(
        default=True,
        description="false: statements that cannot run in one transaction are allowed, the run is gated "
        "after the change and compensated with the rollback script; needs non_transactional_reason",
    )
    non_transactional_reason: Annotated[str, StringConstraints(min_length=10, max_length=2000)] | None = Field(
        default=None, description="Why the migration cannot run in a transaction; required with transactional: false"
    )
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Lock and statement timeouts")

    @model_validator(mode="after")
    def _conditional(self) -> Any:
        if self.transactional is False and not self.non_transactional_reason:
            raise ValueError("transactional: false needs non_transactional_reason")
        if self.requires_rollback and not self.artifacts.rollback:
            raise ValueError("requires_rollback: true needs at least one artifacts.rollback entry")
        return self


class PostgisDeclaration(_DeclarationBase):
    """A PostgreSQL/PostGIS migration: SQL scripts, run in one transaction unless declared otherwise."""

    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("PG"))] = Field(
        description="PG-MIG-YYYY-MM-DD-NN; equals the bundle folder name"
    )
    type: Literal["postgis"] = Field(description="The store kind; selects the declaration model")
    scope: PostgisScope = Field(description="What may change, what must not, and what is protected")
    limits: PostgisLimits = Field(description="Blast-radius caps; an undeclared limit is 0")
    backfill: Backfill | None = Field(
        default=None, description="A bounded, batched data change run after the schema part"
    )


class SearchDeclaration(_DeclarationBase):
    """An OpenSearch/Elasticsearch migration: JSON action files, run blue/green."""

    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("SEARCH"))] = Field(
        description="SEARCH-MIG-YYYY-MM-DD-NN; equals the bundle folder name"
    )
    type: Literal["search"] = Field(description="The store kind; selects the declaration model")
    scope: SearchScope = Field(description="What may change, what must not, and what is protected")
    limits: SearchLimits = Field(description="Blast-radius caps; an undeclared limit is 0")
    old_index_retention_days: NonNegInt = Field(
        default=7,
        description="Days the old indices an alias moves away from are kept for a rollback; "
        "kfm-migrations gc deletes them afterwards",
    )


class GraphDeclaration(_DeclarationBase):
    """A Neo4j migration: Cypher scripts, each statement in its own transaction."""

    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("GRAPH"))] = Field(
        description="GRAPH-MIG-YYYY-MM-DD-NN; equals the bundle folder name"
    )
    type: Literal["graph"] = Field(description="The store kind; selects the declaration model")
    scope: GraphScope = Field(description="What may change, what must not, and what is protected")
    limits: GraphLimits = Field(description="Blast-radius caps; an undeclared limit is 0")
    invariants: GraphInvariants = Field(
        default_factory=GraphInvariants, description="Conditions checked by the gate after the forward"
    )


class OtherDeclaration(_DeclarationBase):
    """A declaration of type ``other``: validated, but no store runs it."""

    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("OTHER"))] = Field(
        description="OTHER-MIG-YYYY-MM-DD-NN; equals the bundle folder name"
    )
    type: Literal["other"] = Field(description="The store kind; selects the declaration model")
    scope: OtherScope = Field(description="What may change, what must not, and what is protected")
    limits: OtherLimits = Field(description="Blast-radius caps; an undeclared limit is 0")


Declaration = Annotated[
    PostgisDeclaration | SearchDeclaration | GraphDeclaration | OtherDeclaration,
    Field(discriminator="type"),
]
AnyDeclaration = PostgisDeclaration | SearchDeclaration | GraphDeclaration | OtherDeclaration


# ----------------------------------------------------------------------- registry

Status = Literal[
    "draft",
    "approved",
    "merged",
    "executed_dev",
    "executed_stage",
    "executed_prod",
    "rolled_back",
    "superseded",
]


class StatusEvent(Strict):
    """One status change of a registry entry; events are only ever appended."""

    status: Status = Field(description="The status the entry moved to")
    at: AwareDatetime = Field(description="When, with a time zone")
    actor: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Who recorded the change"
    )
    ref: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="Pull request, issue or decision record behind the change"
    )
    receipt_digest: Sha256 | None = Field(
        default=None, description="The verified receipt that evidences the change, if one was given"
    )


class RegistryEntry(Strict):
    """One migration in the registry."""

    migration_id: Annotated[str, StringConstraints(pattern=ID_PATTERN)] = Field(
        description="The migration id; never reused or deleted"
    )
    type: MigrationType = Field(description="The store kind; must match the id prefix")
    path: RelPath = Field(description="Bundle folder, relative to the migrations root")
    owner: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Owner of the migration; the owner of its Airflow tasks"
    )
    status: Status = Field(description="The current status; must equal the last event's")
    superseded_by: Annotated[str, StringConstraints(pattern=ID_PATTERN)] | None = Field(
        default=None, description="The migration that replaces this one; set exactly when status is superseded"
    )
    conn_id: ConnId | None = Field(
        default=None, description="Airflow connection id; overrides the declaration's runner.conn_id"
    )
    schedule: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = Field(
        default=None, description="Cron schedule; search migrations only (recurring reindex flows)"
    )
    events: list[StatusEvent] = Field(min_length=1, description="Every status change, oldest first")


class Registry(Strict):
    """The migration registry, migrations/registry/migrations.v1.json."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal["migrations.v1"] = Field(alias="schema_version", description="The format version")
    migrations: list[RegistryEntry] = Field(description="Every migration, one entry each")


# ----------------------------------------------------------------------- baseline


class BaselineObject(Strict):
    """One object of a store as a digest; never its content."""

    id: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="Unique within the baseline, '<kind>:<name>', e.g. 'index:public.parcels_geom_idx'"
    )
    kind: Annotated[str, StringConstraints(min_length=1, max_length=60)] = Field(
        description="What the object is: table, column, index, policy, rows, alias, doc_count, constraint, nodes..."
    )
    schema_: str | None = Field(
        default=None,
        alias="schema",
        description="PostGIS: the object's schema. Graph: node or relationship. Search: unused",
    )
    table: str | None = Field(
        default=None, description="The table, index or alias it belongs to, or the labels (joined by |) on graph"
    )
    digest: Sha256 = Field(description="sha256 of the object's definition, computed by the store")
    protected: bool = Field(
        default=False, description="Part of the protected-domain fingerprint (a protected or forbidden object)"
    )


def trusted_baseline_object(
    oid: str, kind: str, schema: str | None, table: str | None, digest: str, protected: bool
) -> BaselineObject:
    """A BaselineObject from values a store's own catalog query produced, without validation.

    A 10,000-table catalog has 120k objects, and validating each one costs more than the
    SQL that computed it. This builds the instance ``model_validate`` would (a test holds
    them equal); use it only for values the store computed itself, never for input.
    """
    o = _new(BaselineObject)
    _put(
        o,
        "__dict__",
        {"id": oid, "kind": kind, "schema_": schema, "table": table, "digest": digest, "protected": protected},
    )
    _put(o, "__pydantic_fields_set__", _BASELINE_OBJECT_FIELDS)
    _put(o, "__pydantic_extra__", None)
    _put(o, "__pydantic_private__", None)
    return o


_new, _put = object.__new__, object.__setattr__


class _ObjectDocument(msgspec.Struct, gc=False):
    """One baseline object as ``baseline.v1`` writes it: the fields by alias, in the sorted
    order :func:`~airflow_kfm_migrations.util.digest.dump_json` writes them."""

    digest: str
    id: str
    kind: str
    protected: bool
    schema: str | None
    table: str | None


def baseline_json(baseline: Baseline) -> bytes:
    """The ``baseline.v1`` file's bytes: ``dump_json(baseline.model_dump(mode="json",
    by_alias=True))`` (a test holds the two equal), with the objects encoded from structs
    rather than dumped to dicts, since a 10,000-table catalog has 120k of them."""
    doc = baseline.model_dump(mode="json", by_alias=True, exclude={"objects"})
    doc["objects"] = [
        _ObjectDocument(o.digest, o.id, o.kind, o.protected, o.schema_, o.table) for o in baseline.objects
    ]
    return dump_json(doc)


_BASELINE_OBJECT_FIELDS = frozenset(BaselineObject.model_fields)


class Baseline(Strict):
    """A snapshot of a store: one digest per object, fingerprints and counts; never values."""

    schema_version: Literal["baseline.v1"] = Field(description="The format version")
    store: Literal["postgis", "search", "graph"] = Field(description="The store kind")
    migration_id: str = Field(description="The migration the baseline was taken for")
    store_version: str = Field(description="Server product and version")
    scope_digest: Sha256 = Field(description="sha256 of the declared scope the baseline was taken with")
    counts: dict[str, NonNegInt] = Field(description="Number of objects per kind")
    objects: list[BaselineObject] = Field(description="Every object, ordered by id")
    schema_fingerprint: Sha256 = Field(
        description="Merkle root over the ids and digests of the objects, leaving out PostGIS row digests, "
        "search document counts and graph counts and nodes"
    )
    protected_fingerprint: Sha256 = Field(description="Merkle root over the protected objects")
    protected_rows: dict[str, NonNegInt] = Field(
        default_factory=dict, description="Rows digested per protected table/index/label"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Store-specific, policy-safe facts")


# ---------------------------------------------------------------------- diff summary

Tier = Literal["hard_fail", "review_required", "informational"]


class DiffEntry(Strict):
    """One object that differs between the pre- and the post-baseline."""

    change: Literal["added", "removed", "changed"] = Field(description="What happened to the object")
    id: str = Field(description="The object's id in the baselines")
    kind: str = Field(description="The object's kind")
    schema_: str | None = Field(default=None, alias="schema", description="The object's schema field")
    table: str | None = Field(default=None, description="The object's table field")
    before: Sha256 | None = Field(default=None, description="Digest in the pre-baseline; null when added")
    after: Sha256 | None = Field(default=None, description="Digest in the post-baseline; null when removed")


class WriteCount(Strict):
    """Rows (PostGIS) or documents (search) one table or index received during the run."""

    table: str = Field(description="schema.table, or the index name")
    inserted: NonNegInt = Field(default=0, description="Rows or documents inserted")
    updated: NonNegInt = Field(default=0, description="Rows or documents updated")
    deleted: NonNegInt = Field(default=0, description="Rows or documents deleted")
    rewritten: bool = Field(default=False, description="Storage replaced (TRUNCATE, table rewrite)")


class LimitCheck(Strict):
    """One declared limit against what the run did."""

    name: str = Field(description="The limit, a field of the declaration's limits")
    declared: NonNegInt = Field(description="The declared value (0 when not declared)")
    observed: NonNegInt = Field(description="What the run did")
    ok: bool = Field(description="observed <= declared")


class Finding(Strict):
    """Something the plan or the gate found; docs/reference/findings.md lists every code."""

    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")] = Field(
        description="What was found; approvals name it as 'review:<code>'"
    )
    tier: Tier = Field(
        description="hard_fail refuses the run; review_required refuses it unless an approval covers it; "
        "informational is reported only"
    )
    message: str = Field(description="What happened, in one line")
    object: str | None = Field(default=None, description="The object, table, limit or statement concerned")
    approved_by: str | None = Field(
        default=None, description="Who approved a review_required finding, and the approval's ref"
    )


class DiffSummary(Strict):
    """The diff of a run and the gate's verdict on it."""

    schema_version: Literal["diff_summary.v1"] = Field(description="The format version")
    migration_id: str = Field(description="The migration")
    store: Literal["postgis", "search", "graph"] = Field(description="The store kind")
    pre_schema_fingerprint: Sha256 = Field(description="Schema fingerprint of the pre-baseline")
    post_schema_fingerprint: Sha256 = Field(description="Schema fingerprint of the post-baseline")
    pre_protected_fingerprint: Sha256 = Field(description="Protected-domain fingerprint of the pre-baseline")
    post_protected_fingerprint: Sha256 = Field(description="Protected-domain fingerprint of the post-baseline")
    changes: list[DiffEntry] = Field(description="Objects added, removed or changed, ordered by id")
    writes: list[WriteCount] = Field(
        default_factory=list, description="Tables or indices written, with the counts the store observed"
    )
    limits: list[LimitCheck] = Field(description="Every limit the store checks, declared against observed")
    findings: list[Finding] = Field(description="Everything the gate found, in three tiers")
    verdict: Literal["pass", "fail"] = Field(
        description="fail when there is a hard_fail, or a review_required finding no approval covers"
    )


# ------------------------------------------------------------------------ receipts

RunStatus = Literal["succeeded", "noop", "failed", "rolled_back", "rollback_failed"]


class DigestRef(Strict):
    """A file a run read or wrote, by its sha256."""

    path: str = Field(description="Inputs: relative to the bundle folder. Outputs: relative to the artifacts folder")
    sha256: Sha256 = Field(description="sha256 of the file's bytes")
    role: str = Field(
        description="declaration, forward, rollback, notes, ontology (inputs); baseline_pre, baseline_post, "
        "diff_summary, diff_touched, backfill_summary (outputs)"
    )


class ValidationCheck(Strict):
    """One check of the run, in the order they ran."""

    name: str = Field(description="policy, registry, approvals, static_plan, lock, ledger, drift, apply, gate...")
    passed: bool = Field(description="Whether the check passed")
    detail: str | None = Field(default=None, description="What was checked or why it failed")


class RunReceipt(Strict):
    """The record of one run: who, when, what went in and out, every check and the outcome."""

    schema_version: Literal["run_receipt.v1"] = Field(description="The format version")
    run_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(
        description="A random id of this run; the ledger records committed runs under it"
    )
    migration_id: str = Field(description="The migration")
    operation: Literal["apply", "rollback", "gc", "break_lock", "backfill"] = Field(description="What the run did")
    actor: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="KFM_ACTOR or user@cli for the CLI; airflow:<dag_id>/<run_id> in Airflow"
    )
    started_at: AwareDatetime = Field(description="When the run started")
    finished_at: AwareDatetime = Field(description="When the receipt was written")
    environment: Environment = Field(description="The environment the run was recorded against")
    status: RunStatus = Field(description="The outcome")
    reason: str | None = Field(default=None, description="Why the run ended as it did, when not plainly succeeded")
    store: dict[str, str] = Field(description="Store kind and Airflow connection id; never a DSN")
    registry: dict[str, str | bool | None] = Field(
        description="in_registry, the entry's status at run time, and a note when outside any registry"
    )
    bundle_path: str = Field(description="The bundle folder, relative to the artifacts folder")
    bundle_digest: Sha256 = Field(description="sha256 of the RFC 8785 form of the bundle's manifest of inputs")
    inputs: list[DigestRef] = Field(description="Every input file of the bundle")
    outputs: list[DigestRef] = Field(
        description="The files the run wrote (a no-op carries the previous run's outputs forward)"
    )
    validation: list[ValidationCheck] = Field(description="Every check of the run")
    policy: list[str] = Field(default_factory=list, description="Policy notes, e.g. drift or a lock broken by hand")
    metrics: dict[str, int | float | str] = Field(
        default_factory=dict, description="Numbers of the run: statements, durations, batches, documents..."
    )
    tool: dict[str, str] = Field(description="Name and version of the tool that wrote the receipt")
    previous_receipt_digest: Sha256 | None = Field(
        description="receipt_digest of the previous receipt in the same artifacts folder; null for the first"
    )
    receipt_digest: Sha256 | None = Field(
        default=None, description="sha256 of the RFC 8785 form of this receipt without this field"
    )


class ReceiptRef(Strict):
    """A pointer to the latest receipt (receipts/receipt_ref.json)."""

    schema_version: Literal["receipt_ref.v1"] = Field(description="The format version")
    migration_id: str = Field(description="The migration")
    run_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = Field(description="The run")
    status: RunStatus = Field(description="The run's outcome")
    receipt_digest: Sha256 = Field(description="The receipt's digest")
    uri: Annotated[str, StringConstraints(min_length=1, max_length=2000)] = Field(
        description="Where the receipt is kept: receipts/history/<receipt_digest>.json, relative to the "
        "artifacts folder"
    )
    created_at: AwareDatetime = Field(description="When the pointer was written")


CONTRACTS: dict[str, Any] = {
    "migration_declaration.v1": Declaration,
    "run_receipt.v1": RunReceipt,
    "baseline.v1": Baseline,
    "diff_summary.v1": DiffSummary,
    "receipt_ref.v1": ReceiptRef,
    "migrations.v1": Registry,
}
