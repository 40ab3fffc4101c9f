"""airflow-kfm-migrations: governed, reversible migrations as an Airflow provider and a CLI.

Importing this package is cheap and never imports Airflow: the core is usable (and
tested) without it. Airflow is imported only by ``operators/``, ``dag_factory`` and
``connections``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def get_provider_info() -> dict[str, Any]:
    """Entry point of the ``apache_airflow_provider`` group."""
    return {
        "package-name": "airflow-kfm-migrations",
        "name": "KFM governed migrations",
        "description": "Governed, reversible migrations for PostgreSQL/PostGIS, OpenSearch/Elasticsearch and "
        "Neo4j: declared scope and limits, baselines, diff gates, rollback and content-addressed receipts.",
        "state": "ready",
        "source-date-epoch": 1796000000,
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "KFM governed migrations",
                "external-doc-url": "https://airflow-kfm-migrations.dev/",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": "KFM governed migrations",
                "python-modules": ["airflow_kfm_migrations.operators"],
            }
        ],
        "config": {
            "kfm_migrations": {
                "description": "Defaults for governed migration DAGs and operators.",
                "options": {
                    "environment": {
                        "description": "Environment runs are recorded against: dev, stage or prod.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "stage",
                        "default": "dev",
                    },
                    "artifacts_root": {
                        "description": "Where baselines, diffs and receipts are written; any ObjectStoragePath "
                        "URL (file://, s3://, gs://...). Empty means inside each bundle folder.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "s3://aws_default@kfm-receipts/migrations",
                        "default": "",
                    },
                    "registry_path": {
                        "description": "Path of migrations/registry/migrations.v1.json.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/migrations/registry/migrations.v1.json",
                        "default": "",
                    },
                    "bundles_root": {
                        "description": "The migrations root holding postgis/, search/ and graph/.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/migrations",
                        "default": "",
                    },
                    "fail_on_drift": {
                        "description": "Refuse a run when the live store drifted from the last recorded post-baseline.",
                        "version_added": "0.1.0",
                        "type": "boolean",
                        "example": "True",
                        "default": "False",
                    },
                },
            }
        },
    }
