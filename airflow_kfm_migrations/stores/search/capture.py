"""Cluster baselines: every non-dot index (mappings, settings without the volatile ones,
document count), alias and template as digested objects, and the fingerprint of the part
of a baseline inside the declared scope.

A baseline also carries each index's write counters (``extra.write_counters``: the index's
uuid and the sequence numbers its primary shards have handed out, from
``_stats?level=shards``): a write that keeps the document count (an overwrite, a delete and
an insert) still moves them, so the gate sees every write into a protected or forbidden
index (:func:`written_between`). Refresh, flush and merges do not move them; settings and
alias changes neither. They stay out of every fingerprint (they follow live traffic)."""

from __future__ import annotations

import json
from typing import Any

from airflow_kfm_migrations.contracts.models import Baseline, BaselineObject, SearchDeclaration
from airflow_kfm_migrations.declaration.bundle import Bundle
from airflow_kfm_migrations.stores.search.client import CallError, SearchClient
from airflow_kfm_migrations.stores.search.scope import SearchScopeRules
from airflow_kfm_migrations.util.digest import digest_json, merkle_root

VOLATILE_SETTINGS = ("creation_date", "uuid", "version", "provided_name")


def write_counters(client: SearchClient) -> dict[str, list[Any]]:
    """Every open non-dot index as ``[uuid, ops]``: ``ops`` is the sum over its primary shards
    of ``max_seq_no + 1``, the number of write operations (index, delete) it has taken."""
    stats = client.shard_stats("*")
    out: dict[str, list[Any]] = {}
    for name, meta in sorted(stats.items()):
        if name.startswith("."):
            continue
        ops = 0
        for copies in (meta.get("shards") or {}).values():
            primary = [c for c in copies if (c.get("routing") or {}).get("primary")]
            seqs = [int((c.get("seq_no") or {}).get("max_seq_no", -1)) for c in primary or copies]
            ops += max(seqs, default=-1) + 1
        out[name] = [str(meta.get("uuid", "")), ops]
    return out


def written_between(pre: dict[str, Any], post: dict[str, Any]) -> dict[str, str]:
    """Indices of ``pre`` whose write counters moved by ``post``: name -> what happened.
    An index missing from ``post`` (deleted, closed) is not judged here: the diff sees it."""
    out: dict[str, str] = {}
    for name, before in pre.items():
        after = post.get(name)
        if after is None:
            continue
        if after[0] != before[0]:
            out[name] = "deleted and created again"
        elif int(after[1]) > int(before[1]):
            out[name] = f"{int(after[1]) - int(before[1])} write operation(s)"
    return out


def capture(
    client: SearchClient, decl: SearchDeclaration, *, blocked_by_run: dict[str, str | None] | None = None
) -> Baseline:
    """The baseline of the cluster now. ``blocked_by_run`` names the indices the run itself
    write-blocked (``protect_with_write_block``) with the ``index.blocks.write`` value they had
    before: they are digested as they were, so the block the run will lift is no change."""
    rules = SearchScopeRules(decl)
    hidden = blocked_by_run or {}
    info = client.info()
    version = info.get("version", {})
    product = "OpenSearch" if version.get("distribution") == "opensearch" else "Elasticsearch"
    store_version = f"{product} {version.get('number', '?')}"
    client.refresh("*,-.*")
    indices = {k: v for k, v in client.get_indices("*").items() if not k.startswith(".")}
    objects: list[BaselineObject] = []
    counts_by_index: dict[str, int] = {}
    aliases: dict[str, list[Any]] = {}
    for name in sorted(indices):
        meta = indices[name]
        settings = json.loads(json.dumps(meta.get("settings", {})))
        idx_settings = settings.get("index", {})
        for k in VOLATILE_SETTINGS:
            idx_settings.pop(k, None)
        if name in hidden:
            _show_block_as(idx_settings, hidden[name])
        guarded = rules.index_guarded(name)
        objects.append(
            BaselineObject(
                id=f"index:{name}",
                kind="index",
                table=name,
                digest=digest_json({"mappings": meta.get("mappings", {}), "settings": settings}),
                protected=guarded,
            )
        )
        try:
            n = client.count(name)
        except CallError as exc:  # a closed index has no count
            if exc.status not in (400, 403):
                raise
            n = -1
        counts_by_index[name] = n
        objects.append(
            BaselineObject(
                id=f"doc_count:{name}", kind="doc_count", table=name, digest=digest_json(n), protected=guarded
            )
        )
        for alias, props in sorted((meta.get("aliases") or {}).items()):
            aliases.setdefault(alias, []).append([name, props])
    for alias, members in sorted(aliases.items()):
        guarded = rules.alias_forbidden(alias) or any(rules.index_guarded(ix) for ix, _ in members)
        objects.append(
            BaselineObject(
                id=f"alias:{alias}",
                kind="alias",
                table=alias,
                digest=digest_json(sorted(members, key=lambda m: m[0])),
                protected=guarded,
            )
        )
    for name, body in sorted(client.get_index_templates().items()):
        if not name.startswith("."):
            objects.append(
                BaselineObject(id=f"index_template:{name}", kind="index_template", table=name, digest=digest_json(body))
            )
    for name, body in sorted(client.get_legacy_templates().items()):
        if not name.startswith("."):
            objects.append(BaselineObject(id=f"template:{name}", kind="template", table=name, digest=digest_json(body)))
    objects.sort(key=lambda o: o.id)
    kinds: dict[str, int] = {}
    for o in objects:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
    leaves = [digest_json([o.id, o.digest]) for o in objects if o.kind != "doc_count"]
    protected = [digest_json([o.id, o.digest]) for o in objects if o.protected]
    return Baseline(
        schema_version="baseline.v1",
        store="search",
        migration_id=decl.migration_id,
        store_version=store_version,
        scope_digest=digest_json(decl.scope.model_dump(mode="json")),
        counts=kinds,
        objects=objects,
        schema_fingerprint=merkle_root(leaves),
        protected_fingerprint=merkle_root(protected),
        protected_rows={k: max(v, 0) for k, v in counts_by_index.items() if rules.index_guarded(k)},
        extra={"doc_counts": counts_by_index, "write_counters": write_counters(client)},
    )


def _show_block_as(idx_settings: dict[str, Any], previous: str | None) -> None:
    blocks = idx_settings.get("blocks")
    if previous is None:
        if isinstance(blocks, dict):
            blocks.pop("write", None)
            if not blocks:
                idx_settings.pop("blocks")
    else:
        idx_settings.setdefault("blocks", {})["write"] = previous


def scope_fingerprint(bundle: Bundle, baseline: Baseline) -> str:
    decl = bundle.declaration
    assert isinstance(decl, SearchDeclaration)
    rules = SearchScopeRules(decl)

    def in_scope(o: BaselineObject) -> bool:
        if o.kind == "index":
            return rules.index_allowed(o.table or "")
        if o.kind == "alias":
            return rules.alias_allowed(o.table or "")
        return False  # doc counts follow live traffic; templates are never in scope

    return merkle_root(digest_json([o.id, o.digest]) for o in baseline.objects if in_scope(o))
