"""What runs produce and keep: the registry, baselines, diffs, findings, receipts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from pydantic import AwareDatetime, ConfigDict, Field, StringConstraints

from airflow_kfm_migrations.contracts.types import (
    ID_PATTERN,
    ConnId,
    Environment,
    MigrationType,
    NonNegInt,
    RelPath,
    Sha256,
    Strict,
)
from airflow_kfm_migrations.util.digest import dump_json

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
        description="Merkle root over the ids and digests of the objects, leaving out PostGIS row digests and "
        "database- and cluster-level objects (see global_fingerprint), search document counts and graph counts "
        "and nodes"
    )
    global_fingerprint: Sha256 | None = Field(
        default=None,
        description="PostGIS: Merkle root over the database- and cluster-level objects (the database's own "
        "settings, roles, other databases, tablespaces, casts, event triggers, built-in privileges...), which "
        "other sessions on the server change too and the schema fingerprint therefore leaves out. Null for the "
        "other stores, and in baselines of releases whose schema fingerprint still covered them",
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
    bundle_path: str = Field(
        description="The bundle folder, relative to its migrations root (<type>/<id>); receipts of earlier "
        "releases hold it relative to the artifacts folder"
    )
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
        "artifacts folder when that folder is local; when the artifacts are in an object store, the "
        "receipt's absolute URL (s3://<conn_id>@<bucket>/<prefix>/<migration_id>/receipts/history/"
        "<receipt_digest>.json, gs://..., file://...), whose userinfo names an Airflow connection, never a "
        "credential"
    )
    created_at: AwareDatetime = Field(description="When the pointer was written")
