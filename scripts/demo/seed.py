"""Seed the demo stores with the small worlds the example migrations expect (idempotent).

    python scripts/demo/seed.py postgis|search|graph

Connections come from AIRFLOW_CONN_KFM_POSTGIS / _SEARCH / _GRAPH, as for the DAGs.
"""

from __future__ import annotations

import sys

from airflow_kfm_migrations.util.connections import resolve


def seed_postgis() -> None:
    import psycopg

    c = resolve("kfm_postgis")
    with psycopg.connect(host=c.host, port=c.port, user=c.login, password=c.password, dbname=c.schema,
                         autocommit=True) as conn:
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


def seed_search() -> None:
    from opensearchpy import OpenSearch, helpers

    c = resolve("kfm_search")
    client = OpenSearch(hosts=[{"host": c.host, "port": c.port or 9200}])
    if not client.indices.exists(index="parcels_v1"):
        client.indices.create(index="parcels_v1", body={
            "settings": {"number_of_shards": 1, "number_of_replicas": 0},
            "mappings": {"properties": {"parcel_id": {"type": "keyword"}, "name": {"type": "text"},
                                        "area_m2": {"type": "double"}}}})
        helpers.bulk(client, ({"_index": "parcels_v1", "_id": str(i),
                               "_source": {"parcel_id": f"P{i}", "name": f"parcel {i}", "area_m2": i * 10.0}}
                              for i in range(1, 1001)), refresh=True)
        client.indices.put_alias(index="parcels_v1", name="parcels")
    if not client.indices.exists(index="authority_sites_v1"):
        client.indices.create(index="authority_sites_v1", body={"settings": {"number_of_replicas": 0}})
        client.index(index="authority_sites_v1", id="1", body={"name": "Fort Larned"}, refresh=True)


def seed_graph() -> None:
    import neo4j

    c = resolve("kfm_graph")
    auth = (c.login, c.password) if c.login else None
    with neo4j.GraphDatabase.driver(f"bolt://{c.host}:{c.port or 7687}", auth=auth) as driver:
        records, _, _ = driver.execute_query("MATCH (n:LegacyDataset|Dataset) RETURN count(n) AS n")
        if records[0]["n"] == 0:
            driver.execute_query(
                "UNWIND range(1, 200) AS i CREATE (:LegacyDataset {dataset_id: 'ds-' + i, title: 'Dataset ' + i})")
            driver.execute_query("MERGE (:AuthoritySite {site_id: 'fort-larned', name: 'Fort Larned'})")


if __name__ == "__main__":
    {"postgis": seed_postgis, "search": seed_search, "graph": seed_graph}[sys.argv[1]]()
