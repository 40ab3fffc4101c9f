#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: venv, real servers, lint, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/stores/postgis.sh start
bash scripts/stores/s3proxy.sh start
if [ -f tests/test_graph.py ]; then bash scripts/stores/neo4j.sh start; fi
if [ -f tests/test_search.py ]; then bash scripts/stores/opensearch.sh start; fi
if [ -f tests/test_search_elasticsearch.py ]; then bash scripts/stores/elasticsearch.sh start; fi
. .venv/bin/activate
ruff check airflow_kfm_migrations tests dags bench
mypy airflow_kfm_migrations
python -m airflow_kfm_migrations.contracts.export --check .
python -m airflow_kfm_migrations.contracts.reference --check .
kfm-migrations validate migrations/ >/dev/null
python -m pytest -p no:cacheprovider "$@"
