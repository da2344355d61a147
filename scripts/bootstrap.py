"""Prepare an account for the pipeline, idempotently: what a real AWS account would already have.

Creates (or finds) the bucket, the inbox notifications (S3 ObjectCreated under the inbox prefix -> SQS
queue), the factory CA registered in AWS IoT with its verification certificate (the files
$STATE_DIR/ca/factory-ca.pem and factory-ca.key.pem, never in the repository; a development CA is made
there when they are missing and an endpoint is given, or with --create-dev-ca), the thing types, thing
groups and policies the product catalog uses (a missing policy is created with DEVICE_POLICY below),
one provisioning template per product, the factory line's bundle key pair under $STATE_DIR/factory-line/,
and (with --airflow-pool) the Airflow pool that serialises registration tasks.

Works against any endpoint: `--endpoint-url` (or AWS_ENDPOINT_URL) for the emulator, nothing for AWS.
Prints one JSON object describing what it found or made (no key material).

    python -m scripts.bootstrap [--endpoint-url URL] [--state-dir DIR] [--airflow-pool] [--connections-file F]
                                [--create-dev-ca]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from include.catalog import Catalog, load_catalog
from include.certificate_authority import CertificateAuthority, certificate_id_from_pem
from include.factory_ca import read_secret, register_ca, write_secret
from include.key_bundle import RECIPIENT_CERTIFICATE_FILE, RECIPIENT_KEY_FILE, generate_recipient
from include.settings import Settings, state_dir
from include.templates import render_template

INBOX_QUEUE = "factory-provisioning-inbox"
REGISTRATION_POOL = "iot_bulk_registration"
CA_CERTIFICATE_FILE = "factory-ca.pem"
CA_KEY_FILE = "factory-ca.key.pem"
ACM_PCA_ARN_FILE = "acm-pca-arn"

# Devices connect as their thing and talk only on their own topics.
DEVICE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": "iot:Connect",
            "Resource": "arn:aws:iot:*:*:client/${iot:Connection.Thing.ThingName}",
        },
        {
            "Effect": "Allow",
            "Action": ["iot:Publish", "iot:Receive"],
            "Resource": "arn:aws:iot:*:*:topic/devices/${iot:Connection.Thing.ThingName}/*",
        },
        {
            "Effect": "Allow",
            "Action": "iot:Subscribe",
            "Resource": "arn:aws:iot:*:*:topicfilter/devices/${iot:Connection.Thing.ThingName}/*",
        },
    ],
}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _ensure(describe: Any, create: Any) -> bool:
    """Create a resource unless describing it succeeds; True when it was created (idempotent re-runs)."""
    try:
        describe()
        return False
    except ClientError as error:
        if _code(error) != "ResourceNotFoundException":
            raise
    try:
        create()
    except ClientError as error:
        if _code(error) == "ResourceAlreadyExistsException":  # made by someone else meanwhile
            return False
        raise
    return True


def ensure_bucket(s3: Any, bucket: str, region: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as error:
        if _code(error) not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    s3.create_bucket(**kwargs)
    return True


def ensure_inbox_notifications(s3: Any, sqs: Any, bucket: str, prefix: str) -> str:
    """SQS queue receiving ObjectCreated events for CSV manifests under the inbox prefix; returns its URL."""
    queue_url = sqs.create_queue(QueueName=INBOX_QUEUE)["QueueUrl"]  # idempotent with equal attributes
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    configuration = s3.get_bucket_notification_configuration(Bucket=bucket)
    queues = [q for q in configuration.get("QueueConfigurations", []) if q.get("Id") != "factory-inbox"]
    queues.append(
        {
            "Id": "factory-inbox",
            "QueueArn": queue_arn,
            "Events": ["s3:ObjectCreated:*"],
            "Filter": {
                "Key": {
                    "FilterRules": [{"Name": "prefix", "Value": prefix}, {"Name": "suffix", "Value": ".csv"}]
                }
            },
        }
    )
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            **{k: v for k, v in configuration.items() if k.endswith("Configurations")},
            "QueueConfigurations": queues,
        },
    )
    return queue_url


class BootstrapError(Exception):
    """A prerequisite bootstrap will not make on its own; the message says what to do."""


def ensure_development_ca(directory: Path, create: bool = True) -> tuple[str, str, bool]:
    """(certificate PEM, key PEM, created) of the factory CA kept under $STATE_DIR/ca/ (key mode 0600).

    Without `create`, a missing CA is an error: no production account gets a development CA by accident.
    """
    certificate_path, key_path = directory / CA_CERTIFICATE_FILE, directory / CA_KEY_FILE
    if certificate_path.exists() and key_path.exists():
        return certificate_path.read_text(), key_path.read_text(), False
    if not create:
        raise BootstrapError(
            f"no factory CA in {directory} ({CA_CERTIFICATE_FILE} and {CA_KEY_FILE}): put your CA there, "
            "or pass --create-dev-ca to make a development CA"
        )
    directory.mkdir(parents=True, exist_ok=True)
    authority = CertificateAuthority.create_development()
    certificate_pem, key_pem = authority.certificate_pem, authority.private_key_pem()
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key_pem)
    certificate_path.write_text(certificate_pem)  # written last: both files present means both complete
    return certificate_pem, key_pem, True


def ensure_factory_ca(
    iot: Any, secrets: Any, directory: Path, secret_id: str, create: bool
) -> tuple[CertificateAuthority, dict[str, Any]]:
    """The factory CA in use, registered ACTIVE in IoT, its material in the Secrets Manager secret.

    The secret is the source of truth once it exists (manage_factory_ca rotates it); before that, the CA
    files of $STATE_DIR/ca/ (a development CA is made there only with `create`) are stored in it.
    """
    ca = read_secret(secrets, secret_id)
    stored = False
    if ca is None:
        certificate_pem, key_pem, _ = ensure_development_ca(directory, create)
        ca = CertificateAuthority.from_pem(certificate_pem, key_pem)
        write_secret(secrets, secret_id, ca, description="the factory CA new batches are signed by")
        stored = True
    registered = register_ca(iot, ca)
    return ca, {
        "certificate_id": registered.certificate_id,
        "created": registered.created,
        "secret": secret_id,
        "secret_created": stored,
    }


def ensure_catalog_resources(iot: Any, catalog: Catalog) -> dict[str, list[str]]:
    """Thing types, thing groups and policies every catalog product names; returns the ones created.

    Fleet products' too (their devices' resources); their claim policy is prepare_fleet_claim's to make.
    """
    created: dict[str, list[str]] = {"thing_types": [], "thing_groups": [], "policies": []}
    products = [*catalog.products.values(), *catalog.fleet_products.values()]
    thing_types = sorted({p.thing_type for p in products if p.thing_type})
    groups = sorted({g for p in products for g in p.thing_groups})
    policies = sorted({name for p in products for name in (p.policy, *p.extra_policies)})
    for name in thing_types:
        if _ensure(
            lambda name=name: iot.describe_thing_type(thingTypeName=name),
            lambda name=name: iot.create_thing_type(
                thingTypeName=name,
                thingTypeProperties={"thingTypeDescription": f"Factory product type {name}"},
            ),
        ):
            created["thing_types"].append(name)
    for name in groups:
        if _ensure(
            lambda name=name: iot.describe_thing_group(thingGroupName=name),
            lambda name=name: iot.create_thing_group(thingGroupName=name),
        ):
            created["thing_groups"].append(name)
    for name in policies:
        if _ensure(
            lambda name=name: iot.get_policy(policyName=name),
            lambda name=name: iot.create_policy(policyName=name, policyDocument=json.dumps(DEVICE_POLICY)),
        ):
            created["policies"].append(name)
    return created


def ensure_provisioning_templates(
    iot: Any, catalog: Catalog, ca_certificate_pem: str, role_arn: str, pca_certificate_pem: str | None = None
) -> list[str]:
    """One provisioning template per product (the same body bulk registration uses); returns those created."""
    created = []
    for product in catalog.products.values():
        name = f"factory-{product.model}"
        signer = pca_certificate_pem if product.certificate_mode == "acm_pca" else ca_certificate_pem
        if signer is None:
            continue  # an acm_pca product without a PCA: pre-flight says so
        body = render_template(product, signer)
        if _ensure(
            lambda name=name: iot.describe_provisioning_template(templateName=name),
            lambda name=name, body=body, model=product.model: iot.create_provisioning_template(
                templateName=name,
                description=f"Factory provisioning of {model}",
                templateBody=body,
                enabled=True,
                provisioningRoleArn=role_arn,
            ),
        ):
            created.append(name)
    return created


def ensure_acm_pca(
    pca: Any, iot: Any, directory: Path, arn: str | None, create: bool
) -> tuple[str | None, str | None, bool]:
    """(ARN, CA certificate PEM, created) of the ACM Private CA acm_pca products use, its CA certificate
    registered in IoT (verification certificate issued by the PCA itself). The ARN comes from
    PIPELINE_ACM_PCA_ARN or $STATE_DIR/ca/acm-pca-arn; a new development PCA only with `create` (on a real
    account a private CA costs a monthly fee: bring your own)."""
    arn_file = directory / ACM_PCA_ARN_FILE
    arn = arn or (arn_file.read_text().strip() if arn_file.exists() else None)
    created = False
    if arn is None:
        if not create:
            return None, None, False
        arn, created = _create_root_pca(pca), True
        directory.mkdir(parents=True, exist_ok=True)
        arn_file.write_text(arn + "\n")
    ca_pem = pca.get_certificate_authority_certificate(CertificateAuthorityArn=arn)["Certificate"]
    ca_id = certificate_id_from_pem(ca_pem)
    try:
        iot.describe_ca_certificate(certificateId=ca_id)
    except ClientError as error:
        if _code(error) != "ResourceNotFoundException":
            raise
        code = iot.get_registration_code()["registrationCode"]
        verification = _pca_issue(pca, arn, _csr(code), None, days=1)
        iot.register_ca_certificate(
            caCertificate=ca_pem,
            verificationCertificate=verification,
            setAsActive=True,
            allowAutoRegistration=False,
        )
    return arn, ca_pem, created


def _csr(common_name: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def _pca_issue(pca: Any, arn: str, csr: bytes, template: str | None, days: int) -> str:
    kwargs = {"TemplateArn": template} if template else {}
    issued = pca.issue_certificate(
        CertificateAuthorityArn=arn,
        Csr=csr,
        SigningAlgorithm="SHA256WITHECDSA",
        Validity={"Value": days, "Type": "DAYS"},
        **kwargs,
    )
    pca.get_waiter("certificate_issued").wait(
        CertificateAuthorityArn=arn, CertificateArn=issued["CertificateArn"], WaiterConfig={"Delay": 1}
    )
    return pca.get_certificate(CertificateAuthorityArn=arn, CertificateArn=issued["CertificateArn"])[
        "Certificate"
    ]


def _create_root_pca(pca: Any) -> str:
    """A root ACM Private CA, P-256, with its self-issued CA certificate installed (ACTIVE)."""
    arn = pca.create_certificate_authority(
        CertificateAuthorityConfiguration={
            "KeyAlgorithm": "EC_prime256v1",
            "SigningAlgorithm": "SHA256WITHECDSA",
            "Subject": {
                "CommonName": "Factory Development Private CA",
                "Organization": "Example Devices Ltd",
            },
        },
        CertificateAuthorityType="ROOT",
        Tags=[{"Key": "purpose", "Value": "factory-development-pca"}],
    )["CertificateAuthorityArn"]
    csr = pca.get_certificate_authority_csr(CertificateAuthorityArn=arn)["Csr"].encode()
    root = _pca_issue(pca, arn, csr, "arn:aws:acm-pca:::template/RootCACertificate/V1", days=3650)
    pca.import_certificate_authority_certificate(CertificateAuthorityArn=arn, Certificate=root.encode())
    return arn


def development_pca(pca: Any, iot: Any, local_state: Path, settings: Settings) -> tuple[str, str]:
    """(ACM PCA ARN, IoT CA certificate ARN) of the local state's development PCA, bootstrap's (made once,
    kept in $STATE_DIR/ca): what `make cdf-api` names `dev` for the CDF API's PCA modes."""
    arn, pem, _ = ensure_acm_pca(pca, iot, local_state / "ca", settings.acm_pca_arn, create=True)
    assert arn is not None and pem is not None  # made when missing (create=True)
    described = iot.describe_ca_certificate(certificateId=certificate_id_from_pem(pem))
    return arn, described["certificateDescription"]["certificateArn"]


def ensure_factory_line_keys(directory: Path) -> bool:
    """The factory line's RSA key and self-signed certificate that open the key bundles (the key stays there).

    A pair from before CMS bundles (recipient.key.pem without recipient.cert.pem, EC by default) is kept as
    recipient-fkb1.*.pem, so the FKB1 bundles sealed for it still open (python -m include.key_bundle open).
    """
    key = directory / RECIPIENT_KEY_FILE
    if key.exists() and (directory / RECIPIENT_CERTIFICATE_FILE).exists():
        return False
    for old in (key, directory / "recipient.pub.pem"):
        legacy = directory / old.name.replace("recipient.", "recipient-fkb1.", 1)
        if old.exists() and not legacy.exists():  # never overwrite a kept FKB1 key
            old.rename(legacy)
    generate_recipient(directory)
    return True


def write_connections_file(path: Path, certificate_pem: str, key_pem: str) -> None:
    """The factory CA as Airflow's LocalFilesystemBackend reads it ({"factory_ca": {...}}), mode 0600.

    For deployments whose workers share a state volume (docker-compose); production uses a real secrets
    backend (for example AWS Secrets Manager) holding the same connection.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "factory_ca": {
            "conn_type": "generic",
            "password": key_pem,
            "extra": json.dumps({"certificate_pem": certificate_pem}),
        }
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)


def ensure_airflow_pool(slots: int = 1) -> None:
    """The pool every register task runs in: AWS runs one bulk registration task per account at a time."""
    from airflow.models.pool import Pool

    Pool.create_or_update_pool(
        REGISTRATION_POOL,
        slots=slots,
        description="AWS IoT runs one bulk registration task per account at a time",
        include_deferred=True,
    )


def bootstrap(
    *,
    endpoint_url: str | None,
    local_state: Path,
    settings: Settings,
    region: str,
    airflow_pool: bool = False,
    connections_file: Path | None = None,
    create_dev_ca: bool = True,
) -> dict[str, Any]:
    session = boto3.session.Session(region_name=region)
    s3, sqs, iot = (session.client(name, endpoint_url=endpoint_url) for name in ("s3", "sqs", "iot"))
    catalog = load_catalog(settings.catalog_path)
    report: dict[str, Any] = {
        "bucket": settings.bucket,
        "bucket_created": ensure_bucket(s3, settings.bucket, region),
    }
    report["inbox_queue_url"] = ensure_inbox_notifications(s3, sqs, settings.bucket, settings.inbox_prefix)
    secrets = session.client("secretsmanager", endpoint_url=endpoint_url)
    ca, report["ca_registration"] = ensure_factory_ca(
        iot, secrets, local_state / "ca", settings.ca_secret_id, create_dev_ca
    )
    certificate_pem, key_pem = ca.certificate_pem, ca.private_key_pem()
    report["ca_certificate"] = str(local_state / "ca" / CA_CERTIFICATE_FILE)
    report["ca_key"] = str(local_state / "ca" / CA_KEY_FILE)
    report["created"] = ensure_catalog_resources(iot, catalog)
    pca_pem = None
    if any(p.signed_by_pca for p in catalog.products.values()):
        pca = session.client("acm-pca", endpoint_url=endpoint_url)
        arn, pca_pem, created = ensure_acm_pca(
            pca, iot, local_state / "ca", settings.acm_pca_arn, create_dev_ca
        )
        report.update(acm_pca_arn=arn, acm_pca_created=created)
    report["created"]["provisioning_templates"] = ensure_provisioning_templates(
        iot, catalog, certificate_pem, settings.registration_role_arn, pca_pem
    )
    report["factory_line_keys_created"] = ensure_factory_line_keys(local_state / "factory-line")
    report["factory_line_certificate"] = str(local_state / "factory-line" / "recipient.cert.pem")
    if connections_file:
        write_connections_file(connections_file, certificate_pem, key_pem)
        report["connections_file"] = str(connections_file)
    if airflow_pool:
        ensure_airflow_pool()
        report["airflow_pool"] = REGISTRATION_POOL
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL"))
    parser.add_argument("--state-dir", type=Path, default=None, help="default: $STATE_DIR or .local/")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument("--airflow-pool", action="store_true", help="also create the Airflow pool")
    parser.add_argument(
        "--connections-file",
        type=Path,
        default=None,
        help="write the factory_ca connection for a secrets backend",
    )
    parser.add_argument(
        "--create-dev-ca",
        action="store_true",
        help="make a development CA when $STATE_DIR/ca/ has none (implied with --endpoint-url)",
    )
    args = parser.parse_args(argv)
    local_state = args.state_dir or state_dir()
    try:
        report = bootstrap(
            endpoint_url=args.endpoint_url,
            local_state=local_state,
            settings=Settings.from_env(),
            region=args.region,
            airflow_pool=args.airflow_pool,
            connections_file=args.connections_file,
            create_dev_ca=args.create_dev_ca or bool(args.endpoint_url),
        )
    except (ClientError, BootstrapError) as error:
        print(f"bootstrap failed: {error}", file=sys.stderr)
        return 1
    except BotoCoreError as error:  # no credentials, endpoint unreachable, ...
        where = args.endpoint_url or "AWS (no --endpoint-url or AWS_ENDPOINT_URL: for the emulator, give one)"
        print(f"bootstrap failed against {where}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
