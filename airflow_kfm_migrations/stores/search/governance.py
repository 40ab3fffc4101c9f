"""The governance index (``.kfm-governance``): a hidden index in the cluster itself that
holds the migration lock documents (:mod:`.lock`), one ledger document per applied or
rolled-back run, and records of ``gc`` and ``break-lock``. This module creates the index
and reads and writes the ledger documents."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from airflow_kfm_migrations.stores.base import LedgerRecord
from airflow_kfm_migrations.stores.search.client import CallError, SearchClient

GOVERNANCE_INDEX = ".kfm-governance"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def ensure_governance_index(client: SearchClient) -> None:
    """Create the governance index unless it exists (a concurrent creation is fine)."""
    if client.index_exists(GOVERNANCE_INDEX):
        return
    try:
        client.create_index(
            GOVERNANCE_INDEX,
            {
                "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1", "hidden": True},
                "mappings": {
                    "dynamic": False,
                    "properties": {
                        "type": {"type": "keyword"},
                        "migration_id": {"type": "keyword"},
                        "run_id": {"type": "keyword"},
                        "operation": {"type": "keyword"},
                        "applied_at": {"type": "date"},
                        "applied_ns": {"type": "long"},
                    },
                },
            },
        )
    except CallError as exc:
        if exc.kind != "resource_already_exists_exception":
            raise


def ledger_doc_id(migration_id: str, run_id: str) -> str:
    return f"ledger:{migration_id}:{run_id}"


def read_entry(client: SearchClient, migration_id: str, run_id: str) -> dict[str, Any] | None:
    """The ledger document of one run, read without locks or writes."""
    if not client.index_exists(GOVERNANCE_INDEX):
        return None
    doc = client.get_doc(GOVERNANCE_INDEX, ledger_doc_id(migration_id, run_id))
    return dict(doc["_source"]) if doc is not None else None


def last_entry(client: SearchClient, migration_id: str) -> dict[str, Any] | None:
    """The raw last ledger document of ``migration_id`` (apply or rollback)."""
    if not client.index_exists(GOVERNANCE_INDEX):
        return None
    client.refresh(GOVERNANCE_INDEX)
    hits = client.search(
        GOVERNANCE_INDEX,
        {
            "size": 1,
            "query": {
                "bool": {
                    "filter": [
                        {"term": {"type": "ledger"}},
                        {"term": {"migration_id": migration_id}},
                    ]
                }
            },
            "sort": [
                {"applied_at": {"order": "desc", "unmapped_type": "date"}},
                {"applied_ns": {"order": "desc", "unmapped_type": "long"}},
            ],
        },
    )
    return dict(hits[0]["_source"]) if hits else None


MAX_ENTRIES = 10_000  # the search window of one request: more ledger documents than that are not listed


def entries(client: SearchClient, migration_id: str | None) -> list[LedgerRecord]:
    """Every ledger document (of ``migration_id``, or all), newest first; read-only."""
    if not client.index_exists(GOVERNANCE_INDEX):
        return []
    client.refresh(GOVERNANCE_INDEX)
    filters: list[dict[str, Any]] = [{"term": {"type": "ledger"}}]
    if migration_id:
        filters.append({"term": {"migration_id": migration_id}})
    hits = client.search(
        GOVERNANCE_INDEX,
        {
            "size": MAX_ENTRIES,
            "query": {"bool": {"filter": filters}},
            "sort": [
                {"applied_at": {"order": "desc", "unmapped_type": "date"}},
                {"applied_ns": {"order": "desc", "unmapped_type": "long"}},
            ],
        },
    )
    return [record_of(dict(h["_source"])) for h in hits]


def record_of(src: dict[str, Any]) -> LedgerRecord:
    """The :class:`LedgerRecord` fields of a ledger document."""
    names = LedgerRecord.__dataclass_fields__
    return LedgerRecord(**{k: v for k, v in src.items() if k in names})


def write_entry(client: SearchClient, rec: LedgerRecord, extra: dict[str, Any]) -> None:
    """Write the ledger document of ``rec``, stamped now, with the search-specific ``extra``."""
    now = datetime.now(UTC)
    doc = {
        **rec.__dict__,
        "applied_at": now.isoformat(),
        "applied_ns": time.time_ns(),
        "type": "ledger",
        **extra,
    }
    client.index_doc(GOVERNANCE_INDEX, ledger_doc_id(rec.migration_id, rec.run_id), doc, refresh=True)


def set_receipt_digest(client: SearchClient, migration_id: str, run_id: str, digest: str) -> None:
    """Add the receipt's digest to the ledger document of ``run_id`` (if there is one)."""
    doc_id = ledger_doc_id(migration_id, run_id)
    cur = client.get_doc(GOVERNANCE_INDEX, doc_id)
    if cur is None:
        return
    src = dict(cur["_source"])
    src["receipt_digest"] = digest
    client.index_doc(
        GOVERNANCE_INDEX,
        doc_id,
        src,
        if_seq_no=cur["_seq_no"],
        if_primary_term=cur["_primary_term"],
        refresh=True,
    )
