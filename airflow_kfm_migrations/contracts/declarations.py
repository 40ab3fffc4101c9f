"""The migration declaration (``migration.yml``): one model per store kind."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, ConfigDict, Field, StringConstraints, model_validator

from airflow_kfm_migrations.contracts.types import (
    ID_PATTERN,
    ChangeClass,
    ConnId,
    NonNegInt,
    ObjectName,
    PgInterval,
    RelPath,
    SecretRefName,
    Strict,
    id_pattern,
)

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
        "'review:index_on_large_table', 'protected:public.authority_sites' or (PostGIS: reading a forbidden "
        "table, or copying rows out of a protected one) 'read:public.authority_sites'",
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
    requires: list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]] = Field(
        default_factory=list,
        description="Migrations of the same type that must be applied in the target store before this one. "
        "kfm-migrations migrate applies them first; a run, and the Airflow preflight, refuses while one is "
        "not applied there. validate refuses unknown ids, cycles and ids of another type",
    )

    @model_validator(mode="after")
    def _conditional(self) -> Any:
        if self.transactional is False and not self.non_transactional_reason:
            raise ValueError("transactional: false needs non_transactional_reason")
        if self.requires_rollback and not self.artifacts.rollback:
            raise ValueError("requires_rollback: true needs at least one artifacts.rollback entry")
        return self


class PostgisDeclaration(_DeclarationBase):
    """A PostgreSQL/PostGIS migration: SQL scripts, run in one transaction unless declared otherwise."""

    migration_id: Annotated[str, StringConstraints(pattern=id_pattern("PG"))] = Field(
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

    migration_id: Annotated[str, StringConstraints(pattern=id_pattern("SEARCH"))] = Field(
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
    protect_with_write_block: Annotated[bool, Field(strict=True)] = Field(
        default=False,
        description="true: every existing protected index that no approval covers gets "
        "index.blocks.write: true for the duration of the run (writes into it are refused, the run's and "
        "every other client's), and its previous setting back when the run ends, also after a failure; a "
        "killed run's blocks are lifted by the next run. false: a write into a protected index is detected "
        "(write counters) and fails the run, but not prevented",
    )


class GraphDeclaration(_DeclarationBase):
    """A Neo4j migration: Cypher scripts, each statement in its own transaction."""

    migration_id: Annotated[str, StringConstraints(pattern=id_pattern("GRAPH"))] = Field(
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

    migration_id: Annotated[str, StringConstraints(pattern=id_pattern("OTHER"))] = Field(
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
