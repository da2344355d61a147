"""Mounts the CDF provisioning API in Airflow's API server at /cdf/provisioning (Airflow JWT required)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.cdf_api.airflow_backend import airflow_backend
from plugins.cdf_api.app import create_app
from plugins.cdf_api.auth import AirflowJwt

URL_PREFIX = "/cdf/provisioning"
app = create_app(airflow_backend(), AirflowJwt())


class CdfProvisioningApiPlugin(AirflowPlugin):
    """CDF's six provisioning routes; bulk requests become provision_factory_batch runs."""

    name = "cdf_provisioning_api"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "CDF provisioning API"}]
