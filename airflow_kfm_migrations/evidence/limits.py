"""Declared limits against observed numbers: shared by every store kind's evaluation."""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.contracts.models import Finding, LimitCheck


def limit_checks(limits: Any, observed: dict[str, int]) -> tuple[list[LimitCheck], list[Finding]]:
    """Declared vs observed for each limit in ``observed`` (names are the limits model's
    fields); every exceeded limit is a hard fail. Shared by all store kinds."""
    checks = [
        LimitCheck(name=name, declared=getattr(limits, name), observed=value, ok=value <= getattr(limits, name))
        for name, value in observed.items()
    ]
    failed = [
        Finding(
            code="limit_exceeded",
            tier="hard_fail",
            object=c.name,
            message=f"{c.name}: observed {c.observed} > declared {c.declared}",
        )
        for c in checks
        if not c.ok
    ]
    return checks, failed
