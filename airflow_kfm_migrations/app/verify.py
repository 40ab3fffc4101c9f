"""Verify a receipt: every digest, the content-addressed history and the chain (files),
and, given a connection, the store's ledger as an independent witness."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from airflow_kfm_migrations.contracts import adapter
from airflow_kfm_migrations.declaration.bundle import DECLARATION_FILE, display, pydantic_problems
from airflow_kfm_migrations.engine.receipts import HISTORY, RECEIPT, receipt_digest
from airflow_kfm_migrations.engine.run import RUNS
from airflow_kfm_migrations.errors import InputError, VerifyMismatch
from airflow_kfm_migrations.kinds import KINDS, kind_of_prefix
from airflow_kfm_migrations.stores.base import open_store
from airflow_kfm_migrations.util.digest import digest_json, sha256_bytes, sha256_file


def load_receipt(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(display(path), "-", "no such receipt") from None
    except (UnicodeDecodeError, ValueError) as exc:
        # The file is there but no longer parses: for a verifier that is a failed check
        # (a truncated or tampered receipt), not a usage error.
        raise VerifyMismatch(f"the receipt is not valid JSON any more ({exc})", file=display(path)) from None
    if not isinstance(doc, dict):
        raise VerifyMismatch("the receipt is not a JSON object", file=display(path))
    try:
        adapter("run_receipt.v1").validate_python(doc)
    except ValidationError as exc:
        first = pydantic_problems(exc, display(path), tagged=False)[0]
        raise VerifyMismatch(
            f"receipt is not schema-valid: {first.field}: {first.reason}", file=display(path)
        ) from None
    return doc


def _inside(root: Path, rel: str, receipt: Path) -> Path:
    """``root / rel``, refusing a path that leaves ``root``: a receipt only ever lists files
    of its bundle and its artifacts folder, so anything else is a forgery."""
    f = root / rel
    resolved, base = f.resolve(), root.resolve()
    if Path(rel).is_absolute() or (resolved != base and base not in resolved.parents):
        raise VerifyMismatch(f"the receipt lists a file outside its folder: {rel}", file=display(receipt))
    return f


def receipt_file(target: Path) -> Path:
    """The receipt a ``verify`` target names: the file, or the artifacts folder's latest."""
    return target / RECEIPT if target.is_dir() else target


def bundle_dir_of(path: Path, doc: dict[str, Any], bundle: Path | None = None) -> Path:
    """The bundle folder a receipt's inputs are read from.

    ``bundle`` (``--bundle PATH``) wins. Otherwise the receipt's ``bundle_path`` says where:
    ``<type>/<id>``, relative to the migrations root (this release), found as the artifacts
    folder itself (the default), or under a folder above it or under the working directory
    (each also as ``<folder>/migrations``); or, in receipts of earlier releases, a path
    relative to the artifacts folder (``.``, ``../../migrations/postgis/<id>``)."""
    if bundle is not None:
        return bundle
    rel = str(doc["bundle_path"])
    artifacts_dir = artifacts_dir_of(path)
    pure = PurePosixPath(rel)
    candidates: list[Path] = []
    if not pure.is_absolute() and ".." not in pure.parts and pure.parts:
        here = artifacts_dir.resolve()
        if here.parts[-len(pure.parts) :] == pure.parts:
            candidates.append(artifacts_dir)
        for base in [*here.parents, Path.cwd()]:
            candidates += [base / rel, base / "migrations" / rel]
    candidates.append(artifacts_dir / rel)  # the earlier form, relative to the artifacts folder
    found = next((c for c in candidates if (c / DECLARATION_FILE).is_file()), None)
    if found is None:
        found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise VerifyMismatch(
            f"cannot find the bundle {rel} of this receipt (looked at the artifacts folder, above it and under "
            "the working directory); pass --bundle PATH",
            file=display(path),
        )
    return found


def verify(target: Path, *, bundle: Path | None = None) -> list[str]:
    """Recompute every digest; raise VerifyMismatch naming the first mismatching artifact.
    ``bundle``: the bundle folder, when it is not where the receipt's ``bundle_path`` says."""
    path = receipt_file(target)
    artifacts_dir = artifacts_dir_of(path)
    doc = load_receipt(path)
    checked: list[str] = []
    if receipt_digest(doc) != doc.get("receipt_digest"):
        raise VerifyMismatch("receipt_digest does not match the receipt's content", file=display(path))
    stored = artifacts_dir / HISTORY / f"{doc['receipt_digest']}.json"
    if not stored.is_file() or stored.read_bytes() != path.read_bytes():
        raise VerifyMismatch("the receipt is not the one kept in its content-addressed history", file=display(path))
    checked.append(f"receipt {doc['receipt_digest'][:12]}")
    bundle_dir = bundle_dir_of(path, doc, bundle).resolve()
    manifest_artifacts = {}
    for ref in doc["inputs"]:
        f = _inside(bundle_dir, ref["path"], path)
        if not f.is_file():
            raise VerifyMismatch("input artifact is missing", file=display(f))
        data = f.read_bytes()
        if sha256_bytes(data) != ref["sha256"]:
            raise VerifyMismatch("input artifact changed since the run (sha256 mismatch)", file=display(f))
        manifest_artifacts[ref["path"]] = {"role": ref["role"], "sha256": ref["sha256"]}
        checked.append(f"input {ref['path']}")
    if not any(r["path"] == DECLARATION_FILE for r in doc["inputs"]):
        raise VerifyMismatch("the receipt lists no declaration input", file=display(path))
    manifest = {"migration_id": doc["migration_id"], "type": _type_of(doc), "artifacts": manifest_artifacts}
    if digest_json(manifest) != doc["bundle_digest"]:
        raise VerifyMismatch("bundle_digest does not match the listed inputs", file=display(path))
    latest = _is_latest(artifacts_dir, doc["receipt_digest"])
    for ref in doc["outputs"]:
        f = _inside(artifacts_dir, ref["path"], path)
        if not f.is_file():
            raise VerifyMismatch("output artifact is missing", file=display(f))
        if sha256_file(f) != ref["sha256"]:
            raise VerifyMismatch("output artifact changed since the run (sha256 mismatch)", file=display(f))
        checked.append(f"output {ref['path']}")
        view = _latest_view(artifacts_dir, ref["path"]) if latest else None
        if view is not None and view.is_file() and sha256_file(view) != ref["sha256"]:
            raise VerifyMismatch(
                "the latest run's view differs from the output its receipt lists (sha256 mismatch)",
                file=display(view),
            )
    # The chain: each previous receipt must exist (content-addressed) and verify itself.
    prev = doc.get("previous_receipt_digest")
    seen = {doc["receipt_digest"]}
    while prev:
        if prev in seen:
            raise VerifyMismatch("receipt chain has a cycle", file=display(path))
        seen.add(prev)
        pf = artifacts_dir / HISTORY / f"{prev}.json"
        if not pf.is_file():
            raise VerifyMismatch(f"previous receipt {prev[:12]} is missing from the chain", file=display(pf))
        pdoc = load_receipt(pf)
        if receipt_digest(pdoc) != prev or pdoc.get("receipt_digest") != prev:
            raise VerifyMismatch("previous receipt does not match its digest", file=display(pf))
        if pdoc["migration_id"] != doc["migration_id"]:
            raise VerifyMismatch("receipt chain mixes migrations", file=display(pf))
        checked.append(f"chain {prev[:12]}")
        prev = pdoc.get("previous_receipt_digest")
    return checked


def _type_of(doc: dict[str, Any]) -> str:
    store = doc.get("store", {}).get("kind")
    if store:
        return str(store)
    return kind_of_prefix(doc["migration_id"].split("-MIG-")[0]) or "other"


# Outcomes that commit a ledger entry in the store, and those that never do.
_LEDGERED = {"succeeded", "rolled_back"}


def verify_against_ledger(target: Path, conn_id: str, *, use_hook: bool = False) -> str:
    """Cross-check a receipt (already verified by :func:`verify`) with the store's ledger.

    File digests prove a receipt is internally consistent, not that the run happened: a
    forger can rewrite a receipt and every digest in it. The ledger lives in the store,
    written in the migration's own transaction, so it is the independent witness. A
    committed outcome must be in the ledger under the receipt's run id, with the same
    receipt digest and post-baseline fingerprint; any other outcome must not be there.
    Returns a one-line summary; raises VerifyMismatch naming the receipt otherwise.
    """
    path = target / RECEIPT if target.is_dir() else target
    artifacts_dir = artifacts_dir_of(path)
    doc = load_receipt(path)
    run_id, status = doc["run_id"], doc["status"]
    store = open_store(_type_of(doc), conn_id, use_hook=use_hook)
    entry = store.ledger_entry(doc["migration_id"], run_id)
    where = f"the ledger on {conn_id}"
    if status not in _LEDGERED:
        if entry is not None:
            raise VerifyMismatch(
                f"the receipt says {status}, but {where} records run {run_id[:12]}", file=display(path)
            )
        return f"ledger: run {run_id[:12]} ({status}) is correctly absent from {where}"
    if entry is None:
        raise VerifyMismatch(f"the receipt says {status}, but {where} has no run {run_id[:12]}", file=display(path))
    if entry.get("receipt_digest") != doc["receipt_digest"]:
        recorded = entry.get("receipt_digest")
        what = f"receipt {recorded[:12]}" if recorded else "no receipt digest"
        raise VerifyMismatch(f"{where} records {what} for run {run_id[:12]}", file=display(path))
    post = next((o for o in doc["outputs"] if o.get("role") == "baseline_post"), None)
    if post is not None and status == "succeeded" and KINDS[_type_of(doc)].ledger_has_post_baseline:
        fingerprint = json.loads((artifacts_dir / post["path"]).read_bytes()).get("schema_fingerprint")
        if fingerprint != entry.get("post_schema_fingerprint"):
            raise VerifyMismatch(
                f"the post-baseline's schema fingerprint differs from the one {where} recorded",
                file=display(artifacts_dir / post["path"]),
            )
    return f"ledger: run {run_id[:12]} ({status}) recorded in {where} with this receipt digest"


def artifacts_dir_of(receipt: Path) -> Path:
    """The artifacts folder of a receipt file: ``receipts/run_receipt.json`` and
    ``receipts/history/<digest>.json`` both sit in it."""
    parent = receipt.parent
    if parent.name == "history" and parent.parent.name == "receipts":
        return parent.parent.parent
    return parent.parent if parent.name == "receipts" else parent


def _is_latest(artifacts_dir: Path, digest: str) -> bool:
    try:
        return bool(json.loads((artifacts_dir / RECEIPT).read_bytes()).get("receipt_digest") == digest)
    except (OSError, ValueError, AttributeError):
        return False


def _latest_view(artifacts_dir: Path, rel: str) -> Path | None:
    """``runs/<operation>-<run_id>/<path>`` is published at ``<path>`` as the latest run's
    view: for the latest receipt the two must hold the same bytes."""
    parts = Path(rel).parts
    if len(parts) > 2 and parts[0] == RUNS:
        return artifacts_dir.joinpath(*parts[2:])
    return None
