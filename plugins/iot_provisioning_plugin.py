"""Registers the IoT provisioning adapters with Airflow (listed by `airflow plugins`)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class IotProvisioningPlugin(AirflowPlugin):
    """AWS IoT bulk registration for Airflow: IotHook, StartThingRegistrationTaskOperator and
    ThingRegistrationTaskTrigger live in ``plugins.iot_provisioning`` (imported by that name from DAGs;
    the project root is on PYTHONPATH), the waiter JSON in ``plugins/iot_provisioning/waiters/iot.json``."""

    name = "iot_provisioning"
