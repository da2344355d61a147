"""The backend inside Airflow's API server: connections aws_default and factory_ca, DAG runs."""

from __future__ import annotations

import functools
from typing import Any

from include.cdf.config import CdfConfig
from plugins.cdf_api.airflow_runner import AirflowRunner
from plugins.cdf_api.backend import Backend
from plugins.iot_provisioning.connections import AWS_CONN_ID, FACTORY_CA_CONN_ID


@functools.lru_cache(maxsize=1)
def _clients() -> tuple[Any, Any, Any]:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from plugins.iot_provisioning.connections import aws_clients

    s3, iot = aws_clients(AWS_CONN_ID)
    return s3, iot, AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="acm-pca").get_conn()


def _config() -> CdfConfig:
    from plugins.iot_provisioning.settings_source import server_settings

    return CdfConfig.from_env(server_settings())


def _factory_ca_pems() -> tuple[str, str]:
    """The factory CA from its connection (secrets backend, environment or metadata DB), as tasks do."""
    from airflow.models.connection import Connection

    from plugins.iot_provisioning.connections import ca_from_connection

    connection = Connection.get_connection_from_secrets(FACTORY_CA_CONN_ID)
    return ca_from_connection(connection.password, connection.extra, FACTORY_CA_CONN_ID)


def airflow_backend() -> Backend:
    """Nothing is read until a request needs it (plugins are imported by every Airflow component)."""
    runner = AirflowRunner()
    backend = Backend(_clients, _config, _factory_ca_pems, runner, dag_id=runner.dag_id)
    runner.pca_arn = lambda: getattr(backend.config.settings, "acm_pca_arn", None)
    return backend
