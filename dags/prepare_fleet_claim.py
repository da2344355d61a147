"""
# Prepare a claim-based product (fleet provisioning by claim)

For one `provisioning: fleet` product of the catalog: what its devices need to provision themselves over
MQTT on first boot, and the claim certificate the factory line flashes into every one of them.

1. `prepare_template`: renders the product's fleet template and claim policy from the catalog, checks its
   thing type, groups, device policies and the factory CA in AWS IoT, then creates or updates the fleet
   provisioning template (enabled, the registration role, the optional pre-provisioning hook; a changed
   body becomes its new default version) and the claim policy (fleet provisioning's topics of that
   template, nothing else).
2. `prepare_claim`: keeps the product's current claim (the newest ACTIVE certificate with the claim policy,
   valid for 30 more days, its bundle in S3) or issues one: a P-256 key and a certificate signed by the
   factory CA (`claim_validity_days`), sealed in the standard key bundle for the factory line at
   `<work prefix>fleet/<model>/claims/<certificate id>/claim.tar.p7m`, then registered ACTIVE with the
   claim policy attached. Why not CreateProvisioningClaim: AWS makes those claims expire after five
   minutes, fine for an installer's phone app, useless on a production line.

The result names the template, the claim certificate id, the bundle's S3 key and the device endpoint
(DescribeEndpoint iot:Data-ATS); never key material. **Dry run** says what would change. Running it
again is safe; `new_claim` issues a new claim even if the current one is valid (older claims stay ACTIVE
until revoked, so devices already flashed still provision). The devices are then recorded in the
inventory by `reconcile_fleet_devices`. See docs/fleet-provisioning.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from plugins.iot_provisioning.connections import AWS_CONN_ID
from plugins.iot_provisioning.dag_parts import (
    FORM_SECTION,
    START_DATE,
    dry_run_param,
    form_models,
    retry_policy,
)
from plugins.iot_provisioning.run_state import fail_fast
from plugins.iot_provisioning.settings_source import pipeline_settings

DAG_ID = "prepare_fleet_claim"


@task
def prepare_template(params: dict | None = None) -> dict:
    """Prerequisites, then the fleet provisioning template and the claim policy in AWS IoT."""
    from include.fleet_claim import prepare_resources
    from plugins.iot_provisioning.connections import aws_clients, factory_ca_certificate

    s3, iot = aws_clients(AWS_CONN_ID)
    with fail_fast():
        return prepare_resources(
            iot,
            s3,
            pipeline_settings(),
            params["product"],
            factory_ca_certificate(),
            dry_run=bool(params["dry_run"]),
        )


@task
def prepare_claim(resources: dict, params: dict | None = None, run_id: str | None = None) -> dict:
    """The product's claim: kept, or issued by the factory CA into a key bundle for the factory line."""
    from include.certificate_authority import CertificateAuthority
    from include.fleet_claim import prepare_claim as prepare
    from plugins.iot_provisioning.connections import aws_clients, factory_ca_pems

    s3, iot = aws_clients(AWS_CONN_ID)
    with fail_fast():
        return prepare(
            iot,
            s3,
            pipeline_settings(),
            resources,
            CertificateAuthority.from_pem(*factory_ca_pems()),
            run_id=str(run_id),
            validity_days=params.get("claim_validity_days"),
            new_claim=bool(params.get("new_claim")),
        )


_MODELS = form_models(fleet=True)


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,  # two runs at once could both issue a claim
    tags=["iot", "provisioning", "fleet"],
    default_args=retry_policy(retries=2, delay=timedelta(seconds=15), timeout=timedelta(minutes=15)),
    params={
        "product": Param(
            _MODELS[0] if _MODELS else "",
            type="string",
            minLength=1,
            **({"enum": _MODELS} if _MODELS else {}),
            title="Product",
            section=FORM_SECTION,
            description="The claim-based catalog product (provisioning: fleet) to prepare.",
        ),
        "claim_validity_days": Param(
            None,
            type=["null", "integer"],
            minimum=1,
            maximum=36500,
            title="Claim validity (days)",
            section=FORM_SECTION,
            description="A new claim certificate's validity (empty: the product's claim_validity_days).",
        ),
        "new_claim": Param(
            False,
            type="boolean",
            title="New claim",
            section=FORM_SECTION,
            description="Issue a new claim even if the current one is valid (the old one stays ACTIVE).",
        ),
        "dry_run": dry_run_param("Say what would change; change nothing in AWS IoT or S3."),
    },
)
def prepare_fleet_claim() -> None:
    prepare_claim(prepare_template())


prepare_fleet_claim()
