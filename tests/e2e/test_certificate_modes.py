"""Every certificate mode in bulk, through the DAG run by Airflow against the emulator over HTTP.

data/sample/modes.csv has 20 devices of each sample product, one product per mode: TH-100 (own_ca_key),
GW-200 (device_csr), SN-300 (aws_issued), CM-400 (acm_pca, with an extra policy) and RL-500 (without_ca).
Every row is provisioned, the inventory holds each certificate's id, ARN and signer, every certificate
chains to the CA its mode names, and each key the factory line gets matches its device's certificate.
"""

from __future__ import annotations

import datetime as dt
import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.dag_runs import Pipeline, inventory_rows, scan_for_secrets, states

pytestmark = [pytest.mark.airflow, pytest.mark.timeout(600)]
MODES = Path(__file__).resolve().parents[2] / "data" / "sample" / "modes.csv"


def _certificate(iot, certificate_id: str) -> tuple[x509.Certificate, dict]:
    description = iot.describe_certificate(certificateId=certificate_id)["certificateDescription"]
    return x509.load_pem_x509_certificate(description["certificatePem"].encode()), description


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("inventory_url", ["sqlite"], indirect=True)
def test_one_product_per_mode_provisions_every_row(pipeline: Pipeline, tmp_path):
    run, summary = pipeline.run(MODES)
    assert run.state == "success", states(run)
    assert summary["accounted"] and summary["provisioned"] == 100, summary
    units = {task["group"]: task for task in summary["registration_tasks"]}
    assert set(units) == {"TH-100", "GW-200", "SN-300", "CM-400", "RL-500"}
    assert all(task["status"] == "Completed" for task in units.values())

    iot, s3, bucket = pipeline.iot, pipeline.s3, pipeline.settings.bucket
    factory_ca = x509.load_pem_x509_certificate(Path(pipeline.bootstrap["ca_certificate"]).read_bytes())
    pca_arn = pipeline.bootstrap["acm_pca_arn"]
    pca_ca = x509.load_pem_x509_certificate(
        pipeline.emulator.client("acm-pca")
        .get_certificate_authority_certificate(CertificateAuthorityArn=pca_arn)["Certificate"]
        .encode()
    )
    devices = {d["thing_name"]: d for d in inventory_rows(pipeline.settings.inventory_url)["devices"]}
    assert len(devices) == 100 and Counter(d["status"] for d in devices.values()) == {"provisioned": 100}
    signers = Counter()
    for thing, device in devices.items():
        (principal,) = iot.list_thing_principals(thingName=thing)["principals"]
        assert principal == device["certificate_arn"] and principal.endswith(device["certificate_id"])
        certificate, description = _certificate(iot, device["certificate_id"])
        model = device["model"]
        if model in ("TH-100", "GW-200", "RL-500"):
            certificate.verify_directly_issued_by(factory_ca)
            assert (
                device["issuer"] == description.get("caCertificateId", device["issuer"]) or model == "RL-500"
            )
        elif model == "CM-400":
            # (moto's ACM PCA issues for a year whatever Validity asks: the product's 825 days are not
            # checked here; include/certificate_modes.py sends them.)
            certificate.verify_directly_issued_by(pca_ca)
            policies = {p["policyName"] for p in iot.list_attached_policies(target=principal)["policies"]}
            assert policies == {"FactoryDevicePolicy", "FactoryTelemetryPolicy"}
        else:  # SN-300: AWS signed the pipeline's CSR in the bulk task
            assert certificate.issuer != factory_ca.subject and certificate.issuer != pca_ca.subject
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        days = {"TH-100": 3650, "GW-200": 3650, "RL-500": 1825}.get(model)
        if days:  # the product's validity_days, from 5 minutes before issuing
            assert lifetime == dt.timedelta(days=days, minutes=5), (thing, lifetime)
        if model == "RL-500":  # registered on its own, no CA in this account
            assert description.get("certificateMode") == "SNI_ONLY" and not description.get("caCertificateId")
        signers[(model, device["issuer"])] += 1
    factory_id = pipeline.bootstrap["ca_registration"]["certificate_id"]
    assert signers == {
        ("TH-100", factory_id): 20,
        ("GW-200", factory_id): 20,
        ("RL-500", factory_id): 20,
        ("CM-400", pca_arn): 20,
        ("SN-300", "aws"): 20,
    }

    # Keys the pipeline made are in the bundles (none for GW-200); AWS-signed certificates in their archive.
    from include.key_bundle import open_bundle

    line_certificate = Path(pipeline.settings.bundle_recipient_public_key)
    line_key = line_certificate.with_name("recipient.key.pem").read_bytes()
    keys: dict[str, bytes] = {}
    for key in summary["files"]["bundles"]:
        bundle = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for record in open_bundle(bundle, line_key, line_certificate.read_bytes()):
            keys[record["thing_name"]] = record["private_key_pem"].encode()
    assert {thing.split("-", 2)[0] + "-" + thing.split("-", 2)[1] for thing in keys} == {
        "TH-100",
        "SN-300",
        "CM-400",
        "RL-500",
    }
    archive_key = summary["files"]["certificates"]["SN-300.1"]
    with tarfile.open(
        fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=archive_key)["Body"].read())
    ) as tar:
        archived = {
            m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".cert.pem")
        }
    assert len(archived) == 20
    for thing, key_pem in keys.items():
        key = serialization.load_pem_private_key(key_pem, password=None)
        certificate, _ = _certificate(iot, devices[thing]["certificate_id"])
        assert _public(key.public_key()) == _public(certificate.public_key()), thing
        if thing.startswith("SN-300"):
            archived_pem = x509.load_pem_x509_certificate(archived[f"{thing}.cert.pem"])
            assert archived_pem == certificate

    # No private key outside the bundles, in any mode.
    texts = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            if "/bundles/" not in item["Key"]:
                texts[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    assert scan_for_secrets(texts, pipeline.ca_key_pem) == []
