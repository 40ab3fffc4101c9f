"""Drop this file into your DAGs folder: one DAG per entry of the migration registry, and
the companion DAG kfm_migration_rollback that rolls back an applied migration by hand.

Configure with the ``[kfm_migrations]`` section of airflow.cfg (bundles_root,
registry_path, artifacts_root, environment, fail_on_drift) or the environment variables
KFM_BUNDLES_ROOT, KFM_REGISTRY_PATH, KFM_ARTIFACTS_ROOT, KFM_ENVIRONMENT, KFM_FAIL_ON_DRIFT;
or pass them: build_dags(bundles_root=..., registry_path=..., environment=...) wins over
both and carries the folders to every task (docs/install.md).
KFM_PARSE_CACHE sets where parses keep what they derived from the registry and the
declarations (checked against each file's sha256; default ~/.cache/airflow-kfm-migrations),
or ``off``.
"""

from airflow_kfm_migrations.dag_factory import build_dags

globals().update(build_dags())
