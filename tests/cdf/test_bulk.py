"""POST /bulkthings as a batch of the pipeline, in each CDF extension mode; GET /bulkthings/{taskId}."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import pytest
from cryptography import x509

from include import key_bundle
from include.cdf.bulk_plan import plan_bulk
from include.inventory import Inventory
from tests.cdf.conftest import EXAMPLES


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bulk(
    cdf_api, template: str, entries: list[dict[str, str]], extra: dict | None = None, status: int = 201
) -> dict:
    body: dict[str, Any] = {"provisioningTemplateId": template, "parameters": entries}
    if extra is not None:
        body["cdfProvisioningParameters"] = extra
    response = cdf_api.call("POST", "/bulkthings", body)
    assert response.status_code == status, response.text
    return response.json()


def _things(prefix: str, count: int) -> list[dict[str, str]]:
    return [{"ThingName": f"{prefix}-{i:03d}", "SerialNumber": f"{prefix}-SN-{i:03d}"} for i in range(count)]


def _completed(cdf_api, started: dict, rows: int) -> dict:
    assert started["status"] in ("Pending", "InProgress") and started["taskId"].startswith("cdf_bulk__")
    done = cdf_api.wait_bulk(started["taskId"])
    assert done["status"] == "Completed", done
    assert done["percentageProgress"] == 100
    assert done["successCount"] == rows and done["failureCount"] == 0, done
    assert (
        done["creationDate"] == started["creationDate"] and done["lastModifiedDate"] >= done["creationDate"]
    )
    return done


def _certificates(cdf_api, things: list[str]) -> list[dict[str, Any]]:
    found = []
    for thing in things:
        (principal,) = cdf_api.iot.list_thing_principals(thingName=thing)["principals"]
        described = cdf_api.iot.describe_certificate(certificateId=principal.rsplit("/", 1)[-1])
        found.append(described["certificateDescription"])
    return found


def test_create_device_certificate_in_bulk(cdf_api) -> None:
    entries = _things("bulk-own", 12)
    started = _bulk(cdf_api, "cdf-own-ca", entries, {"certInfo": {"daysExpiry": 40}})
    done = _completed(cdf_api, started, 12)
    names = [e["ThingName"] for e in entries]
    for described in _certificates(cdf_api, names):
        certificate = x509.load_pem_x509_certificate(described["certificatePem"].encode())
        assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days in (40, 41)
        assert described["status"] == "ACTIVE" and described["caCertificateId"]
        policies = {
            p["policyName"]
            for p in cdf_api.iot.list_attached_policies(target=described["certificateArn"])["policies"]
        }
        assert "FactoryDevicePolicy" in policies and any(p.startswith("cdf-telemetry_") for p in policies)
    inventory = Inventory(cdf_api.settings.inventory_url)
    assert {inventory.device(n)["status"] for n in names} == {"provisioned"}
    assert inventory.device(names[0])["run_id"] == started["taskId"]
    assert cdf_api.call("GET", f"/things/{names[0]}").json()["taskId"] == started["taskId"]
    links = done["links"]
    report = httpx.get(links["report"]).text
    assert "12" in report
    summary = httpx.get(links["summary"]).json()
    assert summary["provisioned"] == 12 and summary["accounted"] is True
    assert httpx.get(links["failedCsv"]).text.startswith("serial_number,model")
    # The private keys went to the batch's encrypted bundle, like any batch's.
    (bundle_key,) = summary["files"]["bundles"]
    sealed = cdf_api.s3.get_object(Bucket=cdf_api.settings.bucket, Key=bundle_key)["Body"].read()
    line = cdf_api.state_dir / "factory-line"
    records = list(
        key_bundle.open_bundle(
            sealed, (line / "recipient.key.pem").read_text(), (line / "recipient.cert.pem").read_text()
        )
    )
    assert sorted(r["thing_name"] for r in records) == names
    assert all(r["private_key_pem"].startswith("-----BEGIN PRIVATE KEY-----") for r in records)


def test_a_catalog_product_in_bulk(cdf_api) -> None:
    entries = [{"serial_number": f"BULK-TH-{i}", "MacAddress": f"00:11:22:33:44:{i:02x}"} for i in range(5)]
    entries.append({"serial_number": "bad serial!"})  # quarantined by the manifest contract, not lost
    started = _bulk(cdf_api, "TH-100", entries)
    done = cdf_api.wait_bulk(started["taskId"])
    assert done["status"] == "Completed"
    assert done["successCount"] == 5 and done["failureCount"] == 1
    assert done["outcomes"] == {"provisioned": 5, "failed": 0, "quarantined": 1, "skipped": 0, "pending": 0}
    quarantine = httpx.get(done["links"]["quarantine"]).text
    assert "invalid_serial" in quarantine
    again = cdf_api.wait_bulk(_bulk(cdf_api, "TH-100", entries[:5])["taskId"])
    assert again["outcomes"]["skipped"] == 5 and again["successCount"] == 5  # idempotent, as any batch


def test_aws_issued_certificates_in_bulk(cdf_api) -> None:
    _completed(cdf_api, _bulk(cdf_api, "cdf-aws-issued", _things("bulk-aws", 4)), 4)
    for described in _certificates(cdf_api, [f"bulk-aws-{i:03d}" for i in range(4)]):
        assert (
            "Amazon"
            in x509.load_pem_x509_certificate(described["certificatePem"].encode()).issuer.rfc4514_string()
        )


def test_certificates_without_ca_in_bulk(cdf_api) -> None:
    _completed(cdf_api, _bulk(cdf_api, "cdf-without-ca", _things("bulk-noca", 4)), 4)
    for described in _certificates(cdf_api, [f"bulk-noca-{i:03d}" for i in range(4)]):
        assert described["status"] == "ACTIVE" and not described.get("caCertificateId")


def test_acm_pca_with_ca_in_bulk(cdf_api) -> None:
    extra = {"acmpcaCaAlias": "dev", "awsiotCaAlias": "dev"}
    _completed(cdf_api, _bulk(cdf_api, "cdf-acmpca", _things("bulk-pca", 4), extra), 4)
    ca_id = cdf_api.pca_ca_arn.rsplit("/", 1)[-1]
    assert {
        d["caCertificateId"] for d in _certificates(cdf_api, [f"bulk-pca-{i:03d}" for i in range(4)])
    } == {ca_id}


def test_acm_pca_without_ca_in_bulk(cdf_api) -> None:
    _completed(
        cdf_api,
        _bulk(cdf_api, "cdf-acmpca-without-ca", _things("bulk-pca-noca", 3), {"acmpcaCaAlias": "dev"}),
        3,
    )
    certificates = _certificates(cdf_api, [f"bulk-pca-noca-{i:03d}" for i in range(3)])
    assert len(certificates) == 3
    assert {d.get("caCertificateId") for d in certificates} == {None}


@pytest.mark.parametrize(
    ("template", "entries", "extra", "message"),
    [
        ("cdf-own-ca", [], None, "parameters: must be a non-empty list"),
        (
            "cdf-own-ca",
            [{"ThingName": "a"}, {"Colour": "red", "ThingName": "b"}],
            None,
            "parameters[1].Colour: the template declares no such parameter",
        ),
        (
            "cdf-own-ca",
            [{"SerialNumber": "x"}],
            None,
            "parameters[0].ThingName: is required (it names the thing)",
        ),
        (
            "cdf-own-ca",
            [{"ThingName": "a", "CertificatePem": "x"}],
            None,
            "parameters[0].CertificatePem: is filled by the pipeline",
        ),
        ("cdf-own-ca", [{"ThingName": 7}], None, "parameters[0].ThingName: must be a string"),
        (
            "cdf-own-ca",
            [{"ThingName": "a"}],
            {"certInfo": {"commonName": "x"}},
            "cdfProvisioningParameters.certInfo.commonName: bulk certificates follow",
        ),
        (
            "cdf-own-ca",
            [{"ThingName": "a"}],
            {"caId": "0" * 64},
            "this service signs with the factory CA only",
        ),
        (
            "cdf-without-ca",
            [{"ThingName": "a"}],
            {"certificatePem": "x"},
            "cdfProvisioningParameters.certificatePem: bulk makes every certificate",
        ),
        ("cdf-acmpca", [{"ThingName": "a"}], {"acmpcaCaAlias": "dev"}, "needs awsiotCaArn or awsiotCaAlias"),
        (
            "TH-100",
            [{"serial_number": "A1", "ThingName": "wrong"}],
            None,
            "parameters[0].ThingName 'wrong': product TH-100 names this device 'TH-100-A1'",
        ),
        (
            "TH-100",
            [{"serial_number": "A1"}],
            {"caId": "x"},
            "cdfProvisioningParameters (product TH-100).caId: the template's certificate mode (none)",
        ),
        ("no-such-template", [{"ThingName": "a"}], None, "no catalog product no-such-template"),
    ],
)
def test_bulk_refusals_name_the_entry_and_field(cdf_api, template, entries, extra, message) -> None:
    status = 404 if template == "no-such-template" else 400
    assert message in _bulk(cdf_api, template, entries, extra, status=status)["error"]


def test_templates_bulk_cannot_map_are_refused_precisely(cdf_api) -> None:
    base = json.loads((EXAMPLES / "cdf-own-ca.json").read_text())
    plain = {k: v for k, v in base.items() if k != "CDF"}
    cdf_api.upload_template("plain", plain)
    assert (
        "bulk provisioning needs a CDF certificate mode"
        in _bulk(cdf_api, "plain", [{"ThingName": "a"}], status=400)["error"]
    )
    client_id = {**base, "CDF": {"createDeviceCertificate": True, "clientIdMustMatchThingName": True}}
    cdf_api.upload_template("client-id", client_id)
    assert (
        "clientIdMustMatchThingName makes one policy per thing"
        in _bulk(cdf_api, "client-id", [{"ThingName": "a"}], status=400)["error"]
    )
    joined = json.loads(json.dumps(base))
    joined["Resources"]["thing"]["Properties"]["ThingName"] = {
        "Fn::Join": ["-", ["x", {"Ref": "SerialNumber"}]]
    }
    cdf_api.upload_template("joined-name", joined)
    assert (
        "bulk needs the thing's ThingName to be"
        in _bulk(cdf_api, "joined-name", [{"ThingName": "a"}], status=400)["error"]
    )


def test_a_failed_run_says_why(cdf_api) -> None:
    document = json.loads((EXAMPLES / "cdf-own-ca.json").read_text())
    document["Resources"]["thing"]["Properties"]["ThingGroups"] = ["no-such-group"]
    cdf_api.upload_template("missing-group", document)
    done = cdf_api.wait_bulk(_bulk(cdf_api, "missing-group", _things("bulk-fail", 2))["taskId"])
    assert done["status"] == "Failed"
    assert "thing group no-such-group" in done["message"] and "does not exist" in done["message"]


def test_a_task_a_dead_process_left_is_resumed(cdf_api) -> None:
    plan = plan_bulk(cdf_api.backend.services(), "cdf-own-ca", _things("bulk-resume", 3), None)
    task = cdf_api.backend.store().create(plan, "thread")  # stored, never submitted: its process died
    assert cdf_api.call("GET", f"/bulkthings/{task.task_id}").json()["status"] == "Pending"
    assert cdf_api.runner.resume(cdf_api.backend.store()) == [task.task_id]
    _completed(
        cdf_api, {"status": "Pending", "taskId": task.task_id, "creationDate": _iso(task.created_at)}, 3
    )
    assert cdf_api.runner.resume(cdf_api.backend.store()) == []  # finished tasks stay finished
