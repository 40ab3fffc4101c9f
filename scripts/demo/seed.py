"""Seed the demo stores with the small worlds the example migrations expect (idempotent).

    python scripts/demo/seed.py postgis|search|graph [...]

Connections come from AIRFLOW_CONN_KFM_POSTGIS / _SEARCH / _GRAPH (or a secrets backend) and
are reached the way the DAGs and the CLI reach them: through the providers' hooks
(docs/connections.md). ``search`` works on OpenSearch and on Elasticsearch (connection type
``elasticsearch``). docker/compose.yml runs this script in its ``seed`` service.
"""

from __future__ import annotations

import sys

from airflow_kfm_migrations.kinds import KINDS
from airflow_kfm_migrations.stores.base import open_store
from airflow_kfm_migrations.util.connections import in_cli

# What the example bundles (migrations/<kind>/) expect to find; tests/test_docker_compose.py
# checks that every kind with an example bundle is seeded here.
SEEDED = ("postgis", "search", "graph")


def seed_postgis() -> None:
    store = open_store("postgis", KINDS["postgis"].default_conn_id)
    conn = store.connect()  # type: ignore[attr-defined]
    try:
        conn.autocommit = True
        conn.execute("""
            CREATE TABLE IF NOT EXISTS public.parcels (id serial PRIMARY KEY, name text NOT NULL,
                                                       geom geometry(Polygon, 4326));
            CREATE TABLE IF NOT EXISTS public.authority_sites (id int PRIMARY KEY, name text NOT NULL);
        """)
        if conn.execute("SELECT count(*) FROM public.parcels").fetchone()[0] == 0:
            conn.execute("""
                INSERT INTO public.parcels (name, geom)
                SELECT 'parcel-' || g, ST_MakeEnvelope(g, g, g + 1, g + 1, 4326) FROM generate_series(1, 1000) g;
                INSERT INTO public.authority_sites VALUES (1, 'Fort Larned') ON CONFLICT DO NOTHING;
            """)
    finally:
        conn.close()


def seed_search() -> None:
    client = open_store("search", KINDS["search"].default_conn_id).client  # type: ignore[attr-defined]
    if not client.index_exists("parcels_v1"):
        client.create_index("parcels_v1", {
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"parcel_id": {"type": "keyword"}, "name": {"type": "text"},
                                        "area_m2": {"type": "double"}}}})
        for i in range(1, 1001):
            client.index_doc("parcels_v1", str(i), {"parcel_id": f"P{i}", "name": f"parcel {i}", "area_m2": i * 10.0})
        client.refresh("parcels_v1")
        client.update_aliases([{"add": {"index": "parcels_v1", "alias": "parcels"}}])
    if not client.index_exists("authority_sites_v1"):
        client.create_index("authority_sites_v1", {"settings": {"number_of_replicas": 0}})
        client.index_doc("authority_sites_v1", "1", {"name": "Fort Larned"}, refresh=True)


def seed_graph() -> None:
    store = open_store("graph", KINDS["graph"].default_conn_id)
    driver = store.connect()  # type: ignore[attr-defined]
    try:
        db = store.database  # type: ignore[attr-defined]
        records, _, _ = driver.execute_query("MATCH (n:LegacyDataset|Dataset) RETURN count(n) AS n", database_=db)
        if records[0]["n"] == 0:
            driver.execute_query(
                "UNWIND range(1, 200) AS i CREATE (:LegacyDataset {dataset_id: 'ds-' + i, title: 'Dataset ' + i})",
                database_=db)
            driver.execute_query("MERGE (:AuthoritySite {site_id: 'fort-larned', name: 'Fort Larned'})", database_=db)
    finally:
        driver.close()


if __name__ == "__main__":
    in_cli()  # Airflow's INFO lines (one per indexed document) stay out of the output
    seeders = {"postgis": seed_postgis, "search": seed_search, "graph": seed_graph}
    for kind in sys.argv[1:] or SEEDED:
        seeders[kind]()
        print(f"seeded {kind}")
