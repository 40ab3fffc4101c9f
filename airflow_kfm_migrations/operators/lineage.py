"""Asset events and OpenLineage for ``apply``: only what a committed run changed.

The factory gives ``apply`` one outlet, an :class:`~airflow.sdk.AssetAlias` named by
:func:`asset_alias`. A static ``Asset`` outlet would get an event on every success of the
task, a dry run or a no-op included, and its URI would have to be known when the DAG file
is parsed, when no connection may be read. Through the alias, the task adds an event at run
time for each object the run committed a change to (``RunResult.assets``), named by the
connection's endpoint in the form the official providers use (``KINDS[kind].asset_uri``):
no commit, no event. docs/assets.md lists the forms.

OpenLineage: when the provider is installed, it calls
``ApplyOperator.get_openlineage_facets_on_complete``, which returns :func:`operator_lineage`.
Its modules are imported there only; without the provider nothing here imports them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from airflow_kfm_migrations.kinds import KINDS, Endpoint

ALIAS_PREFIX = "kfm-migrations/"


@functools.cache
def asset_alias(migration_id: str) -> Any:
    """The outlet of a migration's ``apply``: the events of its committed changes go through it."""
    from airflow.sdk import AssetAlias

    return AssetAlias(ALIAS_PREFIX + migration_id)


def endpoint(conn_id: str) -> Endpoint:
    """Host, port and database of an Airflow connection (read at run time, never at parse time)."""
    from airflow.sdk import BaseHook

    c = BaseHook.get_connection(conn_id)
    return Endpoint(
        conn_type=c.conn_type or "",
        host=c.host or "localhost",
        port=c.port,
        database=c.schema or None,
        login=c.login or None,
    )


@dataclass
class Published:
    """What ``apply`` published, kept on the task for its OpenLineage facets."""

    kind: str
    endpoint: Endpoint | None = None
    paths: list[str] = field(default_factory=list)
    uris: list[str] = field(default_factory=list)
    result: Any = None


def run_id_of(result: Any) -> str:
    """The run id its receipt names ("" when there is none)."""
    try:
        return str(json.loads(result.receipt_path.read_bytes()).get("run_id", ""))
    except (AttributeError, OSError, ValueError):
        return ""


def publish(task: Any, context: Any, bundle: Any, opts: Any, result: Any) -> Published:
    """Add an asset event to each of ``task``'s alias outlets for every object the run
    committed a change to. A dry run, a no-op, a refusal or a failure has none. Each event's
    ``extra`` names the migration, the run, the receipt's and the bundle's digests."""
    from airflow.sdk import Asset, AssetAlias

    kind = bundle.type
    out = Published(kind=kind, result=result)
    to_uri = KINDS[kind].asset_uri
    if result.status != "succeeded" or opts.dry_run or not result.assets or to_uri is None:
        return out
    extra = {
        "migration_id": bundle.migration_id,
        "run_id": run_id_of(result),
        "receipt_digest": result.receipt_digest or "",
        "bundle_digest": bundle.digest,
        "environment": opts.environment,
        "store": kind,
    }
    try:
        ep = endpoint(opts.conn_id)
        uris = sorted({to_uri(ep, p) for p in result.assets})
        assets = [Asset(u) for u in uris]  # Airflow validates and normalises each URI
    except Exception as exc:  # broad on purpose: the run has committed; failing the task now would
        # send it down the rollback path for want of an event. Say so in the log instead.
        task.log.warning("asset events not emitted: %s", type(exc).__name__)
        return out
    out.endpoint, out.paths, out.uris = ep, list(result.assets), uris
    aliases = [o for o in task.outlets if isinstance(o, AssetAlias)]
    for alias in aliases:
        for asset in assets:
            context["outlet_events"][alias].add(asset, extra=extra)
    if out.uris and aliases:
        task.log.info("asset events: %s", ", ".join(out.uris))
    return out


def _split(path: str) -> tuple[str | None, str]:
    schema, _, name = path.rpartition("/")
    return schema or None, name


def _objects(baseline: Any, path: str) -> list[Any]:
    """The baseline's objects that belong to ``path`` (same table, and schema where it has one)."""
    if baseline is None:
        return []
    schema, name = _split(path)
    return [o for o in baseline.objects if o.table == name and (schema is None or o.schema_ == schema)]


def _columns(baseline: Any, path: str) -> list[str]:
    schema, name = _split(path)
    prefix = f"column:{schema}.{name}." if schema else f"column:{name}."
    return [o.id[len(prefix) :] for o in _objects(baseline, path) if o.kind == "column" and o.id.startswith(prefix)]


def inputs_of(published: Published) -> list[str]:
    """Objects the forward names (the static plan's targets) that the run read but did not
    change and that existed before it, e.g. a reindex's source index."""
    to_path = KINDS[published.kind].target_path
    plan, pre = published.result.plan, published.result.pre
    if to_path is None or plan is None:
        return []
    changed = set(published.paths)
    named = {p for st in plan.statements for t in st.targets if (p := to_path(t)) is not None}
    return sorted(p for p in named - changed if _objects(pre, p))


def operator_lineage(published: Published | None) -> Any:
    """The provider's ``OperatorLineage`` of a run: each changed object as an output dataset,
    named the OpenLineage way, with the change's lifecycle (CREATE, ALTER, DROP) and, where
    the baseline lists them (PostGIS), the columns after the change; the objects it read
    (:func:`inputs_of`) as input datasets."""
    from airflow.providers.common.compat.openlineage.facet import (
        InputDataset,
        LifecycleStateChange,
        LifecycleStateChangeDatasetFacet,
        OutputDataset,
        SchemaDatasetFacet,
        SchemaDatasetFacetFields,
    )
    from airflow.providers.openlineage.extractors import OperatorLineage

    if published is None or published.endpoint is None:
        return OperatorLineage()
    to_dataset = KINDS[published.kind].lineage_dataset
    if to_dataset is None:
        return OperatorLineage()
    pre, post = published.result.pre, published.result.post
    outputs = []
    for path in published.paths:
        namespace, name = to_dataset(published.endpoint, path)
        before, after = bool(_objects(pre, path)), bool(_objects(post, path))
        change = (
            LifecycleStateChange.CREATE
            if after and not before
            else LifecycleStateChange.DROP
            if before and not after
            else LifecycleStateChange.ALTER
        )
        facets: dict[str, Any] = {"lifecycleStateChange": LifecycleStateChangeDatasetFacet(lifecycleStateChange=change)}
        columns = _columns(post, path)
        if columns:
            facets["schema"] = SchemaDatasetFacet(fields=[SchemaDatasetFacetFields(name=c) for c in columns])
        outputs.append(OutputDataset(namespace=namespace, name=name, facets=facets))
    inputs = []
    for path in inputs_of(published):
        namespace, name = to_dataset(published.endpoint, path)
        columns = _columns(pre, path)
        facets = {"schema": SchemaDatasetFacet(fields=[SchemaDatasetFacetFields(name=c) for c in columns])}
        inputs.append(InputDataset(namespace=namespace, name=name, facets=facets if columns else {}))
    return OperatorLineage(inputs=inputs, outputs=outputs)
