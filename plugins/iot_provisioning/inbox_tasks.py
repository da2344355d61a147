"""Task wiring shared by the inbox DAGs: keep manifests whose content is new, start one pipeline run each."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import XComArg, task, task_group

from plugins.iot_provisioning.connections import AWS_CONN_ID
from plugins.iot_provisioning.inbox import PROVISION_DAG_ID


@task
def select_new_manifests(uris: list[str]) -> list[dict[str, Any]]:
    """Hash each manifest's content; drop content the inventory already knows (never the same twice)."""
    from include.inventory import Inventory
    from plugins.iot_provisioning.connections import aws_clients
    from plugins.iot_provisioning.inbox import content_sha256, run_requests
    from plugins.iot_provisioning.settings_source import pipeline_settings

    s3, _ = aws_clients(AWS_CONN_ID)
    inventory = Inventory(pipeline_settings().inventory_url)
    manifests = [{"uri": uri, "sha256": content_sha256(s3, uri)} for uri in uris]
    known = [m["sha256"] for m in manifests if inventory.batch_known(m["sha256"])]
    return run_requests(manifests, known)


@task_group
def start_provisioning_runs(manifest_uris: XComArg) -> None:
    """One provision_factory_batch run per new manifest (run id = content hash, so never twice)."""
    TriggerDagRunOperator.partial(
        task_id="start_provisioning_run",
        trigger_dag_id=PROVISION_DAG_ID,
        skip_when_already_exists=True,
        map_index_template="{{ task.conf['manifest'] }}",
    ).expand_kwargs(select_new_manifests(manifest_uris))
