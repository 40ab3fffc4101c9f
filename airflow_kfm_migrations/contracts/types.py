"""Building blocks of the contract models: the strict base model and the constrained types
(ids, digests, names, paths) that declarations and records share."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from airflow_kfm_migrations.kinds import TYPE_PREFIX as KIND_PREFIXES

SCHEMA_BASE = "https://airflow-kfm-migrations.dev/schemas/"

MigrationType = Literal["postgis", "search", "graph", "other"]
TYPE_PREFIX = KIND_PREFIXES  # the id prefix of each declaration type (kinds.py)
ID_PATTERN = r"^(PG|SEARCH|GRAPH|OTHER)-MIG-[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])-[0-9]{2}$"


def id_pattern(prefix: str) -> str:
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
