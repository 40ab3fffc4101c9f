"""Store kinds: the protocol (``base``) and one subpackage per kind.

The KINDS table itself is ``airflow_kfm_migrations.kinds``: pure data every layer may read.
"""
