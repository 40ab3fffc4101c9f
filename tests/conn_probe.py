"""What a store's connection reaches and with which settings, as seen from the client the
store opens (tests/test_connections.py). Imported by the test (the CLI's path) and by the
probe DAG it runs through ``airflow dags test`` (the operators' path), so both sides report
the same facts the same way."""

from __future__ import annotations

from typing import Any

from airflow_kfm_migrations.stores.base import open_store


def probe(kind: str, conn_id: str, *, use_hook: bool) -> dict[str, Any]:
    store: Any = open_store(kind, conn_id, use_hook=use_hook)
    if kind == "postgis":
        with store.connect() as c:
            params = {k: v for k, v in c.info.get_parameters().items() if k != "password"}
            row = c.execute(
                "SELECT current_database(), inet_server_port(), current_user,"
                " current_setting('application_name'), current_setting('statement_timeout'),"
                " (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()),"
                " (SELECT system_identifier::text FROM pg_control_system())"
            ).fetchone()
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        with PostgresHook(postgres_conn_id=conn_id).get_conn() as h:  # the provider's hook on its own
            by_hook = {k: v for k, v in h.info.get_parameters().items() if k != "password"}
        # Every parameter the hook sets, the store's connection has, with the same value.
        differs = sorted(k for k, v in by_hook.items() if params.get(k) != v)
        return {"params": params, "server": list(row), "differs_from_hook": differs}
    if kind == "graph":
        from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

        by_hook = Neo4jHook(conn_id).get_conn()  # the provider's hook on its own
        hook = [type(by_hook).__name__, by_hook.encrypted]
        by_hook.close()
        driver = store.connect()
        try:
            driver.verify_connectivity()
            info = driver.get_server_info()
            return {
                "driver": type(driver).__name__,
                "encrypted": driver.encrypted,
                "database": store.database,
                "server": [str(info.address), info.agent],
                "hook": hook,
            }
        finally:
            driver.close()
    binding = store.client
    client = binding.c
    if type(binding).__name__ == "ElasticsearchBinding":
        # An 8.x node answers only when the client asks for compatible-with=8.
        nodes = client.nodes.info(node_id="_local", metric="_none").body
        cfg = client.transport.node_pool.get().config
        return {
            "binding": type(binding).__name__,
            "node": [cfg.scheme, cfg.host, cfg.port, cfg.http_compress, cfg.verify_certs],
            "server": [nodes["cluster_name"], sorted(nodes["nodes"])],
        }
    conn = client.transport.get_connection()
    return {
        "binding": type(binding).__name__,
        "connection": [type(conn).__name__, conn.host, conn.use_ssl, conn.timeout, conn.http_compress],
        "opaque_id": dict(conn.headers).get("x-opaque-id"),
        "server": binding.info()["cluster_uuid"],
    }


def probe_all(specs: list[list[str]], *, use_hook: bool) -> dict[str, Any]:
    """``specs``: [name, kind, conn_id] each; a failure is reported as its error type."""
    out: dict[str, Any] = {}
    for name, kind, conn_id in specs:
        try:
            out[name] = probe(kind, conn_id, use_hook=use_hook)
        except Exception as exc:  # broad: the report says which side failed how
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out
