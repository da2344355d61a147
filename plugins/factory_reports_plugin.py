"""The project's UI plugin: the batch report on each run's page, the device history in the menu."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.iot_provisioning.batch_report import URL_PREFIX, app


class FactoryProvisioningPlugin(AirflowPlugin):
    name = "factory_provisioning"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Factory provisioning reports"}]
    external_views = [
        {
            # A tab on each DAG run's page; the UI fills in {DAG_ID} and {RUN_ID}.
            "name": "Batch report",
            "href": f"{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}/report",
            "destination": "dag_run",
            "url_route": "batch_report",
        },
        {
            "name": "Device history",
            "href": f"{URL_PREFIX}/devices",
            "destination": "nav",
            "category": "browse",
            "url_route": "device_history",
        },
    ]
