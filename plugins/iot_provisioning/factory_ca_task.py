"""manage_factory_ca's task body: Airflow's AWS clients and settings, the CA logic of include.factory_ca."""

from __future__ import annotations

from typing import Any

from plugins.iot_provisioning.connections import AWS_CONN_ID


def _clients() -> tuple[Any, Any]:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    from plugins.iot_provisioning.hooks import IotHook

    secrets = AwsBaseHook(aws_conn_id=AWS_CONN_ID, client_type="secretsmanager").conn
    return IotHook(aws_conn_id=AWS_CONN_ID).conn, secrets


def run_action(params: dict[str, Any]) -> dict[str, Any]:
    """Run the form's action; domain errors (no CA to rotate, a CA already there) fail at once."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.errors import PipelineError

    try:
        return _run(params)
    except PipelineError as error:
        raise AirflowFailException(str(error)) from error


def _run(params: dict[str, Any]) -> dict[str, Any]:
    from include import factory_ca
    from include.catalog import load_catalog
    from include.certificate_authority import CertificateAuthority, certificate_id
    from include.errors import CertificateAuthorityError
    from include.inventory import Inventory
    from plugins.iot_provisioning.settings_source import pipeline_settings

    settings = pipeline_settings()
    iot, secrets = _clients()
    action, dry_run, secret_id = (
        params.get("action", "report"),
        bool(params.get("dry_run")),
        settings.ca_secret_id,
    )
    config = None
    if params.get("just_in_time_product"):
        product = load_catalog(settings.catalog_path).products.get(params["just_in_time_product"])
        if product is None:
            raise CertificateAuthorityError(
                f"just_in_time_product {params['just_in_time_product']!r} is not in the catalog"
            )
        config = factory_ca.jitp_registration_config(product, settings.registration_role_arn)
    if action == "report":
        current = factory_ca.read_secret(secrets, secret_id)
        current_id = certificate_id(current.certificate) if current is not None else None
        return factory_ca.report(iot, Inventory(settings.inventory_url).devices_by_issuer(), current_id)
    if action == "rotate":
        return factory_ca.rotate(
            iot,
            secrets,
            secret_id,
            common_name=params.get("common_name") or "Factory CA",
            validity_days=int(params.get("validity_days") or 7300),
            registration_config=config,
            dry_run=dry_run,
        )
    if action == "retire":
        if not params.get("ca_id"):
            raise CertificateAuthorityError("retire needs ca_id: the certificate id of the CA to retire")
        return factory_ca.retire(iot, secrets, secret_id, params["ca_id"], dry_run=dry_run)
    if action == "create":
        ca = CertificateAuthority.create_development(
            params.get("common_name") or "Factory CA", validity_days=int(params.get("validity_days") or 7300)
        )
    elif action == "import":
        if not params.get("import_secret_id"):
            raise CertificateAuthorityError("import needs import_secret_id: the secret that holds the CA")
        ca = factory_ca.read_secret(secrets, params["import_secret_id"])
        if ca is None:
            raise CertificateAuthorityError(f"secret {params['import_secret_id']} does not exist")
    else:
        raise CertificateAuthorityError(f"unknown action {action!r}")
    return {
        "action": action,
        **factory_ca.create_or_import(
            iot, secrets, secret_id, ca, registration_config=config, dry_run=dry_run
        ),
    }
