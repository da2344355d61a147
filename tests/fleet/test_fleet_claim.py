"""prepare_fleet_claim's domain work against the emulator: template, claim policy, claim and its bundle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil

import pytest
import yaml
from cryptography import x509

from include.certificate_authority import certificate_id
from include.errors import PreflightError
from include.fleet_claim import prepare_claim, prepare_resources
from tests.fleet.conftest import MODEL, TEMPLATE, Account


def prepare(account: Account, *, dry_run: bool = False, settings=None, **claim) -> dict:
    settings = settings or account.settings
    resources = prepare_resources(
        account.iot, account.s3, settings, MODEL, account.ca_certificate_pem, dry_run=dry_run
    )
    return prepare_claim(
        account.iot, account.s3, settings, resources, account.authority(), run_id="t", **claim
    )


def fleet_objects(account: Account) -> list[str]:
    listed = account.s3.list_objects_v2(Bucket=account.settings.bucket, Prefix="batches/fleet/")
    return [item["Key"] for item in listed.get("Contents", [])]


def template_names(account: Account) -> set[str]:
    return {t["templateName"] for t in account.iot.list_provisioning_templates()["templates"]}


def own_catalog(account: Account, tmp_path, **changes) -> object:
    """Settings whose catalog is the shipped one with the fleet product changed."""
    shutil.copytree(account.settings.catalog_path.rsplit("/", 1)[0], tmp_path / "catalog")
    path = tmp_path / "catalog" / "products.yaml"
    document = yaml.safe_load(path.read_text())
    document["products"][MODEL].update(changes)
    path.write_text(yaml.safe_dump(document))
    return dataclasses.replace(account.settings, catalog_path=str(path))


def test_a_claim_product_is_prepared_and_a_second_run_changes_nothing(account: Account):
    result = prepare(account)
    assert (result["template"], result["claim_policy_change"], result["claim"]) == ("created",) * 2 + (
        "issued",
    )
    assert result["device_endpoint"] == "localhost" and result["template_name"] == TEMPLATE
    claim_id = result["claim_certificate_id"]
    assert result["bundle_key"] == f"batches/fleet/{MODEL}/claims/{claim_id}/claim.tar.p7m"

    template = account.iot.describe_provisioning_template(templateName=TEMPLATE)
    assert template["type"] == "FLEET_PROVISIONING" and template["enabled"]
    assert template["provisioningRoleArn"] == account.settings.registration_role_arn
    assert (
        json.loads(template["templateBody"])["Resources"]["thing"]["Properties"]["ThingTypeName"]
        == "SmartPlug"
    )
    described = account.iot.describe_certificate(certificateId=claim_id)["certificateDescription"]
    assert described["status"] == "ACTIVE"
    ca_id = certificate_id(x509.load_pem_x509_certificate(account.ca_certificate_pem.encode()))
    assert described["caCertificateId"] == ca_id  # signed by the factory CA, which IoT trusts
    attached = account.iot.list_attached_policies(target=described["certificateArn"])["policies"]
    assert [p["policyName"] for p in attached] == ["FleetClaim-FC-600"]

    record = account.open_claim(result["bundle_key"])  # the factory line's view: key and certificate
    assert record["thing_name"] == f"{MODEL}-claim" and record["certificate_id"] == claim_id
    certificate = x509.load_pem_x509_certificate(record["certificate_pem"].encode())
    assert certificate.not_valid_after_utc.isoformat() == result["claim_not_after"]
    days = (certificate.not_valid_after_utc - certificate.not_valid_before_utc).days
    assert days == 365  # the product's claim_validity_days (plus five minutes of clock skew)
    line = json.loads(
        account.s3.get_object(Bucket=account.settings.bucket, Key=result["claim_record"].split("/", 3)[3])[
            "Body"
        ].read()
    )
    assert line["template_name"] == TEMPLATE and "PRIVATE KEY" not in json.dumps(line)
    assert "PRIVATE KEY" not in json.dumps(result)

    certificates = len(account.iot.list_certificates()["certificates"])
    again = prepare(account)
    assert (again["template"], again["claim_policy_change"], again["claim"]) == ("unchanged",) * 2 + ("kept",)
    assert again["claim_certificate_id"] == claim_id and again["bundle_key"] == result["bundle_key"]
    assert len(account.iot.list_certificates()["certificates"]) == certificates


def test_a_dry_run_says_what_it_would_do_and_does_nothing(account: Account):
    result = prepare(account, dry_run=True)
    assert result["dry_run"] and result["claim"] == "would issue"
    assert (result["template"], result["claim_policy_change"]) == ("would create", "would create")
    assert len(result["would"]) == 3 and "claim_certificate_id" not in result
    assert TEMPLATE not in template_names(account)
    assert fleet_objects(account) == []


def test_a_catalog_change_updates_the_template_and_policy_in_place(account: Account, tmp_path):
    first = prepare(account)
    hook = "arn:aws:lambda:us-east-1:123456789012:function:check-serial"
    settings = own_catalog(
        account, tmp_path, device_configuration={"telemetryTopicPrefix": "plugs/"}, pre_provisioning_hook=hook
    )
    planned = prepare(account, dry_run=True, settings=settings)
    assert planned["template"] == "would update" and planned["claim"] == "kept"
    changed = prepare(account, settings=settings)
    assert changed["template"] == "updated" and changed["template_version"] == 2
    assert changed["claim"] == "kept" and changed["claim_certificate_id"] == first["claim_certificate_id"]
    template = account.iot.describe_provisioning_template(templateName=TEMPLATE)
    assert json.loads(template["templateBody"])["DeviceConfiguration"] == {"telemetryTopicPrefix": "plugs/"}
    assert template["preProvisioningHook"]["targetArn"] == hook
    # More changes than the five versions a template may keep: the oldest are deleted, never the default.
    for n in range(6):
        prepare(account, settings=own_catalog(account, tmp_path / str(n), device_configuration={"n": str(n)}))
    versions = account.iot.list_provisioning_template_versions(templateName=TEMPLATE)["versions"]
    assert len(versions) <= 5 and [v["isDefaultVersion"] for v in versions][-1]


def test_a_new_claim_when_asked_or_when_the_current_one_expires_soon(account: Account):
    first = prepare(account)
    asked = prepare(account, new_claim=True)
    assert asked["claim"] == "issued" and asked["claim_certificate_id"] != first["claim_certificate_id"]
    assert asked["other_active_claims"] == [first["claim_certificate_id"]]  # still ACTIVE: flashed devices
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=350)
    renewed = prepare(account, now=soon, validity_days=30)
    assert renewed["claim"] == "issued" and "within 30 days" in renewed["claim_reason"]
    ends = dt.datetime.fromisoformat(renewed["claim_not_after"])
    assert dt.timedelta(days=29) < ends - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)


def test_missing_prerequisites_are_refused_before_anything_changes(account: Account, tmp_path):
    settings = own_catalog(account, tmp_path, thing_type="NoSuchType", thing_groups=["nowhere"])
    with pytest.raises(PreflightError) as raised:
        prepare(account, settings=settings)
    assert "thing type NoSuchType (product FC-600) does not exist" in str(raised.value)
    assert "thing group nowhere (product FC-600) does not exist" in str(raised.value)
    assert TEMPLATE not in template_names(account)
