"""``python -m airflow_kfm_migrations.cli``: the same as ``kfm-migrations``."""

from airflow_kfm_migrations.cli.main import main

raise SystemExit(main())
