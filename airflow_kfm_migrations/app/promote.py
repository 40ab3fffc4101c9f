"""``kfm-migrations record``: a registry status event, with the evidence the status needs.

A promotion is recorded only on evidence that the step happened:

- ``executed_<env>`` needs a receipt of this migration that verifies, of an ``apply`` run
  in ``<env>`` that ``succeeded`` or was a ``noop``;
- ``executed_prod`` also needs an ``executed_stage`` event since the last rollback, or an
  approval covering ``skip:executed_stage`` in the declaration the prod run used;
- ``rolled_back`` needs a receipt of this migration that verifies, of a ``rollback`` run
  that ended ``rolled_back``.

With ``conn_id`` the receipt is also checked against the ledger in the store (the
independent witness: a receipt whose digests all match may still be a forgery). Every
check runs before the registry is touched: a refusal leaves it byte-identical, and creates
no lock file beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_kfm_migrations.app.verify import bundle_dir_of, load_receipt, receipt_file, verify, verify_against_ledger
from airflow_kfm_migrations.contracts.models import RegistryEntry
from airflow_kfm_migrations.declaration.approvals import approval_covers
from airflow_kfm_migrations.declaration.bundle import display, load_bundle
from airflow_kfm_migrations.declaration.registry import (
    EXECUTED_STATUS,
    SKIP_STAGE,
    find_entry,
    load_registry,
    record_transition,
    staged,
    transition_problem,
)
from airflow_kfm_migrations.errors import InputError, RefusedError

# status -> (operation, outcomes accepted, environment or None) of the receipt it needs.
EVIDENCE: dict[str, tuple[str, frozenset[str], str | None]] = {
    **{status: ("apply", frozenset({"succeeded", "noop"}), env) for env, status in EXECUTED_STATUS.items()},
    "rolled_back": ("rollback", frozenset({"rolled_back"}), None),
}


@dataclass(frozen=True)
class Promotion:
    entry: RegistryEntry
    receipt_digest: str | None
    ledger: str | None = None  # the ledger check's one-line summary, with conn_id
    stage_skipped_by: str | None = None  # who approved going to prod without stage


def promote(
    registry: Path,
    migration_id: str,
    status: str,
    *,
    actor: str,
    ref: str,
    receipt: Path | None = None,
    bundle: Path | None = None,
    conn_id: str | None = None,
    superseded_by: str | None = None,
    use_hook: bool = False,
) -> Promotion:
    """Check the evidence for ``status``, then append the event (see the module's table)."""
    reg = load_registry(registry)
    entry = find_entry(reg, migration_id)
    if entry is None:
        raise RefusedError(f"{migration_id} is not in the registry", file=display(registry))
    if conn_id and receipt is None:
        raise InputError("--conn-id", "-", "the ledger check needs --receipt")
    doc: dict[str, Any] | None = None
    if receipt is not None:
        verify(receipt, bundle=bundle)
        doc = load_receipt(receipt_file(receipt))
        if doc["migration_id"] != migration_id:
            raise RefusedError(
                f"the receipt is of {doc['migration_id']}, not of {migration_id}", file=display(receipt_file(receipt))
            )
    needed = EVIDENCE.get(status)
    if needed is not None:
        _check_evidence(status, needed, doc, receipt)
    skipped_by = None
    if status == "executed_prod" and not staged(entry) and receipt is not None and doc is not None:
        decl = load_bundle(bundle_dir_of(receipt_file(receipt), doc, bundle)).declaration
        skipped_by = approval_covers(decl, SKIP_STAGE)
    problem = transition_problem(entry, status, skip_stage=skipped_by is not None)
    if problem:
        raise RefusedError(problem, file=display(registry))
    ledger = verify_against_ledger(receipt, conn_id, use_hook=use_hook) if conn_id and receipt is not None else None
    new = record_transition(
        registry,
        migration_id,
        status,
        actor=actor,
        ref=ref,
        receipt_digest=doc["receipt_digest"] if doc else None,
        superseded_by=superseded_by,
        skip_stage=skipped_by is not None,
    )
    return Promotion(new, doc["receipt_digest"] if doc else None, ledger, skipped_by)


def _check_evidence(
    status: str, needed: tuple[str, frozenset[str], str | None], doc: dict[str, Any] | None, receipt: Path | None
) -> None:
    operation, outcomes, env = needed
    what = f"{_a(operation)} run" + (f" in {env}" if env else "") + f" that ended {' or '.join(sorted(outcomes))}"
    if doc is None or receipt is None:
        raise RefusedError(f"recording {status} needs --receipt: the receipt of {what}")
    where = display(receipt_file(receipt))
    if doc["operation"] != operation:
        raise RefusedError(
            f"{status} needs the receipt of {what}; this one is of {_a(doc['operation'])} run", file=where
        )
    if env is not None and doc["environment"] != env:
        raise RefusedError(f"{status} needs the receipt of {what}; this run was in {doc['environment']}", file=where)
    if doc["status"] not in outcomes:
        raise RefusedError(f"{status} needs the receipt of {what}; this run ended {doc['status']}", file=where)


def _a(word: str) -> str:
    return ("an " if word[:1] in "aeiou" else "a ") + word
