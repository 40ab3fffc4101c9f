"""Recorded approvals: who approved a finding code or a protected object."""

from __future__ import annotations

from airflow_kfm_migrations.contracts.models import AnyDeclaration


def approval_covers(decl: AnyDeclaration, token: str) -> str | None:
    """Who approved ``token`` (a finding code or 'protected:<obj>'), if anyone did."""
    for rec in decl.approvals.recorded:
        if token in rec.covers:
            return f"{rec.by} ({rec.ref})"
    return None
