"""End-to-end tests share the Airflow fixtures of the DAG tests (metadata DB, connections, pool)."""

from __future__ import annotations

from tests.dags.airflow_support import airflow_db, aws_connection_env, factory_ca_env  # noqa: F401
from tests.e2e.dag_runs import pipeline  # noqa: F401
