"""Run receipts: schema-valid, secret-free, content-addressed and chained.

Layout under the artifacts folder:
    receipts/run_receipt.json              the latest receipt
    receipts/history/<receipt_digest>.json every receipt, content-addressed
    receipts/receipt_ref.json              pointer to the latest (receipt_ref.v1)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow_kfm_migrations import __version__
from airflow_kfm_migrations.contracts.models import DigestRef, ReceiptRef, RunReceipt, ValidationCheck
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.errors import RefusedError
from airflow_kfm_migrations.util.digest import digest_json, dump_json, sha256_file, write_bytes_atomic
from airflow_kfm_migrations.util.secret_scan import scan_text

RECEIPT = Path("receipts/run_receipt.json")
HISTORY = Path("receipts/history")
REF = Path("receipts/receipt_ref.json")


def receipt_digest(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "receipt_digest"}
    return digest_json(body)


def previous_digest(artifacts_dir: Path) -> str | None:
    path = artifacts_dir / RECEIPT
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        dig = doc.get("receipt_digest")
        return dig if isinstance(dig, str) and len(dig) == 64 else None
    except (OSError, ValueError):
        return None


def carried_outputs(artifacts_dir: Path) -> list[DigestRef]:
    """The outputs listed by the latest receipt (for a no-op that wrote none of its own)."""
    path = artifacts_dir / RECEIPT
    if not path.exists():
        return []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return [DigestRef.model_validate(r) for r in doc.get("outputs", [])]
    except (OSError, ValueError):
        return []


def bundle_path(bundle: Bundle) -> str:
    """Where the bundle lives in its migrations root, ``<type>/<id>``: the same wherever the
    root is checked out and wherever the artifacts go (verify finds it from there, or is
    told with ``--bundle``)."""
    root = bundle.root.resolve()
    return f"{root.parent.name}/{root.name}"


def input_refs(bundle: Bundle) -> list[DigestRef]:
    return [DigestRef(path=a.rel, sha256=a.sha256, role=a.role) for a in bundle.artifacts]


def output_refs(artifacts_dir: Path, files: Iterable[tuple[str, Path]]) -> list[DigestRef]:
    out = []
    for role, path in files:
        if path.exists():
            out.append(DigestRef(path=path.relative_to(artifacts_dir).as_posix(), sha256=sha256_file(path), role=role))
    return out


def write_receipt(
    artifacts_dir: Path,
    bundle: Bundle,
    *,
    run_id: str,
    operation: str,
    actor: str,
    started_at: datetime,
    environment: str,
    status: str,
    reason: str | None,
    store: dict[str, str],
    registry: dict[str, str | bool | None],
    outputs: list[DigestRef],
    validation: list[ValidationCheck],
    policy: list[str],
    metrics: dict[str, int | float | str],
) -> tuple[Path, RunReceipt]:
    doc: dict[str, Any] = {
        "schema_version": "run_receipt.v1",
        "run_id": run_id,
        "migration_id": bundle.migration_id,
        "operation": operation,
        "actor": actor,
        "started_at": started_at.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "environment": environment,
        "status": status,
        "reason": reason,
        "store": store,
        "registry": registry,
        "bundle_path": bundle_path(bundle),
        "bundle_digest": bundle.digest,
        "inputs": [r.model_dump(mode="json") for r in input_refs(bundle)],
        "outputs": [r.model_dump(mode="json") for r in outputs],
        "validation": [v.model_dump(mode="json") for v in validation],
        "policy": policy,
        "metrics": metrics,
        "tool": {"name": "airflow-kfm-migrations", "version": __version__},
        "previous_receipt_digest": previous_digest(artifacts_dir),
    }
    doc["receipt_digest"] = receipt_digest(doc)
    receipt = RunReceipt.model_validate(doc)  # schema-valid or a bug: never write an invalid receipt
    data = dump_json(doc)
    leaks = scan_text(data.decode(), "run_receipt.json")
    if leaks:
        raise RefusedError("refusing to write a receipt that contains a secret: " + leaks[0].message())
    write_bytes_atomic(artifacts_dir / HISTORY / f"{doc['receipt_digest']}.json", data)
    write_bytes_atomic(artifacts_dir / RECEIPT, data)
    write_bytes_atomic(artifacts_dir / REF, receipt_ref(doc))
    return artifacts_dir / RECEIPT, receipt


def receipt_ref(doc: dict[str, Any], *, base: str | None = None, uri: str | None = None) -> bytes:
    """The ``receipt_ref.v1`` pointer to the receipt ``doc``: its ``uri`` is
    ``receipts/history/<digest>.json`` relative to the artifacts folder, or under ``base``
    (the folder's absolute URL in an object store), or ``uri`` as given."""
    rel = (HISTORY / f"{doc['receipt_digest']}.json").as_posix()
    ref = ReceiptRef(
        schema_version="receipt_ref.v1",
        migration_id=doc["migration_id"],
        run_id=doc["run_id"],
        status=doc["status"],
        receipt_digest=doc["receipt_digest"],
        uri=uri or (f"{base.rstrip('/')}/{rel}" if base else rel),
        created_at=datetime.now(UTC),
    )
    return dump_json(ref.model_dump(mode="json"))


def output_of_run(artifacts_dir: Path, run_id: str, role: str) -> Path | None:
    """The file with ``role`` that the receipt of ``run_id`` lists, when that receipt is in
    this artifacts folder's chain and the file is still unchanged; else None."""
    path = artifacts_dir / RECEIPT
    seen: set[str] = set()
    while path.is_file():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if doc.get("run_id") == run_id:
            for ref in doc.get("outputs", []):
                f = artifacts_dir / str(ref.get("path", ""))
                if ref.get("role") == role and f.is_file() and sha256_file(f) == ref.get("sha256"):
                    return f
            return None
        prev = doc.get("previous_receipt_digest")
        if not isinstance(prev, str) or prev in seen:
            return None
        seen.add(prev)
        path = artifacts_dir / HISTORY / f"{prev}.json"
    return None
