"""Pydantic v2 models: the single source of truth for every contract.

The models live in ``types`` (shared building blocks), ``declarations`` (``migration.yml``)
and ``records`` (registry, baselines, diffs, receipts); this module names them all and
holds the table of contracts.

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

from typing import Any

from airflow_kfm_migrations.contracts.declarations import (
    AnyDeclaration,
    Approvals,
    Artifacts,
    Backfill,
    BaselinePaths,
    Declaration,
    DiffPaths,
    GraphDeclaration,
    GraphInvariants,
    GraphLimits,
    GraphScope,
    OtherDeclaration,
    OtherLimits,
    OtherScope,
    PostgisDeclaration,
    PostgisLimits,
    PostgisScope,
    ReceiptPaths,
    RecordedApproval,
    RequiredRelationship,
    Runner,
    SearchDeclaration,
    SearchLimits,
    SearchScope,
    Timeouts,
)
from airflow_kfm_migrations.contracts.records import (
    Baseline,
    BaselineObject,
    DiffEntry,
    DiffSummary,
    DigestRef,
    Finding,
    LimitCheck,
    ReceiptRef,
    Registry,
    RegistryEntry,
    RunReceipt,
    RunStatus,
    Status,
    StatusEvent,
    Tier,
    ValidationCheck,
    WriteCount,
    baseline_json,
    trusted_baseline_object,
)
from airflow_kfm_migrations.contracts.types import (
    ID_PATTERN,
    SCHEMA_BASE,
    TYPE_PREFIX,
    ChangeClass,
    ConnId,
    Environment,
    MigrationType,
    NonNegInt,
    ObjectName,
    PgInterval,
    RelPath,
    SecretRefName,
    Sha256,
    Strict,
    Text,
)

CONTRACTS: dict[str, Any] = {
    "migration_declaration.v1": Declaration,
    "run_receipt.v1": RunReceipt,
    "baseline.v1": Baseline,
    "diff_summary.v1": DiffSummary,
    "receipt_ref.v1": ReceiptRef,
    "migrations.v1": Registry,
}

__all__ = [
    "CONTRACTS",
    "ID_PATTERN",
    "SCHEMA_BASE",
    "TYPE_PREFIX",
    "AnyDeclaration",
    "Approvals",
    "Artifacts",
    "Backfill",
    "Baseline",
    "BaselineObject",
    "BaselinePaths",
    "ChangeClass",
    "ConnId",
    "Declaration",
    "DiffEntry",
    "DiffPaths",
    "DiffSummary",
    "DigestRef",
    "Environment",
    "Finding",
    "GraphDeclaration",
    "GraphInvariants",
    "GraphLimits",
    "GraphScope",
    "LimitCheck",
    "MigrationType",
    "NonNegInt",
    "ObjectName",
    "OtherDeclaration",
    "OtherLimits",
    "OtherScope",
    "PgInterval",
    "PostgisDeclaration",
    "PostgisLimits",
    "PostgisScope",
    "ReceiptPaths",
    "ReceiptRef",
    "RecordedApproval",
    "Registry",
    "RegistryEntry",
    "RelPath",
    "RequiredRelationship",
    "RunReceipt",
    "RunStatus",
    "Runner",
    "SearchDeclaration",
    "SearchLimits",
    "SearchScope",
    "SecretRefName",
    "Sha256",
    "Status",
    "StatusEvent",
    "Strict",
    "Text",
    "Tier",
    "Timeouts",
    "ValidationCheck",
    "WriteCount",
    "baseline_json",
    "trusted_baseline_object",
]
