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

from airflow_kfm_migrations.util.digest import dump_json

SCHEMA_BASE = "https://airflow-kfm-migrations.dev/schemas/"

MigrationType = Literal["postgis", "search", "graph", "other"]
TYPE_PREFIX: dict[str, str] = {"postgis": "PG", "search": "SEARCH", "graph": "GRAPH", "other": "OTHER"}
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
    """Schemas and tables. A table is ``name`` (any allowed schema) or ``schema.name``."""

    allowed_schemas: list[ObjectName] = Field(default_factory=list)
    allowed_tables: list[ObjectName] = Field(default_factory=list)
    forbidden_schemas: list[ObjectName] = Field(default_factory=list)
    forbidden_tables: list[ObjectName] = Field(default_factory=list)
    protected_schemas: list[ObjectName] = Field(default_factory=list)
    protected_tables: list[ObjectName] = Field(default_factory=list)
    protected_row_digest_max_rows: NonNegInt = Field(
        default=100_000, description="Cap on rows digested per protected table; above it the digest is refused"
    )


class SearchScope(Strict):
    allowed_index_patterns: list[ObjectName] = Field(default_factory=list)
    forbidden_index_patterns: list[ObjectName] = Field(default_factory=list)
    allowed_aliases: list[ObjectName] = Field(default_factory=list)
    forbidden_aliases: list[ObjectName] = Field(default_factory=list)
    protected_indices: list[ObjectName] = Field(default_factory=list)


class GraphScope(Strict):
    allowed_labels: list[ObjectName] = Field(default_factory=list)
    forbidden_labels: list[ObjectName] = Field(default_factory=list)
    allowed_relationship_types: list[ObjectName] = Field(default_factory=list)
    forbidden_relationship_types: list[ObjectName] = Field(default_factory=list)
    protected_labels: list[ObjectName] = Field(default_factory=list)


class OtherScope(Strict):
    allowed: list[ObjectName] = Field(default_factory=list)
    forbidden: list[ObjectName] = Field(default_factory=list)


# -------------------------------------------------------------------------- limits
# An undeclared limit is 0: nothing of that kind may change (fail closed).


class PostgisLimits(Strict):
    max_table_count_touched: NonNegInt = 0
    max_index_count_delta: NonNegInt = 0
    max_row_backfill: NonNegInt = 0
    max_constraint_delta: NonNegInt = 0


class SearchLimits(Strict):
    max_index_count_delta: NonNegInt = 0
    max_docs_reindexed: NonNegInt = 0


class GraphLimits(Strict):
    max_nodes_changed: NonNegInt = 0
    max_relationships_changed: NonNegInt = 0
    max_schema_delta: NonNegInt = 0


class OtherLimits(Strict):
    max_objects_touched: NonNegInt = 0


# ----------------------------------------------------------------------- approvals


class RecordedApproval(Strict):
    by: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    at: AwareDatetime
    ref: Annotated[str, StringConstraints(min_length=1, max_length=500)] = Field(
        description="Issue, ADR or decision record that holds the approval"
    )
    covers: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        description="Finding codes or objects this approval explicitly covers, e.g. "
        "'review:index_on_large_table' or 'protected:public.authority_sites'",
    )


class Approvals(Strict):
    required_reviewers: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(min_length=1)
    change_class: ChangeClass
    recorded: list[RecordedApproval] = Field(default_factory=list)


# -------------------------------------------------------------------------- runner


class Runner(Strict):
    tool: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    command: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None
    conn_id: ConnId | None = Field(default=None, description="Airflow connection id of the target store")
    environment: list[SecretRefName] = Field(
        default_factory=list, description="Names of secret references; never secret values"
    )


# ------------------------------------------------------------------------ artifacts


class BaselinePaths(Strict):
    pre: RelPath = "baselines/pre.json"
    post: RelPath = "baselines/post.json"


class DiffPaths(Strict):
    summary: RelPath = "diffs/summary.json"
    touched: RelPath = "diffs/touched.csv"


class ReceiptPaths(Strict):
    run_receipt: RelPath = "receipts/run_receipt.json"
    prov: RelPath | None = "receipts/prov.jsonld"
    receipt_ref: RelPath | None = None


class Artifacts(Strict):
    forward: list[RelPath] = Field(min_length=1)
    rollback: list[RelPath] = Field(default_factory=list)
    baselines: BaselinePaths = Field(default_factory=BaselinePaths)
    diffs: DiffPaths = Field(default_factory=DiffPaths)
    receipts: ReceiptPaths = Field(default_factory=ReceiptPaths)
    notes: RelPath | None = None


class Timeouts(Strict):
    lock_timeout: PgInterval = "5s"
    statement_timeout: PgInterval = "15min"


class Backfill(Strict):
    """A bounded, batched data change run after the schema part (postgis only)."""

    table: ObjectName
    key_column: ObjectName
    set: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None
    sql_template: Annotated[str, StringConstraints(min_length=1, max_length=20000)] | None = None
    where: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=1_000_000, strict=True)] = 5000
    pause_ms: NonNegInt = 0
    max_rows: NonNegInt
    lock_timeout: PgInterval | None = None
    rollback_set: Annotated[str, StringConstraints(min_length=1, max_length=4000)] | None = None
    verify_columns: list[ObjectName] = Field(default_factory=list)

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
    exclusive_labels: list[tuple[ObjectName, ObjectName]] = Field(default_factory=list)
    required_relationships: list[RequiredRelationship] = Field(default_factory=list)
    required_constraints: list[ObjectName] = Field(default_factory=list)
    ontology_file: RelPath | None = None


class RequiredRelationship(Strict):
    label: ObjectName
    type: ObjectName
    direction: Literal["out", "in", "any"] = "out"


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

    intent: Annotated[str, StringConstraints(min_length=10, max_length=2000)]
    requires_rollback: Annotated[bool, Field(strict=True)]
    approvals: Approvals
    runner: Runner
    artifacts: Artifacts
    transactional: Annotated[bool, Field(strict=True)] = True
    non_transactional_reason: Annotated[str, StringConstraints(min_length=10, max_length=2000)] | None = None
    timeouts: Timeouts = Field(default_factory=Timeouts)

    @model_validator(mode="after")
    def _conditional(self) -> Any:
        if self.transactional is False and not self.non_transactional_reason:
            raise ValueError("transactional: false needs non_transactional_reason")
        if self.requires_rollback and not self.artifacts.rollback:
            raise ValueError("requires_rollback: true needs at least one artifacts.rollback entry")
        return self


class PostgisDeclaration(_DeclarationBase):
    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("PG"))]
    type: Literal["postgis"]
    scope: PostgisScope
    limits: PostgisLimits
    backfill: Backfill | None = None


class SearchDeclaration(_DeclarationBase):
    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("SEARCH"))]
    type: Literal["search"]
    scope: SearchScope
    limits: SearchLimits
    old_index_retention_days: NonNegInt = 7


class GraphDeclaration(_DeclarationBase):
    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("GRAPH"))]
    type: Literal["graph"]
    scope: GraphScope
    limits: GraphLimits
    invariants: GraphInvariants = Field(default_factory=GraphInvariants)


class OtherDeclaration(_DeclarationBase):
    migration_id: Annotated[str, StringConstraints(pattern=_id_pattern("OTHER"))]
    type: Literal["other"]
    scope: OtherScope
    limits: OtherLimits


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
    status: Status
    at: AwareDatetime
    actor: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    ref: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    receipt_digest: Sha256 | None = None


class RegistryEntry(Strict):
    migration_id: Annotated[str, StringConstraints(pattern=ID_PATTERN)]
    type: MigrationType
    path: RelPath = Field(description="Bundle folder, relative to the migrations root")
    owner: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    status: Status
    superseded_by: Annotated[str, StringConstraints(pattern=ID_PATTERN)] | None = None
    conn_id: ConnId | None = None
    schedule: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = Field(
        default=None, description="Cron schedule; search migrations only (recurring reindex flows)"
    )
    events: list[StatusEvent] = Field(min_length=1)


class Registry(Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal["migrations.v1"] = Field(alias="schema_version")
    migrations: list[RegistryEntry]


# ----------------------------------------------------------------------- baseline


class BaselineObject(Strict):
    id: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    kind: Annotated[str, StringConstraints(min_length=1, max_length=60)]
    schema_: str | None = Field(default=None, alias="schema")
    table: str | None = None
    digest: Sha256
    protected: bool = False


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
    schema_version: Literal["baseline.v1"]
    store: Literal["postgis", "search", "graph"]
    migration_id: str
    store_version: str
    scope_digest: Sha256
    counts: dict[str, NonNegInt]
    objects: list[BaselineObject]
    schema_fingerprint: Sha256
    protected_fingerprint: Sha256
    protected_rows: dict[str, NonNegInt] = Field(
        default_factory=dict, description="Rows digested per protected table/index/label"
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Store-specific, policy-safe facts")


# ---------------------------------------------------------------------- diff summary

Tier = Literal["hard_fail", "review_required", "informational"]


class DiffEntry(Strict):
    change: Literal["added", "removed", "changed"]
    id: str
    kind: str
    schema_: str | None = Field(default=None, alias="schema")
    table: str | None = None
    before: Sha256 | None = None
    after: Sha256 | None = None


class WriteCount(Strict):
    table: str
    inserted: NonNegInt = 0
    updated: NonNegInt = 0
    deleted: NonNegInt = 0
    rewritten: bool = Field(default=False, description="Storage replaced (TRUNCATE, table rewrite)")


class LimitCheck(Strict):
    name: str
    declared: NonNegInt
    observed: NonNegInt
    ok: bool


class Finding(Strict):
    code: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]
    tier: Tier
    message: str
    object: str | None = None
    approved_by: str | None = None


class DiffSummary(Strict):
    schema_version: Literal["diff_summary.v1"]
    migration_id: str
    store: Literal["postgis", "search", "graph"]
    pre_schema_fingerprint: Sha256
    post_schema_fingerprint: Sha256
    pre_protected_fingerprint: Sha256
    post_protected_fingerprint: Sha256
    changes: list[DiffEntry]
    writes: list[WriteCount] = Field(default_factory=list)
    limits: list[LimitCheck]
    findings: list[Finding]
    verdict: Literal["pass", "fail"]


# ------------------------------------------------------------------------ receipts

RunStatus = Literal["succeeded", "noop", "failed", "rolled_back", "rollback_failed"]


class DigestRef(Strict):
    path: str
    sha256: Sha256
    role: str


class ValidationCheck(Strict):
    name: str
    passed: bool
    detail: str | None = None


class RunReceipt(Strict):
    schema_version: Literal["run_receipt.v1"]
    run_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    migration_id: str
    operation: Literal["apply", "rollback", "gc", "break_lock", "backfill"]
    actor: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    started_at: AwareDatetime
    finished_at: AwareDatetime
    environment: Environment
    status: RunStatus
    reason: str | None = None
    store: dict[str, str] = Field(description="Store kind and Airflow connection id; never a DSN")
    registry: dict[str, str | bool | None]
    bundle_path: str = Field(description="The bundle folder, relative to the artifacts folder")
    bundle_digest: Sha256
    inputs: list[DigestRef]
    outputs: list[DigestRef]
    validation: list[ValidationCheck]
    policy: list[str] = Field(default_factory=list)
    metrics: dict[str, int | float | str] = Field(default_factory=dict)
    tool: dict[str, str]
    previous_receipt_digest: Sha256 | None
    receipt_digest: Sha256 | None = Field(
        default=None, description="sha256 of the RFC 8785 form of this receipt without this field"
    )


class ReceiptRef(Strict):
    schema_version: Literal["receipt_ref.v1"]
    migration_id: str
    run_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    status: RunStatus
    receipt_digest: Sha256
    uri: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    created_at: AwareDatetime


CONTRACTS: dict[str, Any] = {
    "migration_declaration.v1": Declaration,
    "run_receipt.v1": RunReceipt,
    "baseline.v1": Baseline,
    "diff_summary.v1": DiffSummary,
    "receipt_ref.v1": ReceiptRef,
    "migrations.v1": Registry,
}
