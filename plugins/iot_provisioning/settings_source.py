"""Pipeline settings where Airflow users look for them: a connection and a Variable, then the environment.

- The inventory is the Airflow connection ``factory_inventory`` (a postgres connection: host, port, schema
  = database, login, password; any SQLAlchemy URL also works as the connection's URI).
- The pipeline options are the Airflow Variable ``factory_pipeline``: a JSON object keyed by the fields of
  ``include.settings.Settings`` (``{"bucket": "...", "chunk_size": 5000, ...}``).
- Whatever neither gives comes from the PIPELINE_* environment variables, then the defaults
  (``Settings.from_env``), so `make run`, the benchmarks and the domain tests keep working unchanged.

Both are looked up through Airflow's secrets chain (environment ``AIRFLOW_CONN_*``/``AIRFLOW_VAR_*``,
a secrets backend, the metadata DB), so a deployment edits them in the UI (Admin > Connections,
Admin > Variables) instead of giving every component the same environment.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from include.settings import Settings

INVENTORY_CONN_ID = "factory_inventory"
PIPELINE_VARIABLE = "factory_pipeline"


def inventory_url_from_connection(connection: Any) -> str:
    """The SQLAlchemy URL of the inventory from an Airflow connection (postgres: psycopg2 driver)."""
    uri = connection.get_uri()
    for scheme in ("postgres://", "postgresql://"):
        if uri.startswith(scheme):
            return "postgresql+psycopg2://" + uri[len(scheme) :]
    return uri


def _connection(conn_id: str) -> Any | None:
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def _variable(key: str) -> dict[str, Any]:
    from airflow.sdk import Variable

    raw = Variable.get(key, default=None)
    if raw in (None, ""):
        return {}
    document = raw if isinstance(raw, dict) else json.loads(raw)
    if not isinstance(document, dict):
        raise ValueError(f"Variable {key!r} must be a JSON object of pipeline settings")
    return document


def pipeline_settings() -> Settings:
    """Settings for a task: Variable ``factory_pipeline`` and connection ``factory_inventory`` first."""
    overrides = _variable(PIPELINE_VARIABLE)
    connection = _connection(INVENTORY_CONN_ID)
    if connection is not None:
        overrides["inventory_url"] = inventory_url_from_connection(connection)
    return Settings.from_sources(overrides)


def server_settings() -> Settings:
    """The same settings in an Airflow server process (the api-server's plugin views): core models."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection
    from airflow.models.variable import Variable

    raw = Variable.get(PIPELINE_VARIABLE, default_var=None)
    overrides = json.loads(raw) if raw else {}
    with contextlib.suppress(AirflowNotFoundException):
        overrides["inventory_url"] = inventory_url_from_connection(
            Connection.get_connection_from_secrets(INVENTORY_CONN_ID)
        )
    return Settings.from_sources(overrides)
