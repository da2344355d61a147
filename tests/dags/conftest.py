"""DAG tests share the migrated Airflow metadata DB and the Airflow connection helpers."""

from __future__ import annotations

from tests.dags.airflow_support import airflow_db, aws_connection_env, factory_ca_env  # noqa: F401
