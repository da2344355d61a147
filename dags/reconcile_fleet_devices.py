"""
# Reconcile the devices that provisioned themselves by claim

Every hour (and by hand, for one product or all): the things each fleet product's template made, recorded
in the inventory as a batch's devices are, with the same outcomes.

1. `fleet_products`: the catalog's `provisioning: fleet` products in scope.
2. `reconcile_product`: one mapped task per product. ListThings by the product's thing type and the
   template's `provisioningTemplate` attribute (250 per page); things the inventory already knows are
   `skipped` (already_provisioned) without another call; for at most `max_devices` new ones (the rest is
   `deferred` to the next run), their certificate from ListThingPrincipals. Each becomes a row of a
   synthetic run (`<run id>:<model>`): `provisioned` (a devices row: thing ARN, certificate id and ARN,
   issuer `aws`), `quarantined` (no certificate, several, no serial number) or `failed` (the thing is
   gone). Never a second record of a device; a run that finds nothing new writes nothing.
3. `summarize`: counts per outcome and reason, `accounted` (every thing found has one outcome or is
   deferred), each product's summary and where its devices.csv is.

The claim products themselves are made by `prepare_fleet_claim`. See docs/fleet-provisioning.md.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from plugins.iot_provisioning.connections import AWS_CONN_ID
from plugins.iot_provisioning.dag_parts import (
    FORM_SECTION,
    START_DATE,
    dry_run_param,
    form_models,
    retry_policy,
)
from plugins.iot_provisioning.settings_source import pipeline_settings

DAG_ID = "reconcile_fleet_devices"
DEFAULT_MAX_DEVICES = 10_000  # include.fleet_reconcile.DEFAULT_MAX_DEVICES (not imported at parse time)
log = logging.getLogger(__name__)


@task
def fleet_products(params: dict | None = None) -> list[str]:
    """The fleet products to reconcile: the one asked for, else every one of the catalog."""
    from include.catalog import load_catalog
    from include.fleet_catalog import fleet_product_of

    settings = pipeline_settings()
    if params.get("product"):
        from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

        with fail_fast_on_input_errors(str(get_current_context()["run_id"]), f"fleet:{params['product']}"):
            return [fleet_product_of(settings.catalog_path, params["product"]).model]
    return sorted(load_catalog(settings.catalog_path).fleet_products)


@task(map_index_template="{{ product_label }}")
def reconcile_product(
    model: str, params: dict | None = None, run_id: str | None = None, dag: Any = None
) -> dict:
    """The things one fleet product's template made, recorded in the inventory."""
    from include.fleet_reconcile import inventory_run_id, reconcile_product
    from plugins.iot_provisioning.connections import aws_clients
    from plugins.iot_provisioning.run_state import fail_fast_on_input_errors

    get_current_context()["product_label"] = model
    s3, iot = aws_clients(AWS_CONN_ID)
    with fail_fast_on_input_errors(inventory_run_id(str(run_id), model), f"fleet:{model}"):
        return reconcile_product(
            iot,
            s3,
            pipeline_settings(),
            model,
            run_id=str(run_id),
            dag_id=dag.dag_id,
            max_devices=int(params["max_devices"]),
            dry_run=bool(params["dry_run"]),
        )


@task(trigger_rule="none_failed")
def summarize(summaries: list[dict]) -> dict:
    """Every product's counts added up (and each product's own), logged and returned."""
    from include.fleet_reconcile import combine

    summary = combine(list(summaries))
    log.info("Fleet reconcile\n%s", json.dumps(summary, indent=2, sort_keys=True))
    return summary


_MODELS = form_models(fleet=True)


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule="@hourly",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # one reconcile at a time: two would number the same devices twice
    tags=["iot", "provisioning", "fleet"],
    default_args=retry_policy(retries=2, delay=timedelta(seconds=30), timeout=timedelta(hours=1)),
    params={
        "product": Param(
            None,
            type=["null", "string"],
            enum=[None, *_MODELS],
            values_display={None: "Every fleet product"},
            title="Product",
            section=FORM_SECTION,
            description="Reconcile this claim-based product only (provisioning: fleet); empty: all of them.",
        ),
        "max_devices": Param(
            DEFAULT_MAX_DEVICES,
            type="integer",
            minimum=1,
            title="New devices per product",
            section=FORM_SECTION,
            description="Record at most this many new devices per product; the rest wait for the next run.",
        ),
        "dry_run": dry_run_param("Count what would be recorded; write nothing."),
    },
)
def reconcile_fleet_devices() -> None:
    summarize(reconcile_product.expand(model=fleet_products()))


reconcile_fleet_devices()
