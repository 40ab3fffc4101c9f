"""OpenSearch / Elasticsearch store: strict action files, static plan, blue/green apply
with the alias flip held back until the gate passed, cluster baselines, a document lock
and an in-store ledger (index ``.kfm-governance``).

A search cluster has no transactions. The stand-in is blue/green: ``apply`` creates the
new indices and reindexes into them while readers keep following the old aliases; every
``aliases`` action is held back. The lifecycle takes the post-baseline and runs the gate
*before* the flip; ``commit`` then performs all held-back alias actions in one atomic
``_aliases`` call, and ``abort`` deletes the indices the run created without ever touching
an alias. Changes to indices that already existed (``put_mapping``/``put_settings``) are
durable before the gate, so a declaration that keeps the default ``transactional: true``
may not contain them (the plan refuses).

The cluster client sits behind :class:`SearchClient`, a handful of calls; the opensearch-py
binding is :class:`OpenSearchBinding`, the elasticsearch-py one :class:`ElasticsearchBinding`
(chosen when the connection's type is ``elasticsearch``). Both translate errors into
:class:`CallError`.

Old indices an apply moves an alias away from stay for ``old_index_retention_days`` (a
rollback needs them). The apply's ledger document and receipt metrics name them and the
time they are kept until; :meth:`SearchSession.collect_garbage` (``kfm-migrations gc``)
deletes them once that time passed, never while an alias points to them.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol

from airflow_kfm_migrations.contracts.models import (
    Baseline,
    BaselineObject,
    DiffSummary,
    Finding,
    LimitCheck,
    SearchDeclaration,
    WriteCount,
)
from airflow_kfm_migrations.declaration.bundle import Artifact, Bundle, display
from airflow_kfm_migrations.declaration.policy import approval_covers
from airflow_kfm_migrations.engine.gate import limit_checks
from airflow_kfm_migrations.errors import InputError, LockedError, RefusedError
from airflow_kfm_migrations.evidence.diff import diff_objects
from airflow_kfm_migrations.stores.base import ApplyOutcome, LedgerRecord, Plan, PlannedStatement
from airflow_kfm_migrations.util.digest import digest_json, merkle_root
from airflow_kfm_migrations.util.secret_scan import redact

log = logging.getLogger(__name__)

GOVERNANCE_INDEX = ".kfm-governance"
LOCK_STALE_SECONDS = float(os.environ.get("KFM_SEARCH_LOCK_STALE_SECONDS", "3600"))
HEARTBEAT_SECONDS = 60.0
POLL_SECONDS = 0.5
VOLATILE_SETTINGS = ("creation_date", "uuid", "version", "provided_name")

# ============================================================================ client shim


class CallError(RefusedError):
    """A failed cluster call, translated from whatever the client library raised.

    ``status`` is the HTTP status (0 when nothing answered); ``kind`` the server's error
    type; ``detail`` its message. Nothing here carries a host or a credential. It is a
    :class:`RefusedError`, so a call failing where the session does not handle it ends
    the run as failed (with a receipt), and the session exit deletes what the run built.
    """

    def __init__(self, status: int, kind: str, detail: str) -> None:
        self.status = status
        self.kind = kind
        self.detail = redact(" ".join(str(detail).split()))[:500]
        super().__init__(f"search cluster call failed: {self.line()}")

    def line(self) -> str:
        return f"{self.status or 'connection'} {self.kind}: {self.detail}"


class SearchClient(Protocol):
    """The few cluster calls the store makes. Every method raises :class:`CallError`."""

    def info(self) -> dict[str, Any]: ...
    def get_indices(self, pattern: str) -> dict[str, Any]: ...
    def index_exists(self, index: str) -> bool: ...
    def create_index(self, index: str, body: dict[str, Any]) -> None: ...
    def put_mapping(self, index: str, body: dict[str, Any]) -> None: ...
    def put_settings(self, index: str, body: dict[str, Any]) -> None: ...
    def delete_index(self, index: str) -> None: ...
    def refresh(self, index: str) -> None: ...
    def get_alias(self) -> dict[str, Any]: ...
    def update_aliases(self, actions: list[dict[str, Any]]) -> None: ...
    def get_index_templates(self) -> dict[str, Any]: ...
    def get_legacy_templates(self) -> dict[str, Any]: ...
    def reindex_async(self, body: dict[str, Any], *, slices: int | str | None, rps: float | None) -> str: ...
    def get_task(self, task_id: str) -> dict[str, Any]: ...
    def cancel_task(self, task_id: str) -> None: ...
    def count(self, index: str, query: dict[str, Any] | None = None) -> int: ...
    def index_doc(
        self,
        index: str,
        doc_id: str,
        body: dict[str, Any],
        *,
        create: bool = False,
        if_seq_no: int | None = None,
        if_primary_term: int | None = None,
        refresh: bool = False,
    ) -> None: ...
    def get_doc(self, index: str, doc_id: str) -> dict[str, Any] | None: ...
    def delete_doc(
        self, index: str, doc_id: str, *, if_seq_no: int | None = None, if_primary_term: int | None = None
    ) -> None: ...
    def search(self, index: str, body: dict[str, Any]) -> list[dict[str, Any]]: ...


class _ClientBinding:
    """The :class:`SearchClient` calls both bindings share. opensearch-py and elasticsearch-py
    have the same API surface but pass query parameters differently (a ``params`` dict of
    strings vs keyword arguments) and name a document body differently; subclasses say how
    (``_query``, ``DOC_BODY``) and how to call the client (``_do``)."""

    DOC_BODY = "body"

    def __init__(self, client: Any) -> None:
        self.c = client

    def _do(self, fn: Callable[..., Any], **kw: Any) -> Any:
        raise NotImplementedError

    def _query(self, **params: Any) -> dict[str, Any]:
        """Keyword arguments that carry these query parameters to the client."""
        raise NotImplementedError

    def _none_if_missing(self, fn: Callable[..., Any], **kw: Any) -> Any:
        try:
            return self._do(fn, **kw)
        except CallError as exc:
            if exc.status == 404:
                return None
            raise

    def info(self) -> dict[str, Any]:
        return dict(self._do(self.c.info))

    def get_indices(self, pattern: str) -> dict[str, Any]:
        return dict(self._do(self.c.indices.get, index=pattern, **self._query(expand_wildcards="all")))

    def index_exists(self, index: str) -> bool:
        return bool(self._do(self.c.indices.exists, index=index))

    def create_index(self, index: str, body: dict[str, Any]) -> None:
        self._do(self.c.indices.create, index=index, body=body)

    def put_mapping(self, index: str, body: dict[str, Any]) -> None:
        self._do(self.c.indices.put_mapping, index=index, body=body)

    def put_settings(self, index: str, body: dict[str, Any]) -> None:
        self._do(self.c.indices.put_settings, index=index, body=body)

    def delete_index(self, index: str) -> None:
        self._do(self.c.indices.delete, index=index)

    def refresh(self, index: str) -> None:
        self._do(
            self.c.indices.refresh,
            index=index,
            **self._query(ignore_unavailable=True, allow_no_indices=True, expand_wildcards="open,hidden"),
        )

    def get_alias(self) -> dict[str, Any]:
        return dict(self._do(self.c.indices.get_alias, **self._query(expand_wildcards="all")))

    def update_aliases(self, actions: list[dict[str, Any]]) -> None:
        self._do(self.c.indices.update_aliases, body={"actions": actions})

    def get_index_templates(self) -> dict[str, Any]:
        res = self._none_if_missing(self.c.indices.get_index_template) or {}
        return {t["name"]: t["index_template"] for t in res.get("index_templates", [])}

    def get_legacy_templates(self) -> dict[str, Any]:
        return dict(self._none_if_missing(self.c.indices.get_template) or {})

    def reindex_async(self, body: dict[str, Any], *, slices: int | str | None, rps: float | None) -> str:
        params: dict[str, Any] = {"wait_for_completion": False, "refresh": True}
        if slices is not None:
            params["slices"] = slices
        if rps is not None:
            params["requests_per_second"] = rps
        return str(self._do(self.c.reindex, body=body, **self._query(**params))["task"])

    def get_task(self, task_id: str) -> dict[str, Any]:
        return dict(self._do(self.c.tasks.get, task_id=task_id))

    def cancel_task(self, task_id: str) -> None:
        self._do(self.c.tasks.cancel, task_id=task_id)

    def count(self, index: str, query: dict[str, Any] | None = None) -> int:
        body = {"query": query} if query else None
        return int(self._do(self.c.count, index=index, body=body)["count"])

    @staticmethod
    def _guard(if_seq_no: int | None, if_primary_term: int | None) -> dict[str, Any]:
        """Optimistic concurrency control: both or neither."""
        if if_seq_no is None or if_primary_term is None:
            return {}
        return {"if_seq_no": if_seq_no, "if_primary_term": if_primary_term}

    def index_doc(
        self,
        index: str,
        doc_id: str,
        body: dict[str, Any],
        *,
        create: bool = False,
        if_seq_no: int | None = None,
        if_primary_term: int | None = None,
        refresh: bool = False,
    ) -> None:
        params = self._guard(if_seq_no, if_primary_term)
        if create:
            params["op_type"] = "create"
        if refresh:
            params["refresh"] = True
        self._do(self.c.index, index=index, id=doc_id, **{self.DOC_BODY: body}, **self._query(**params))

    def get_doc(self, index: str, doc_id: str) -> dict[str, Any] | None:
        doc = self._none_if_missing(self.c.get, index=index, id=doc_id)
        return None if doc is None else dict(doc)

    def delete_doc(
        self, index: str, doc_id: str, *, if_seq_no: int | None = None, if_primary_term: int | None = None
    ) -> None:
        self._do(self.c.delete, index=index, id=doc_id, **self._query(**self._guard(if_seq_no, if_primary_term)))

    def search(self, index: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        return list(self._do(self.c.search, index=index, body=body)["hits"]["hits"])


class OpenSearchBinding(_ClientBinding):
    """:class:`SearchClient` over an ``opensearchpy.OpenSearch`` client."""

    @staticmethod
    def _translate(exc: Exception) -> CallError:
        from opensearchpy import exceptions as ex

        if isinstance(exc, ex.ConnectionError):  # includes timeouts and TLS errors; str() names the host
            return CallError(0, type(exc).__name__, "the cluster did not answer (refused, timed out or TLS failed)")
        if isinstance(exc, ex.TransportError):
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            info: dict[str, Any] = exc.info if isinstance(exc.info, dict) else {}
            raw = info.get("error")
            err: dict[str, Any] = raw if isinstance(raw, dict) else {}
            kind = str(err.get("type") or exc.error or type(exc).__name__)
            reason = str(err.get("reason") or (exc.error if isinstance(exc.error, str) else "") or kind)
            return CallError(status, kind, reason)
        return CallError(0, type(exc).__name__, "client error")

    def _do(self, fn: Callable[..., Any], **kw: Any) -> Any:
        from opensearchpy import exceptions as ex

        try:
            return fn(**kw)
        except ex.OpenSearchException as exc:
            raise self._translate(exc) from None

    def _query(self, **params: Any) -> dict[str, Any]:
        # opensearch-py takes query parameters as strings in a ``params`` dict.
        if not params:
            return {}
        return {"params": {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in params.items()}}


class ElasticsearchBinding(_ClientBinding):
    """:class:`SearchClient` over an ``elasticsearch.Elasticsearch`` (elasticsearch-py 9) client.

    elasticsearch-py checks the ``X-Elastic-Product`` header of every answer (so it refuses
    OpenSearch) and sends ``compatible-with=9`` media types; :func:`elasticsearch_client_from_env`
    can lower that to the server's major version (extra ``compatible_with``)."""

    DOC_BODY = "document"

    @staticmethod
    def _translate(exc: Exception) -> CallError:
        import elasticsearch as es

        if isinstance(exc, es.ApiError):
            status = exc.meta.status if isinstance(getattr(exc.meta, "status", None), int) else 0
            body: dict[str, Any] = exc.body if isinstance(exc.body, dict) else {}
            raw = body.get("error")
            err: dict[str, Any] = raw if isinstance(raw, dict) else {}
            if isinstance(raw, str):  # e.g. 405 {"error": "Incorrect HTTP method ...", "status": 405}
                kind, reason = "error", raw
            else:
                kind = str(err.get("type") or exc.message or type(exc).__name__)
                reason = str(err.get("reason") or exc.message or kind)
            if isinstance(exc, es.UnsupportedProductError):
                kind, reason = "unsupported_product", "the server is not Elasticsearch (product header check failed)"
            return CallError(status, kind, reason)
        if isinstance(exc, es.TransportError):  # connection refused, timeout, TLS; str() names the host
            return CallError(0, type(exc).__name__, "the cluster did not answer (refused, timed out or TLS failed)")
        return CallError(0, type(exc).__name__, "client error")

    def _do(self, fn: Callable[..., Any], **kw: Any) -> Any:
        import elasticsearch as es

        try:
            res = fn(**kw)
        except (es.ApiError, es.TransportError) as exc:
            raise self._translate(exc) from None
        return getattr(res, "body", res)

    def _query(self, **params: Any) -> dict[str, Any]:
        return params  # elasticsearch-py takes query parameters as keyword arguments

    def info(self) -> dict[str, Any]:
        try:
            return super().info()
        except CallError as exc:
            if exc.status not in (404, 405):
                raise
        # A node without the rest-root module (the integ-test distribution) has no GET /.
        nodes = self._do(self.c.nodes.info, node_id="_local", metric="_none").get("nodes", {})
        number = next((n.get("version") for n in nodes.values()), "?")
        return {"version": {"number": number, "build_flavor": "default"}}

    def get_task(self, task_id: str) -> dict[str, Any]:
        with warnings.catch_warnings():  # the task API is "technical preview" in elasticsearch-py
            warnings.simplefilter("ignore", category=Warning)
            return super().get_task(task_id)

    def cancel_task(self, task_id: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=Warning)
            super().cancel_task(task_id)


def _compat_node_class(major: int) -> Any:
    """An urllib3 node that sends ``compatible-with=<major>`` instead of the client's own
    major: elasticsearch-py 9 asks for 9, which an 8.x server rejects (media_type_header_exception)."""
    from elastic_transport import HttpHeaders, Urllib3HttpNode
    from elastic_transport._models import DEFAULT, DefaultType
    from elastic_transport._node._base import NodeApiResponse

    class CompatNode(Urllib3HttpNode):
        def perform_request(
            self,
            method: str,
            target: str,
            body: bytes | None = None,
            headers: HttpHeaders | None = None,
            request_timeout: DefaultType | float | None = DEFAULT,
        ) -> NodeApiResponse:
            if headers:
                headers = headers.copy()
                for h in ("accept", "content-type"):
                    v = headers.get(h)
                    if v:
                        headers[h] = re.sub(r"compatible-with=\d+", f"compatible-with={major}", v)
            return super().perform_request(method, target, body=body, headers=headers, request_timeout=request_timeout)

    return CompatNode


def elasticsearch_client_from_env(conn_id: str) -> Any:
    """An ``elasticsearch.Elasticsearch`` client from ``AIRFLOW_CONN_<ID>`` (or Airflow's lookup).

    Extras: ``use_ssl``, ``verify_certs``, ``ca_certs``, ``timeout``, ``api_key`` and
    ``compatible_with`` (the server's major version when it is older than the client's)."""
    from elasticsearch import Elasticsearch

    from airflow_kfm_migrations.util.connections import resolve

    info = resolve(conn_id)
    extra = info.extra
    use_ssl = _truthy(extra.get("use_ssl")) or info.conn_type == "https"
    kwargs: dict[str, Any] = {
        "hosts": [
            {"host": info.host or "localhost", "port": info.port or 9200, "scheme": "https" if use_ssl else "http"}
        ],
        "request_timeout": int(extra.get("timeout", 30)),
    }
    if use_ssl:
        kwargs["verify_certs"] = not ("verify_certs" in extra and not _truthy(extra["verify_certs"]))
        if extra.get("ca_certs"):
            kwargs["ca_certs"] = extra["ca_certs"]
    if extra.get("api_key"):
        kwargs["api_key"] = str(extra["api_key"])
    elif info.login:
        kwargs["basic_auth"] = (info.login, info.password or "")
    compat = extra.get("compatible_with")
    if compat not in (None, ""):
        kwargs["node_class"] = _compat_node_class(int(compat))
    return Elasticsearch(**kwargs)


def is_elasticsearch_conn(conn_id: str) -> bool:
    from airflow_kfm_migrations.util.connections import resolve

    try:
        conn_type = resolve(conn_id).conn_type or ""
    except Exception:  # an unknown connection fails later, inside the run (with a receipt)
        return False
    return conn_type in {"elasticsearch", "elastic"}


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.strip().lower() in {"1", "true", "yes", "on"})


def opensearch_client_from_env(conn_id: str) -> Any:
    """An ``opensearchpy.OpenSearch`` client from ``AIRFLOW_CONN_<ID>`` (or Airflow's lookup)."""
    from opensearchpy import OpenSearch

    from airflow_kfm_migrations.util.connections import resolve

    info = resolve(conn_id)
    extra = info.extra
    use_ssl = _truthy(extra.get("use_ssl")) or info.conn_type == "https"
    kwargs: dict[str, Any] = {
        "hosts": [
            {"host": info.host or "localhost", "port": info.port or 9200, "scheme": "https" if use_ssl else "http"}
        ],
        "use_ssl": use_ssl,
        "timeout": int(extra.get("timeout", 30)),
    }
    if use_ssl:
        kwargs["verify_certs"] = not ("verify_certs" in extra and not _truthy(extra["verify_certs"]))
        if extra.get("ca_certs"):
            kwargs["ca_certs"] = extra["ca_certs"]
    if info.login:
        kwargs["http_auth"] = (info.login, info.password or "")
    return OpenSearch(**kwargs)


# ============================================================================ action files

ACTION_FIELDS: dict[str, tuple[set[str], set[str]]] = {  # action -> (required, optional)
    "create_index": ({"index"}, {"settings", "mappings"}),
    "put_mapping": ({"index", "mappings"}, set()),
    "put_settings": ({"index", "settings"}, set()),
    "reindex": ({"source", "dest"}, {"query", "script", "slices", "requests_per_second"}),
    "aliases": ({"actions"}, set()),
    "delete_index": ({"index"}, set()),
}
SCRIPT_FIELDS = {"source", "lang", "params"}
# Lowercase, no wildcards, commas, spaces or path characters; may start with '.', so that
# the plan (not the parser) names a dot-index as forbidden.
NAME_RX = re.compile(r"^[a-z0-9.][a-z0-9._+\-]{0,254}$")


@dataclass(frozen=True)
class Action:
    file: str  # display path of the action file
    pos: int  # 1-based position in that file
    name: str  # action kind
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f"actions[{self.pos - 1}].{self.name}"

    def alias_ops(self) -> list[tuple[str, str, str]]:
        """(add|remove, index, alias) of an ``aliases`` action."""
        out = []
        for a in self.body.get("actions", []):
            ((op, spec),) = a.items()
            out.append((op, spec["index"], spec["alias"]))
        return out

    def targets(self) -> tuple[list[str], list[str]]:
        """(indices, aliases) the action names."""
        b = self.body
        if self.name == "reindex":
            return [b["source"], b["dest"]], []
        if self.name == "aliases":
            ops = self.alias_ops()
            return sorted({i for _, i, _ in ops}), sorted({a for _, _, a in ops})
        return [b["index"]], []


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _name(file: str, where: str, value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME_RX.match(value) or value in {".", ".."}:
        raise InputError(
            file, where, f"{what} must be one concrete lowercase name (no wildcards, commas or spaces), got {value!r}"
        )
    return value


def _obj(file: str, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(file, where, "must be a JSON object")
    return value


def parse_actions(text: str, file: str) -> list[Action]:
    """Parse and strictly validate one action file (``{"actions": [...]}``)."""
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise InputError(file, f"line {exc.lineno}", f"invalid JSON: {exc.msg}") from None
    except ValueError as exc:
        raise InputError(file, "-", f"invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(file, "-", 'must be an object {"actions": [...]}')
    extra = sorted(set(doc) - {"actions"})
    if extra:
        raise InputError(file, extra[0], "unknown field (only 'actions' is allowed)")
    actions = doc.get("actions")
    if not isinstance(actions, list) or not actions:
        raise InputError(file, "actions", "must be a non-empty list")
    out: list[Action] = []
    for i, raw in enumerate(actions, 1):
        where = f"actions[{i - 1}]"
        if not isinstance(raw, dict) or len(raw) != 1:
            raise InputError(file, where, "each action is an object with exactly one key (the action kind)")
        ((name, body),) = raw.items()
        if name not in ACTION_FIELDS:
            raise InputError(file, f"{where}.{name}", f"unknown action (allowed: {', '.join(sorted(ACTION_FIELDS))})")
        where = f"{where}.{name}"
        body = _obj(file, where, body)
        required, optional = ACTION_FIELDS[name]
        unknown = sorted(set(body) - required - optional)
        if unknown:
            raise InputError(file, f"{where}.{unknown[0]}", "unknown field")
        missing = sorted(required - set(body))
        if missing:
            raise InputError(file, f"{where}.{missing[0]}", "required field is missing")
        _check_action(file, where, name, body)
        out.append(Action(file, i, name, body))
    return out


def _check_action(file: str, where: str, name: str, b: dict[str, Any]) -> None:
    if "index" in b:
        _name(file, f"{where}.index", b["index"], "index")
    for key in ("settings", "mappings"):
        if key in b:
            _obj(file, f"{where}.{key}", b[key])
    if name == "create_index" and "aliases" in b.get("settings", {}):
        raise InputError(file, f"{where}.settings.aliases", "aliases are set by an 'aliases' action only")
    if name == "put_mapping":
        keys = set(b["mappings"])
        if keys != {"properties"} or not isinstance(b["mappings"]["properties"], dict):
            raise InputError(
                file, f"{where}.mappings", 'put_mapping is additive only: give exactly {"properties": {...}}'
            )
    if name == "put_settings" and not b["settings"]:
        raise InputError(file, f"{where}.settings", "must not be empty")
    if name == "reindex":
        _name(file, f"{where}.source", b["source"], "source")
        _name(file, f"{where}.dest", b["dest"], "dest")
        if b["source"] == b["dest"]:
            raise InputError(file, f"{where}.dest", "must differ from source")
        if "query" in b:
            _obj(file, f"{where}.query", b["query"])
        if "script" in b:
            s = _obj(file, f"{where}.script", b["script"])
            unknown = sorted(set(s) - SCRIPT_FIELDS)
            if unknown:
                raise InputError(file, f"{where}.script.{unknown[0]}", "unknown field")
            if not isinstance(s.get("source"), str) or not s["source"].strip():
                raise InputError(file, f"{where}.script.source", "must be a non-empty string")
            if "lang" in s and s["lang"] != "painless":
                raise InputError(file, f"{where}.script.lang", "only 'painless' is allowed")
            if "params" in s:
                _obj(file, f"{where}.script.params", s["params"])
        if "slices" in b:
            v = b["slices"]
            if not (v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1024)):
                raise InputError(file, f"{where}.slices", "must be 'auto' or an integer from 1 to 1024")
        if "requests_per_second" in b:
            v = b["requests_per_second"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 or v == -1):
                raise InputError(file, f"{where}.requests_per_second", "must be a positive number or -1")
    if name == "aliases":
        acts = b["actions"]
        if not isinstance(acts, list) or not acts:
            raise InputError(file, f"{where}.actions", "must be a non-empty list")
        for j, a in enumerate(acts):
            w = f"{where}.actions[{j}]"
            if not isinstance(a, dict) or len(a) != 1:
                raise InputError(file, w, 'each alias action is {"add"|"remove": {index, alias}}')
            ((op, spec),) = a.items()
            if op not in {"add", "remove"}:
                raise InputError(file, f"{w}.{op}", "unknown alias action (allowed: add, remove)")
            spec = _obj(file, f"{w}.{op}", spec)
            unknown = sorted(set(spec) - {"index", "alias"})
            if unknown:
                raise InputError(file, f"{w}.{op}.{unknown[0]}", "unknown field")
            for key in ("index", "alias"):
                if key not in spec:
                    raise InputError(file, f"{w}.{op}.{key}", "required field is missing")
                _name(file, f"{w}.{op}.{key}", spec[key], key)


def load_actions(artifacts: list[Artifact]) -> list[Action]:
    out: list[Action] = []
    for art in artifacts:
        if not art.rel.endswith(".json"):
            raise InputError(display(art.path), "-", "search action files are JSON (.json)")
        out.extend(parse_actions(art.text, display(art.path)))
    return out


def created_by(actions: list[Action]) -> list[str]:
    return [a.body["index"] for a in actions if a.name == "create_index"]


# ============================================================================ scope


@dataclass(frozen=True)
class SearchScopeRules:
    decl: SearchDeclaration

    @staticmethod
    def _match(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    def index_forbidden(self, name: str) -> bool:
        # Dot-indices (the governance index, .tasks, system indices) are invisible to the
        # baseline, so nothing may target them.
        return name.startswith(".") or self._match(name, self.decl.scope.forbidden_index_patterns)

    def index_protected(self, name: str) -> bool:
        return self._match(name, self.decl.scope.protected_indices)

    def index_guarded(self, name: str) -> bool:
        return self.index_forbidden(name) or self.index_protected(name)

    def index_allowed(self, name: str) -> bool:
        return self._match(name, self.decl.scope.allowed_index_patterns)

    def alias_forbidden(self, name: str) -> bool:
        return name.startswith(".") or self._match(name, self.decl.scope.forbidden_aliases)

    def alias_allowed(self, name: str) -> bool:
        return self._match(name, self.decl.scope.allowed_aliases)


def _seconds(interval: str) -> float:
    m = re.fullmatch(r"([0-9]+)(ms|s|min|h)", interval)
    if not m:
        return 900.0
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "min": 60, "h": 3600}[unit]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


# ============================================================================ store

ClientFactory = Callable[[], SearchClient]


class SearchStore:
    kind: ClassVar[str] = "search"

    def __init__(self, factory: ClientFactory | None, conn_id: str) -> None:
        self._factory = factory
        self.conn_id = conn_id
        self._client: SearchClient | None = None

    # -- construction ---------------------------------------------------------

    @classmethod
    def from_conn_id(cls, conn_id: str, *, use_hook: bool = False) -> SearchStore:
        if is_elasticsearch_conn(conn_id):
            # ElasticsearchPythonHook takes hosts, not a connection id: the client is built
            # from the connection (AIRFLOW_CONN_<ID> or Airflow's lookup) in both modes.
            return cls(lambda: ElasticsearchBinding(elasticsearch_client_from_env(conn_id)), conn_id)
        if use_hook:

            def hook_client() -> SearchClient:
                from airflow.providers.opensearch.hooks.opensearch import OpenSearchHook

                return OpenSearchBinding(OpenSearchHook(open_search_conn_id=conn_id, log_query=False).client)

            return cls(hook_client, conn_id)
        return cls(lambda: OpenSearchBinding(opensearch_client_from_env(conn_id)), conn_id)

    def rehearsable(self, bundle: Bundle) -> bool:
        """True when the forward is pure blue/green: every write lands in an index it creates
        and aliases only move at commit, so ``abort`` after ``apply`` deletes every trace
        (the reindex task result kept in the system index ``.tasks`` aside)."""
        made: set[str] = set()
        for act in load_actions(bundle.by_role("forward")):
            if act.name == "create_index":
                made.add(act.body["index"])
                continue
            written = act.body["dest"] if act.name == "reindex" else act.body.get("index")
            if act.name != "aliases" and written not in made:
                return False
        return True

    @classmethod
    def for_planning(cls, conn_id: str) -> SearchStore:
        """A store that can plan and evaluate but never connects."""
        return cls(None, conn_id)

    @property
    def client(self) -> SearchClient:
        if self._client is None:
            if self._factory is None:
                raise RefusedError("this store was opened for planning only; it cannot connect")
            self._client = self._factory()
        return self._client

    def ledger_entry(self, migration_id: str, run_id: str) -> dict[str, Any] | None:
        """The ledger document of one run, read without locks or writes (for ``verify --conn-id``)."""
        if not self.client.index_exists(GOVERNANCE_INDEX):
            return None
        doc = self.client.get_doc(GOVERNANCE_INDEX, f"ledger:{migration_id}:{run_id}")
        return dict(doc["_source"]) if doc is not None else None

    # -- plan -----------------------------------------------------------------

    def plan(self, bundle: Bundle) -> Plan:
        decl = bundle.declaration
        assert isinstance(decl, SearchDeclaration)
        rules = SearchScopeRules(decl)
        forward = load_actions(bundle.by_role("forward"))
        rollback = load_actions(bundle.by_role("rollback"))
        creates = created_by(forward)
        statements: list[PlannedStatement] = []
        findings: list[Finding] = []
        made: set[str] = set()
        for i, act in enumerate(forward, 1):
            indices, aliases = act.targets()
            note = None
            kind = "DML" if act.name == "reindex" else "DDL"
            if act.name == "aliases":
                note = "held back: flipped atomically at commit, after the gate passed"
            elif act.name == "reindex":
                note = "async reindex; dest doc count verified against the source"
            statements.append(
                PlannedStatement(i, kind, act.name, tuple(indices + [f"alias:{a}" for a in aliases]), False, note)
            )
            label = f"forward action {i} ({act.name})"
            findings += self._target_findings(decl, rules, label, indices, aliases)
            if act.name == "create_index":
                made.add(act.body["index"])
            if act.name == "delete_index" and act.body["index"] not in made:
                findings.append(
                    Finding(
                        code="plan_delete_not_created",
                        tier="hard_fail",
                        object=act.body["index"],
                        message=f"{label} deletes {act.body['index']}, which this migration did not create",
                    )
                )
            if act.name in {"put_mapping", "put_settings"} and act.body["index"] not in made and decl.transactional:
                findings.append(
                    Finding(
                        code="non_transactional_statement",
                        tier="hard_fail",
                        object=act.body["index"],
                        message=f"{label} changes an existing index durably before the gate; declare "
                        "transactional: false with a reason",
                    )
                )
        for i, act in enumerate(rollback, 1):
            indices, aliases = act.targets()
            label = f"rollback action {i} ({act.name})"
            findings += self._target_findings(decl, rules, label, indices, aliases)
            if act.name == "delete_index" and act.body["index"] not in creates:
                findings.append(
                    Finding(
                        code="plan_delete_not_created",
                        tier="hard_fail",
                        object=act.body["index"],
                        message=f"{label} deletes {act.body['index']}, which the forward does not create",
                    )
                )
        if decl.transactional:
            findings.append(
                Finding(
                    code="blue_green",
                    tier="informational",
                    message="search has no transactions: new indices are built beside the old ones and the alias "
                    "flip waits for the gate; an abort deletes the new indices",
                )
            )
        return Plan(bundle.migration_id, self.kind, tuple(statements), tuple(_dedupe(findings)))

    @staticmethod
    def _target_findings(
        decl: SearchDeclaration, rules: SearchScopeRules, label: str, indices: list[str], aliases: list[str]
    ) -> list[Finding]:
        out: list[Finding] = []
        for ix in indices:
            if rules.index_forbidden(ix):
                out.append(
                    Finding(
                        code="plan_forbidden_target",
                        tier="hard_fail",
                        object=ix,
                        message=f"{label} targets forbidden index {ix}",
                    )
                )
            elif rules.index_protected(ix):
                if not approval_covers(decl, f"protected:{ix}"):
                    out.append(
                        Finding(
                            code="plan_protected_target",
                            tier="hard_fail",
                            object=ix,
                            message=f"{label} targets protected index {ix} without approval",
                        )
                    )
            elif not rules.index_allowed(ix):
                out.append(
                    Finding(
                        code="plan_out_of_scope",
                        tier="hard_fail",
                        object=ix,
                        message=f"{label} targets index {ix}, outside the allowed index patterns",
                    )
                )
        for al in aliases:
            if rules.alias_forbidden(al):
                out.append(
                    Finding(
                        code="plan_forbidden_target",
                        tier="hard_fail",
                        object=f"alias:{al}",
                        message=f"{label} targets forbidden alias {al}",
                    )
                )
            elif not rules.alias_allowed(al):
                out.append(
                    Finding(
                        code="plan_out_of_scope",
                        tier="hard_fail",
                        object=f"alias:{al}",
                        message=f"{label} targets alias {al}, outside the allowed aliases",
                    )
                )
        return out

    # -- baseline -------------------------------------------------------------

    def capture(self, client: SearchClient, decl: SearchDeclaration) -> Baseline:
        rules = SearchScopeRules(decl)
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
                    BaselineObject(
                        id=f"index_template:{name}", kind="index_template", table=name, digest=digest_json(body)
                    )
                )
        for name, body in sorted(client.get_legacy_templates().items()):
            if not name.startswith("."):
                objects.append(
                    BaselineObject(id=f"template:{name}", kind="template", table=name, digest=digest_json(body))
                )
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
            extra={"doc_counts": counts_by_index},
        )

    def scope_fingerprint(self, bundle: Bundle, baseline: Baseline) -> str:
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

    # -- session --------------------------------------------------------------

    @contextmanager
    def session(self, bundle: Bundle, run_id: str) -> Iterator[SearchSession]:
        decl = bundle.declaration
        assert isinstance(decl, SearchDeclaration)
        s = SearchSession(self, bundle, run_id)
        try:
            s.open()
        except BaseException:
            s.release_if_ours()  # a lock taken just before a later step of open() failed
            raise
        try:
            yield s
        finally:
            s.close()

    # -- gate -----------------------------------------------------------------

    def evaluate(
        self, bundle: Bundle, pre: Baseline, post: Baseline, writes: list[WriteCount], facts: dict[str, Any]
    ) -> tuple[list[Finding], list[LimitCheck]]:
        decl = bundle.declaration
        assert isinstance(decl, SearchDeclaration)
        rules = SearchScopeRules(decl)
        findings: list[Finding] = []
        index_delta = 0
        for c in diff_objects(pre, post):
            name = c.table or ""
            if c.kind == "doc_count":
                continue  # guarded indices: the protected check; others follow live traffic
            if c.kind == "index":
                if c.change in {"added", "removed"}:
                    index_delta += 1
                forbidden, guarded, allowed = (
                    rules.index_forbidden(name),
                    rules.index_protected(name),
                    rules.index_allowed(name),
                )
            elif c.kind == "alias":
                forbidden, guarded, allowed = rules.alias_forbidden(name), False, rules.alias_allowed(name)
            else:  # templates: no action can change them, so any change is someone else's
                forbidden, guarded, allowed = False, False, False
            if forbidden:
                findings.append(
                    Finding(
                        code="forbidden_object_changed",
                        tier="hard_fail",
                        object=c.id,
                        message=f"{c.kind} {c.change} in forbidden scope",
                    )
                )
            elif guarded:
                continue  # protected objects: gate.protected_findings decides
            elif not allowed:
                findings.append(
                    Finding(
                        code="out_of_scope_change",
                        tier="hard_fail",
                        object=c.id,
                        message=f"{c.kind} {c.change} outside the allowed scope",
                    )
                )
            else:
                findings.append(
                    Finding(
                        code=f"object_{c.change}",
                        tier="informational",
                        object=c.id,
                        message=f"{c.kind} {c.change} within the declared scope",
                    )
                )
        # The alias flip happens after the gate: judge the held-back actions here.
        for spec in facts.get("pending_aliases", []):
            ((op, body),) = spec.items()
            ix, al = body["index"], body["alias"]
            obj = f"alias:{al}"
            if rules.alias_forbidden(al) or rules.index_forbidden(ix):
                findings.append(
                    Finding(
                        code="forbidden_object_changed",
                        tier="hard_fail",
                        object=obj,
                        message=f"pending alias {op} {al} -> {ix} touches forbidden scope",
                    )
                )
            elif rules.index_protected(ix) and not approval_covers(decl, f"protected:{ix}"):
                findings.append(
                    Finding(
                        code="protected_domain_changed",
                        tier="hard_fail",
                        object=obj,
                        message=f"pending alias {op} {al} -> protected {ix}; needs 'protected:{ix}'",
                    )
                )
            elif not rules.alias_allowed(al) or not (rules.index_allowed(ix) or rules.index_protected(ix)):
                findings.append(
                    Finding(
                        code="out_of_scope_change",
                        tier="hard_fail",
                        object=obj,
                        message=f"pending alias {op} {al} -> {ix} outside the allowed scope",
                    )
                )
            else:
                findings.append(
                    Finding(
                        code="alias_flip_pending",
                        tier="informational",
                        object=obj,
                        message=f"alias {op} {al} -> {ix} is flipped atomically at commit",
                    )
                )
        for w in writes:
            n = w.inserted + w.updated + w.deleted
            if not n:
                continue
            if rules.index_forbidden(w.table):
                findings.append(
                    Finding(
                        code="forbidden_write",
                        tier="hard_fail",
                        object=w.table,
                        message=f"{n} document(s) written into a forbidden index",
                    )
                )
            elif rules.index_protected(w.table):
                if not approval_covers(decl, f"protected:{w.table}"):
                    findings.append(
                        Finding(
                            code="protected_write",
                            tier="hard_fail",
                            object=w.table,
                            message=f"{n} document(s) written into a protected index",
                        )
                    )
            elif not rules.index_allowed(w.table):
                findings.append(
                    Finding(
                        code="out_of_scope_write",
                        tier="hard_fail",
                        object=w.table,
                        message=f"{n} document(s) written outside the allowed scope",
                    )
                )
        docs = int(facts.get("docs_reindexed", 0))
        limits, exceeded = limit_checks(decl.limits, {"max_index_count_delta": index_delta, "max_docs_reindexed": docs})
        findings.extend(exceeded)
        return findings, limits

    def assets(self, bundle: Bundle, summary: DiffSummary) -> list[str]:
        names = {c.table for c in summary.changes if c.kind == "index" and c.change == "added" and c.table}
        for act in load_actions(bundle.by_role("forward")):
            if act.name == "aliases":
                names |= {al for op, _ix, al in act.alias_ops() if op == "add"}
        # One scheme for OpenSearch and Elasticsearch: the DAG declares these outlets at parse
        # time, when the connection (and so the engine) is not looked up.
        return sorted(f"search://{self.conn_id}/{n}" for n in names)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str | None, str]] = set()
    out = []
    for f in findings:
        key = (f.code, f.object, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _strict(actions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alias actions for the wire: a ``remove`` must find its alias, or the whole call fails
    (without ``must_exist`` the cluster accepts a remove of a vanished alias next to an add)."""
    return [{"remove": {**a["remove"], "must_exist": True}} if "remove" in a else dict(a) for a in actions]


def _additive_problem(current: dict[str, Any], new: dict[str, Any], path: str = "") -> str | None:
    """The first field where ``new`` (a ``properties`` map) would change, not just extend,
    ``current``: new fields and new sub-fields are additive; any other difference is not."""
    for field_name, spec in new.items():
        here = f"{path}{field_name}"
        old = current.get(field_name)
        if old is None:
            continue
        if not isinstance(spec, dict) or not isinstance(old, dict):
            return here
        old_type = old.get("type", "object" if "properties" in old else None)
        for key, value in spec.items():
            if key in {"properties", "fields"}:
                if not isinstance(value, dict):
                    return here
                problem = _additive_problem(old.get(key) or {}, value, f"{here}.")
                if problem:
                    return problem
            elif key == "type":
                if value != old_type:
                    return here
            elif old.get(key) != value:
                return here
    return None


# ============================================================================ session


@dataclass
class _Reindexed:
    docs: int = 0
    writes: list[WriteCount] = field(default_factory=list)


@dataclass(frozen=True)
class GcDecision:
    index: str
    keep_until: str
    action: str  # deleted | would_delete | kept | gone
    why: str


@dataclass(frozen=True)
class LockHolder:
    owner: str
    since: str
    age_seconds: float
    stale: bool


def read_lock(client: SearchClient, migration_id: str) -> tuple[LockHolder, tuple[int, int]] | None:
    """The lock document of ``migration_id`` (holder, (seq_no, primary_term)), or None."""
    cur = client.get_doc(GOVERNANCE_INDEX, f"lock:{migration_id}")
    if cur is None:
        return None
    src = cur.get("_source", {})
    age = max(0.0, time.time() - float(src.get("ts", 0) or 0))
    holder = LockHolder(str(src.get("owner", "?")), str(src.get("at", "?")), round(age, 1), age > LOCK_STALE_SECONDS)
    return holder, (int(cur["_seq_no"]), int(cur["_primary_term"]))


def break_lock(
    client: SearchClient, migration_id: str, holder: LockHolder, seq: tuple[int, int], *, run_id: str, reason: str
) -> None:
    """Delete the lock document seen at ``seq`` (a lock renewed or replaced since is left
    alone: 409) and leave a ``break_lock`` document in the governance index."""
    try:
        client.delete_doc(GOVERNANCE_INDEX, f"lock:{migration_id}", if_seq_no=seq[0], if_primary_term=seq[1])
    except CallError as exc:
        if exc.status == 409:
            raise LockedError(
                f"the lock for {migration_id} changed since it was read (renewed or taken over); not broken"
            ) from None
        raise
    client.index_doc(
        GOVERNANCE_INDEX,
        f"break_lock:{migration_id}:{run_id}",
        {
            "type": "break_lock",
            "migration_id": migration_id,
            "run_id": run_id,
            "operation": "break_lock",
            "applied_at": _now_iso(),
            "applied_ns": time.time_ns(),
            "reason": redact(reason)[:500],
            "previous_owner": holder.owner,
            "held_since": holder.since,
            "lock_age_seconds": holder.age_seconds,
        },
        refresh=True,
    )


class SearchSession:
    """Holds the migration lock document; applies blue/green; flips at ``commit``."""

    transactional = False

    def __init__(self, store: SearchStore, bundle: Bundle, run_id: str) -> None:
        self.store = store
        self.bundle = bundle
        self.decl: SearchDeclaration = bundle.declaration  # type: ignore[assignment]
        self.run_id = run_id
        self.lock_id = f"lock:{self.decl.migration_id}"
        self._lock_seq: tuple[int, int] | None = None
        self._last_beat = 0.0
        self._created: list[str] = []  # indices this run created and abort still has to delete
        self._built: set[str] = set()  # every index this run created, kept after the abort
        self._applied_here = False
        self._pending: list[dict[str, Any]] = []
        self._records: list[LedgerRecord] = []
        self._facts: dict[str, Any] = {"docs_reindexed": 0, "pending_aliases": []}
        self._retained: list[dict[str, str]] = []  # old indices kept for a rollback, and until when
        self._state = "open"  # open | applied | aborted | committed

    @property
    def client(self) -> SearchClient:
        return self.store.client

    # -- lock -----------------------------------------------------------------

    def open(self) -> None:
        try:
            self._ensure_governance()
            self._acquire()
        except CallError as exc:
            raise RefusedError(f"cannot prepare the run on {self.store.conn_id}: {exc.line()}") from None

    def _ensure_governance(self) -> None:
        if self.client.index_exists(GOVERNANCE_INDEX):
            return
        try:
            self.client.create_index(
                GOVERNANCE_INDEX,
                {
                    "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1", "hidden": True},
                    "mappings": {
                        "dynamic": False,
                        "properties": {
                            "type": {"type": "keyword"},
                            "migration_id": {"type": "keyword"},
                            "run_id": {"type": "keyword"},
                            "operation": {"type": "keyword"},
                            "applied_at": {"type": "date"},
                            "applied_ns": {"type": "long"},
                        },
                    },
                },
            )
        except CallError as exc:
            if exc.kind != "resource_already_exists_exception":
                raise

    def _lock_doc(self) -> dict[str, Any]:
        return {
            "type": "lock",
            "migration_id": self.decl.migration_id,
            "owner": self.run_id,
            "ts": time.time(),
            "at": _now_iso(),
        }

    def _acquire(self) -> None:
        c = self.client
        for _ in range(3):
            try:
                c.index_doc(GOVERNANCE_INDEX, self.lock_id, self._lock_doc(), create=True, refresh=True)
                self._remember_lock()
                return
            except CallError as exc:
                if exc.status != 409:
                    raise
            cur = c.get_doc(GOVERNANCE_INDEX, self.lock_id)
            if cur is None:
                continue  # released in between: try again
            src = cur.get("_source", {})
            age = time.time() - float(src.get("ts", 0))
            if age <= LOCK_STALE_SECONDS:
                raise LockedError(
                    f"another run ({str(src.get('owner', '?'))[:12]}) holds the lock for {self.decl.migration_id} "
                    f"on {self.store.conn_id} since {src.get('at', '?')}; refusing to run concurrently"
                )
            try:  # stale: replace it, but only if nobody else did first
                c.index_doc(
                    GOVERNANCE_INDEX,
                    self.lock_id,
                    self._lock_doc(),
                    if_seq_no=cur["_seq_no"],
                    if_primary_term=cur["_primary_term"],
                    refresh=True,
                )
                log.warning("replaced a stale lock (%.0f s old) of run %s", age, str(src.get("owner"))[:12])
                self._remember_lock()
                return
            except CallError as exc:
                if exc.status != 409:
                    raise
        raise LockedError(f"could not take the lock for {self.decl.migration_id} on {self.store.conn_id}")

    def _remember_lock(self) -> None:
        cur = self.client.get_doc(GOVERNANCE_INDEX, self.lock_id)
        if cur is None or cur.get("_source", {}).get("owner") != self.run_id:
            raise LockedError(f"lost the lock for {self.decl.migration_id} on {self.store.conn_id}")
        self._lock_seq = (int(cur["_seq_no"]), int(cur["_primary_term"]))
        self._last_beat = time.monotonic()

    def _heartbeat(self) -> None:
        """Keep a long reindex's lock fresh; losing it stops the run."""
        if self._lock_seq is None or time.monotonic() - self._last_beat < HEARTBEAT_SECONDS:
            return
        seq, term = self._lock_seq
        try:
            self.client.index_doc(GOVERNANCE_INDEX, self.lock_id, self._lock_doc(), if_seq_no=seq, if_primary_term=term)
        except CallError as exc:
            if exc.status == 409:
                raise LockedError(f"the lock for {self.decl.migration_id} was taken over during the run") from None
            raise
        self._remember_lock()

    def close(self) -> None:
        """Session exit: undo an apply that was neither committed nor aborted, release the lock."""
        try:
            if self._state == "applied":
                self.abort()
        finally:
            self._release()

    def release_if_ours(self) -> None:
        self._release()

    def _release(self) -> None:
        try:
            cur = self.client.get_doc(GOVERNANCE_INDEX, self.lock_id)
            if cur is not None and cur.get("_source", {}).get("owner") == self.run_id:
                self.client.delete_doc(
                    GOVERNANCE_INDEX, self.lock_id, if_seq_no=cur["_seq_no"], if_primary_term=cur["_primary_term"]
                )
        except RefusedError as exc:  # the lock goes stale after an hour in the worst case
            log.warning("could not release the lock %s: %s", self.lock_id, exc)
        self._lock_seq = None

    # -- ledger ---------------------------------------------------------------

    def ledger_last(self) -> LedgerRecord | None:
        src = self.last_entry()
        if src is None:
            return None
        names = LedgerRecord.__dataclass_fields__
        return LedgerRecord(**{k: v for k, v in src.items() if k in names})

    def record(self, rec: LedgerRecord) -> None:
        """Kept until ``commit``: the ledger entry is written only once the flip succeeded."""
        self._records.append(rec)

    def _write_records(self) -> None:
        post_scope: str | None = None
        post_schema: str | None = None
        if self._records:
            after = self.baseline()  # after the flip: what a later drift check compares with
            post_scope = self.store.scope_fingerprint(self.bundle, after)
            post_schema = after.schema_fingerprint
        for rec in self._records:
            if rec.operation == "apply" and post_scope is not None and post_schema is not None:
                rec = replace(rec, post_scope_fingerprint=post_scope, post_schema_fingerprint=post_schema)
            now = datetime.now(UTC)
            doc = {
                **rec.__dict__,
                "applied_at": now.isoformat(),
                "applied_ns": time.time_ns(),
                "type": "ledger",
                "flipped_aliases": [dict(a) for a in self._pending] if rec.operation == "apply" else [],
            }
            if rec.operation == "apply":
                doc["old_index_retention_days"] = self.decl.old_index_retention_days
                doc["retained_indices"] = [dict(r) for r in self._retained]
            self.client.index_doc(GOVERNANCE_INDEX, f"ledger:{rec.migration_id}:{rec.run_id}", doc, refresh=True)
        self._records = []

    def set_receipt_digest(self, run_id: str, digest: str) -> None:
        doc_id = f"ledger:{self.decl.migration_id}:{run_id}"
        cur = self.client.get_doc(GOVERNANCE_INDEX, doc_id)
        if cur is None:
            return
        src = dict(cur["_source"])
        src["receipt_digest"] = digest
        self.client.index_doc(
            GOVERNANCE_INDEX,
            doc_id,
            src,
            if_seq_no=cur["_seq_no"],
            if_primary_term=cur["_primary_term"],
            refresh=True,
        )

    # -- baseline / facts -----------------------------------------------------

    def baseline(self) -> Baseline:
        return self.store.capture(self.client, self.decl)

    def facts(self, pre: Baseline, post: Baseline) -> dict[str, Any]:
        return json.loads(json.dumps(self._facts))

    # -- apply / rollback -----------------------------------------------------

    def apply(self) -> ApplyOutcome:
        actions = load_actions(self.bundle.by_role("forward"))
        self._state = "applied"
        self._applied_here = True
        return self._run(actions, forward=True)

    def rollback(self) -> ApplyOutcome:
        """Run the rollback artifact. Alias actions are made idempotent (pairs already in the
        wanted state are dropped; the rest is one atomic call); ``delete_index`` only names
        indices the forward creates. Compensating a run of this session (after ``abort``), its
        alias actions are skipped (this run never flipped) and only indices this run built
        count as its own."""
        actions = load_actions(self.bundle.by_role("rollback"))
        return self._run(actions, forward=False)

    def _run(self, actions: list[Action], *, forward: bool) -> ApplyOutcome:
        started = time.monotonic()
        total = _Reindexed()
        n = 0
        forward_creates = set(created_by(load_actions(self.bundle.by_role("forward"))))
        act: Action | None = None
        try:
            for act in actions:
                n += 1
                self._heartbeat()
                b = act.body
                if act.name == "aliases":
                    if forward:
                        self._pending.extend({op: {"index": ix, "alias": al}} for op, ix, al in act.alias_ops())
                    elif self._applied_here:
                        # Compensating this run: its flip never happened, the aliases are as before.
                        log.info("compensation: alias action %d skipped (this run never flipped)", act.pos)
                    else:
                        self._flip_now(act)
                elif act.name == "create_index":
                    body: dict[str, Any] = {k: b[k] for k in ("settings", "mappings") if k in b}
                    self.client.create_index(b["index"], body)
                    if forward:
                        self._created.append(b["index"])
                        self._built.add(b["index"])
                elif act.name == "put_mapping":
                    problem = self._additive(b["index"], b["mappings"]["properties"])
                    if problem:
                        return self._failed(act, n, f"put_mapping is additive only: {problem} would change", started)
                    self.client.put_mapping(b["index"], b["mappings"])
                elif act.name == "put_settings":
                    self.client.put_settings(b["index"], b["settings"])
                elif act.name == "delete_index":
                    ix = b["index"]
                    allowed = self._created if forward else forward_creates
                    if ix not in allowed:
                        return self._failed(act, n, f"refusing to delete {ix}: not created by this migration", started)
                    if not forward and self._applied_here and ix not in self._built:
                        # Compensating this run: an index of that name that this run did not
                        # build (e.g. a leftover that made create_index fail) is not ours to delete.
                        log.warning("compensation: %s was not created by this run; left in place", ix)
                        continue
                    if not forward and not self.client.index_exists(ix):
                        continue  # already gone (the abort or an earlier rollback removed it)
                    self.client.delete_index(ix)
                elif act.name == "reindex":
                    err = self._reindex(act, total)
                    if err:
                        return self._failed(act, n, err, started, total)
            if forward:
                problem = self._check_pending()
                if problem:
                    return self._failed(act, n, problem, started, total)
                self._facts = {"docs_reindexed": total.docs, "pending_aliases": list(self._pending)}
                self._retained = self._retention()
        except CallError as exc:
            assert act is not None
            return self._failed(act, n, exc.line(), started, total)
        metrics: dict[str, int | float | str] = {"apply_seconds": round(time.monotonic() - started, 3)}
        if forward:
            metrics.update(docs_reindexed=total.docs, aliases_held_back=len(self._pending))
            metrics.update(
                old_index_retention_days=self.decl.old_index_retention_days,
                old_indices_kept=len(self._retained),
            )
            if self._retained:
                metrics["old_indices_kept_names"] = ",".join(r["index"] for r in self._retained)
                metrics["old_indices_kept_until"] = self._retained[0]["keep_until"]
        return ApplyOutcome(
            ok=True,
            writes=total.writes,
            facts=json.loads(json.dumps(self._facts)) if forward else {},
            statements_run=n,
            metrics=metrics,
        )

    def _failed(
        self, act: Action | None, n: int, error: str, started: float, total: _Reindexed | None = None
    ) -> ApplyOutcome:
        where = f"action {act.pos} ({act.name}) of {act.file.rsplit('/', 1)[-1]}" if act else "actions"
        return ApplyOutcome(
            ok=False,
            writes=total.writes if total else [],
            error=f"{where}: {error}",
            statements_run=n - 1,
            metrics={"apply_seconds": round(time.monotonic() - started, 3)},
        )

    def _additive(self, index: str, properties: dict[str, Any]) -> str | None:
        meta = self.client.get_indices(index).get(index, {})
        current = (meta.get("mappings") or {}).get("properties", {})
        return _additive_problem(current, properties)

    def _alias_pairs(self) -> set[tuple[str, str]]:
        return {(ix, al) for ix, meta in self.client.get_alias().items() for al in (meta.get("aliases") or {})}

    def _flip_now(self, act: Action) -> None:
        """A rollback alias action, made idempotent: pairs already in the wanted state are dropped,
        the rest go in one atomic call."""
        pairs = self._alias_pairs()
        todo = [
            {op: {"index": ix, "alias": al}}
            for op, ix, al in act.alias_ops()
            if (op == "remove" and (ix, al) in pairs) or (op == "add" and (ix, al) not in pairs)
        ]
        if todo:
            self.client.update_aliases(_strict(todo))

    def _check_pending(self) -> str | None:
        """Refuse before the gate an alias flip that the cluster would reject at commit."""
        if not self._pending:
            return None
        pairs = self._alias_pairs()
        existing = set(self.client.get_alias())
        for spec in self._pending:
            ((op, body),) = spec.items()
            ix, al = body["index"], body["alias"]
            if op == "add" and ix not in existing:
                return f"the held-back alias action add {al} -> {ix} names a missing index"
            if op == "remove" and (ix, al) not in pairs:
                return f"the held-back alias action remove {al} -> {ix} names a missing alias"
        return None

    def _reindex(self, act: Action, total: _Reindexed) -> str | None:
        b = act.body
        c = self.client
        src, dest = b["source"], b["dest"]
        c.refresh(dest)
        dest_before = c.count(dest) if c.index_exists(dest) else 0
        body: dict[str, Any] = {"source": {"index": src}, "dest": {"index": dest}}
        if "query" in b:
            body["source"]["query"] = b["query"]
        if "script" in b:
            body["script"] = b["script"]
        task = c.reindex_async(body, slices=b.get("slices"), rps=b.get("requests_per_second"))
        deadline = time.monotonic() + _seconds(self.decl.timeouts.statement_timeout)
        last_log = 0.0
        while True:
            t = c.get_task(task)
            if t.get("completed"):
                break
            if time.monotonic() > deadline:
                with suppress(CallError):
                    c.cancel_task(task)
                return f"reindex {src} -> {dest} did not finish within {self.decl.timeouts.statement_timeout}"
            st = (t.get("task") or {}).get("status") or {}
            if time.monotonic() - last_log > 5:
                log.info(
                    "reindex %s -> %s: %s/%s documents",
                    src,
                    dest,
                    int(st.get("created", 0)) + int(st.get("updated", 0)),
                    st.get("total", "?"),
                )
                last_log = time.monotonic()
            self._heartbeat()
            time.sleep(POLL_SECONDS)
        if t.get("error"):
            err = t["error"]
            return f"reindex {src} -> {dest} failed: {err.get('type', 'error')}: {redact(str(err.get('reason', '')))}"
        resp = t.get("response") or {}
        failures = resp.get("failures") or []
        if failures:
            first = failures[0]
            cause = first.get("cause", {}) if isinstance(first, dict) else {}
            return f"reindex {src} -> {dest}: {len(failures)} failure(s), first: {cause.get('type', 'error')}"
        created, updated, deleted = (int(resp.get(k, 0)) for k in ("created", "updated", "deleted"))
        total.docs += int(resp.get("total", created + updated))
        total.writes.append(WriteCount(table=dest, inserted=created, updated=updated, deleted=deleted))
        c.refresh(src)
        c.refresh(dest)
        expected = c.count(src, b.get("query"))
        got = c.count(dest) - dest_before
        log.info("reindex %s -> %s done: %d documents, dest gained %d, expected %d", src, dest, created, got, expected)
        if got != expected:
            return f"doc count mismatch: {dest} gained {got} documents, {src} has {expected}" + (
                " matching the query" if "query" in b else ""
            )
        return None

    # -- retention / gc -------------------------------------------------------

    def _retention(self) -> list[dict[str, str]]:
        """The old indices the held-back flip moves an alias away from (not built by this run):
        a rollback needs them, so they are kept for ``old_index_retention_days``."""
        until = (datetime.now(UTC) + timedelta(days=self.decl.old_index_retention_days)).isoformat()
        old: list[str] = []
        for spec in self._pending:
            ((op, body),) = spec.items()
            ix = body["index"]
            if op == "remove" and ix not in self._built and ix not in old:
                old.append(ix)
        return [{"index": ix, "keep_until": until} for ix in old]

    def last_entry(self) -> dict[str, Any] | None:
        """The raw last ledger document of this migration (apply or rollback)."""
        if not self.client.index_exists(GOVERNANCE_INDEX):
            return None
        self.client.refresh(GOVERNANCE_INDEX)
        hits = self.client.search(
            GOVERNANCE_INDEX,
            {
                "size": 1,
                "query": {
                    "bool": {
                        "filter": [
                            {"term": {"type": "ledger"}},
                            {"term": {"migration_id": self.decl.migration_id}},
                        ]
                    }
                },
                "sort": [
                    {"applied_at": {"order": "desc", "unmapped_type": "date"}},
                    {"applied_ns": {"order": "desc", "unmapped_type": "long"}},
                ],
            },
        )
        return dict(hits[0]["_source"]) if hits else None

    def collect_garbage(self, now: datetime, *, dry_run: bool = False) -> list[GcDecision]:
        """Delete the old indices the last apply kept whose retention expired at ``now``.

        Never an index an alias points to, a forbidden or protected one, one outside the
        allowed patterns or one this migration's forward creates. Call it holding the lock
        (inside :meth:`SearchStore.session`). Records a ``gc`` document in the governance
        index (not a ledger entry: the migration stays applied)."""
        last = self.last_entry()
        if last is None or last.get("operation") != "apply":
            return []
        rules = SearchScopeRules(self.decl)
        forward_creates = set(created_by(load_actions(self.bundle.by_role("forward"))))
        aliased = {ix for ix, meta in self.client.get_alias().items() if meta.get("aliases")}
        out: list[GcDecision] = []
        for item in last.get("retained_indices") or []:
            ix, until_s = str(item.get("index", "")), str(item.get("keep_until", ""))
            try:
                until = datetime.fromisoformat(until_s)
            except ValueError:
                out.append(GcDecision(ix, until_s, "kept", "unreadable keep_until in the ledger"))
                continue
            if rules.index_forbidden(ix):
                out.append(GcDecision(ix, until_s, "kept", "forbidden index: never deleted"))
            elif rules.index_protected(ix):
                out.append(GcDecision(ix, until_s, "kept", "protected index: never deleted"))
            elif not rules.index_allowed(ix):
                out.append(GcDecision(ix, until_s, "kept", "outside the allowed index patterns"))
            elif ix in forward_creates:
                out.append(GcDecision(ix, until_s, "kept", "created by this migration's forward"))
            elif now < until:
                out.append(GcDecision(ix, until_s, "kept", f"retained until {until_s}"))
            elif not self.client.index_exists(ix):
                out.append(GcDecision(ix, until_s, "gone", "already deleted"))
            elif ix in aliased:
                out.append(GcDecision(ix, until_s, "kept", "an alias points to it"))
            elif dry_run:
                out.append(GcDecision(ix, until_s, "would_delete", f"retention expired at {until_s}"))
            else:
                self._heartbeat()
                # Re-check right before the delete: an alias added meanwhile keeps the index.
                if self.client.get_alias().get(ix, {}).get("aliases"):
                    out.append(GcDecision(ix, until_s, "kept", "an alias points to it"))
                    continue
                self.client.delete_index(ix)
                out.append(GcDecision(ix, until_s, "deleted", f"retention expired at {until_s}"))
        deleted = [d.index for d in out if d.action == "deleted"]
        if deleted:
            self.client.index_doc(
                GOVERNANCE_INDEX,
                f"gc:{self.decl.migration_id}:{self.run_id}",
                {
                    "type": "gc",
                    "migration_id": self.decl.migration_id,
                    "run_id": self.run_id,
                    "operation": "gc",
                    "applied_at": _now_iso(),
                    "applied_ns": time.time_ns(),
                    "apply_run_id": last.get("run_id"),
                    "deleted_indices": deleted,
                    "now": now.isoformat(),
                },
                refresh=True,
            )
        return out

    # -- commit / abort -------------------------------------------------------

    def commit(self) -> None:
        if self._state == "applied" and self._pending:
            try:
                self.client.update_aliases(_strict(self._pending))
            except CallError as exc:
                self.abort()
                raise RefusedError(
                    f"the alias flip was refused ({exc.line()}); aliases unchanged, the new indices were deleted"
                ) from None
        if self._state != "aborted":
            try:
                self._write_records()
            except CallError as exc:
                raise RefusedError(
                    f"the change is live but the ledger entry could not be written: {exc.line()}"
                ) from None
        if self._state == "applied":
            self._state = "committed"

    def abort(self) -> None:
        """Delete the indices this run created; never touch an alias."""
        if self._state == "committed":
            return
        self._records = []
        self._pending = []
        for ix in reversed(self._created):
            try:
                if self.client.index_exists(ix):
                    self.client.delete_index(ix)
            except CallError as exc:
                log.error("abort: could not delete %s: %s", ix, exc.line())
        self._created = []
        if self._state == "applied":
            self._state = "aborted"
