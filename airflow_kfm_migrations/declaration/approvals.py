"""Recorded approvals: who approved a finding code, a protected object or a read.

Tokens: ``review:<code>`` and ``review:<code>:<object>`` (a review_required finding),
``protected:<object>`` (a change to a protected object), ``read:<schema>.<table>`` (PostGIS:
reading a forbidden table, or copying rows out of a protected one).
"""

from __future__ import annotations

from airflow_kfm_migrations.contracts.models import AnyDeclaration


def approval_covers(decl: AnyDeclaration, token: str) -> str | None:
    """Who approved ``token`` (one of the tokens above), if anyone did."""
    for rec in decl.approvals.recorded:
        if token in rec.covers:
            return f"{rec.by} ({rec.ref})"
    return None
