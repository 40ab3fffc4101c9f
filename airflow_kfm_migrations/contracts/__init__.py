"""Contracts: pydantic models and the JSON Schemas generated from them."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from pydantic import TypeAdapter

from airflow_kfm_migrations.contracts.models import CONTRACTS, SCHEMA_BASE

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def generate_schema(name: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) for contract ``name``, generated from its model."""
    schema = TypeAdapter(CONTRACTS[name]).json_schema(by_alias=True, mode="validation")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE}{name}.schema.json",
        "title": name,
        **schema,
    }


def schema_text(name: str) -> str:
    return json.dumps(generate_schema(name), indent=2, sort_keys=True) + "\n"


@cache
def packaged_schema(name: str) -> dict[str, Any]:
    """The schema shipped in the wheel."""
    ref = resources.files(__package__).joinpath("schemas", f"{name}.schema.json")
    return json.loads(ref.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@cache
def adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(CONTRACTS[name])


def schema_errors(name: str, document: Any) -> list[str]:
    """JSON-Schema validation errors for ``document`` (independent of pydantic)."""
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(packaged_schema(name))
    return sorted(
        f"{'.'.join(str(p) for p in err.absolute_path) or '-'}: {err.message}"
        for err in validator.iter_errors(document)
    )


__all__ = ["CONTRACTS", "adapter", "generate_schema", "packaged_schema", "schema_errors", "schema_text"]
