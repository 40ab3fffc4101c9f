"""OpenSearch / Elasticsearch store; the entry point is
:class:`airflow_kfm_migrations.stores.search.store.SearchStore`."""
