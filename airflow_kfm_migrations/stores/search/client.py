"""The cluster client: the few calls the store makes (:class:`SearchClient`) and the two
bindings behind them, opensearch-py (:class:`OpenSearchBinding`) and elasticsearch-py 9
(:class:`ElasticsearchBinding`, chosen when the connection's type is ``elasticsearch``).
Both translate the library's errors into :class:`CallError`, which carries no host and no
credential. Clients are made by the official providers' hooks from Airflow's connection
(:func:`client_factory`), for the CLI and the operators alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from airflow_kfm_migrations.errors import InputError, RefusedError, StoreCallError
from airflow_kfm_migrations.util.connections import ConnectionInfo, env_var_name, log, resolve, truthy
from airflow_kfm_migrations.util.secret_scan import redact

CallError = StoreCallError  # the search store's name for a failed cluster call


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
    def reindex_tasks(self) -> dict[str, str]: ...
    def shard_stats(self, pattern: str) -> dict[str, Any]: ...
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

    def reindex_tasks(self) -> dict[str, str]:
        """The reindex tasks running in the cluster: task id -> description
        (``reindex from [src] to [dest]``)."""
        res = self._do(self.c.tasks.list, **self._query(actions="*reindex", detailed=True))
        out: dict[str, str] = {}
        for node in (res.get("nodes") or {}).values():
            for tid, t in (node.get("tasks") or {}).items():
                if not t.get("parent_task_id"):  # a sliced reindex: its parent carries the children
                    out[str(tid)] = str(t.get("description", ""))
        return out

    def shard_stats(self, pattern: str) -> dict[str, Any]:
        """Per index: its ``uuid`` and ``shards`` (shard -> copies, each with ``routing.primary``
        and ``seq_no.max_seq_no``), open indices and hidden ones."""
        res = self._do(
            self.c.indices.stats,
            index=pattern,
            metric="indexing",
            **self._query(
                level="shards",
                expand_wildcards="open,hidden",
                filter_path="indices.*.uuid,indices.*.shards.*.routing.primary,indices.*.shards.*.seq_no.max_seq_no",
            ),
        )
        return dict(res.get("indices") or {})

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
            return CallError(status, kind, redact(reason))
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
    OpenSearch) and sends ``compatible-with=9`` media types; the elasticsearch provider lowers
    that to the server's major version when Airflow's ``[elasticsearch] es_compat_with`` says so."""

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
            return CallError(status, kind, redact(reason))
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

    def reindex_tasks(self) -> dict[str, str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=Warning)
            return super().reindex_tasks()


ClientFactory = Callable[[], SearchClient]
ELASTICSEARCH_CONN_TYPES = frozenset({"elasticsearch", "elastic"})

# Extras this package read for Elasticsearch connections before it went through the
# provider's hook, with what replaces them. The hook passes every extra to the client, which
# rejects these names, so they are refused (exit 2) rather than ignored.
ES_RENAMED = {
    "compatible_with": "set Airflow's [elasticsearch] es_compat_with (AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH) "
    "to the server's major version",
    "use_ssl": "put https in the connection's schema field (elasticsearch://host:9200/https)",
    "timeout": "use the extra request_timeout",
}
# Extras ElasticsearchSQLHook keeps for its SQL cursor and does not pass to the client.
ES_CURSOR_EXTRAS = frozenset({"fetch_size", "field_multi_value_leniency"})


def check_elasticsearch(info: ConnectionInfo) -> None:
    """InputError (exit 2) for an Elasticsearch connection the provider's hook cannot turn into
    a client: an old extra of this package, an extra the client does not take, no port."""
    import inspect

    from elasticsearch import Elasticsearch

    where = env_var_name(info.conn_id)
    for old, instead in ES_RENAMED.items():
        if old in info.extra:
            raise InputError(where, old, f"this extra is no longer read; {instead}")
    params = inspect.signature(Elasticsearch.__init__).parameters
    for key, value in info.extra.items():
        if key in ES_CURSOR_EXTRAS:
            continue
        if key not in params or key in {"self", "hosts", "_transport"}:
            raise InputError(where, key, "not a parameter of the Elasticsearch client (see docs/connections.md)")
        if isinstance(value, str) and not _takes_str(params[key].annotation):
            # A URI's query gives strings; the hook passes them on as they are.
            raise InputError(
                where,
                key,
                "the client wants a number or a boolean, not a string: give the extras as JSON "
                '(?__extra__={"' + key + '": ...} or the JSON form of the connection)',
            )
    if info.port is None:
        raise InputError(where, "port", "the elasticsearch provider needs the port (e.g. :9200)")


def _takes_str(annotation: Any) -> bool:
    import typing

    return annotation is str or str in typing.get_args(annotation)


def client_factory(conn_id: str) -> ClientFactory:
    """The cluster client for Airflow's connection ``conn_id`` (looked up now, made on first
    use), in the CLI and in Airflow alike, by the official provider's hook:

    - ``elasticsearch``: ``ElasticsearchSQLHook(...).get_conn().es``: the URL from host, port
      and schema (``http`` unless the schema says ``https``), basic auth from login and password,
      every other extra a parameter of ``elasticsearch.Elasticsearch`` (``verify_certs``,
      ``ca_certs``, ``api_key``, ``request_timeout``, ``http_compress``, ...), and Airflow's
      ``[elasticsearch] es_compat_with`` for a server older than the client;
    - anything else: ``OpenSearchHook(...).client`` with the hook's extras (``use_ssl``,
      ``verify_certs``, ``timeout``, ``http_compress``, ``url_prefix``, ``headers``,
      ``opaque_id``, ``scheme``).
    """
    info = resolve(conn_id)
    if (info.conn_type or "") in ELASTICSEARCH_CONN_TYPES:
        installed("elasticsearch", ("elasticsearch", "airflow.providers.elasticsearch"))
        check_elasticsearch(info)

        def elasticsearch_client() -> SearchClient:
            from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchSQLHook

            with _made(conn_id):
                return ElasticsearchBinding(ElasticsearchSQLHook(elasticsearch_conn_id=conn_id).get_conn().es)

        return elasticsearch_client
    if truthy(info.extra.get("use_ssl")) and not truthy(info.extra.get("verify_certs")):
        log.warning(
            "connection %s: use_ssl without verify_certs: the opensearch provider does not verify "
            "the server's certificate; set the extra verify_certs to true",
            conn_id,
        )

    installed("opensearch", ("opensearchpy", "airflow.providers.opensearch"))

    def opensearch_client() -> SearchClient:
        from airflow.providers.opensearch.hooks.opensearch import OpenSearchHook

        with _made(conn_id):
            return OpenSearchBinding(OpenSearchHook(open_search_conn_id=conn_id, log_query=False).client)

    return opensearch_client


def installed(extra: str, modules: tuple[str, ...]) -> None:
    """RefusedError naming the ``pip install`` when the connection's client stack is missing
    (the search kind runs with either stack; the connection's type picks one)."""
    import importlib.util

    def present(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    missing = [m for m in modules if not present(m)]
    if missing:
        raise RefusedError(
            f"the search store needs packages that are not installed ({', '.join(missing)}); "
            f"pip install 'airflow-kfm-migrations[{extra}]'"
        )


@contextmanager
def _made(conn_id: str) -> Iterator[None]:
    """A client the hook cannot make (a bad URL or parameter) fails closed without its text,
    which may name the host."""
    try:
        yield
    except RefusedError:
        raise
    except Exception as exc:  # broad: the client libraries raise many kinds
        raise RefusedError(f"cannot make a client for {conn_id}: {type(exc).__name__}") from None
