"""Claim-based catalog entries (provisioning: fleet): their checks, fleet template and claim policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from include.catalog import load_catalog
from include.errors import CatalogError, TemplateError
from include.fleet_catalog import form_models
from include.fleet_templates import (
    check_claim_policy,
    check_fleet_template,
    render_claim_policy,
    render_fleet_template,
)
from include.settings import REPO_ROOT, Settings

TEMPLATES = REPO_ROOT / "catalog" / "templates"
ENTRY = {
    "provisioning": "fleet",
    "template": "templates/fleet.json.j2",
    "thing_name": "{model}-{serial_number}",
    "thing_type": "SmartPlug",
    "thing_groups": ["plugs"],
    "policy": "DevicePolicy",
    "claim_policy": "ClaimPolicy",
    "attributes": {"FirmwareVersion": "firmwareVersion"},
}


def _catalog(tmp_path: Path, **changes: object) -> object:
    shutil.copytree(TEMPLATES, tmp_path / "templates", dirs_exist_ok=True)
    entry = {key: value for key, value in {**ENTRY, **changes}.items() if value is not None}
    (tmp_path / "products.yaml").write_text(yaml.safe_dump({"products": {"PL-1": entry}}))
    return load_catalog(tmp_path / "products.yaml")


def test_the_shipped_catalog_has_a_claim_product_apart_from_the_bulk_ones():
    catalog = load_catalog(Settings().catalog_path)
    product = catalog.fleet_products["FC-600"]
    assert "FC-600" not in catalog and catalog.get("FC-600") is None  # batches never see it
    assert (product.template_name, product.claim_policy, product.thing_type) == (
        "fleet-FC-600",
        "FleetClaim-FC-600",
        "SmartPlug",
    )
    assert form_models(Settings().catalog_path, fleet=True) == ["FC-600"]
    assert {"TH-100", "GW-200"} <= set(catalog.products)


def test_the_shipped_fleet_template_renders_to_the_contract():
    product = load_catalog(Settings().catalog_path).fleet_products["FC-600"]
    document = json.loads(render_fleet_template(product))
    assert set(document["Parameters"]) == {
        "SerialNumber",
        "AWS::IoT::Certificate::Id",
        "FirmwareVersion",
        "MacAddress",
    }
    thing = document["Resources"]["thing"]["Properties"]
    assert thing["ThingName"] == {"Fn::Join": ["", ["FC-600", "-", {"Ref": "SerialNumber"}]]}
    assert thing["ThingTypeName"] == "SmartPlug"
    assert thing["AttributePayload"]["provisioningTemplate"] == "fleet-FC-600"
    assert thing["AttributePayload"]["serialNumber"] == {"Ref": "SerialNumber"}
    certificate = document["Resources"]["certificate"]["Properties"]
    assert certificate == {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "ACTIVE"}
    assert document["Resources"]["policy"]["Properties"] == {"PolicyName": "FactoryDevicePolicy"}
    assert document["DeviceConfiguration"] == {"telemetryTopicPrefix": "devices/"}
    assert check_fleet_template(product, document) == []


def test_the_claim_policy_reaches_only_the_templates_provisioning_topics():
    product = load_catalog(Settings().catalog_path).fleet_products["FC-600"]
    document = json.loads(render_claim_policy(product))
    resources = [
        r
        for s in document["Statement"]
        for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])
    ]
    assert "arn:aws:iot:*:*:topic/$aws/provisioning-templates/fleet-FC-600/provision/*" in resources
    assert not [r for r in resources if "provisioning-templates/" in r and "fleet-FC-600" not in r]
    assert check_claim_policy("fleet-FC-600", document) == []


@pytest.mark.parametrize(
    ("statement", "words"),
    [
        ({"Effect": "Allow", "Action": "iot:*", "Resource": "*"}, "allows ['iot:*']"),
        ({"Effect": "Allow", "Action": "iot:Publish", "Resource": "*"}, "not a topic"),
        (
            {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:*:*:topic/devices/*"},
            "outside fleet provisioning's topics",
        ),
        (
            {
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": "arn:aws:iot:*:*:topicfilter/$aws/provisioning-templates/other/provision/*",
            },
            "outside fleet provisioning's topics",
        ),
    ],
)
def test_a_claim_policy_reaching_further_is_refused(statement, words):
    problems = check_claim_policy("fleet-PL-1", {"Statement": [statement]})
    assert problems and any(words in problem for problem in problems), problems


def test_a_deny_only_narrows_the_claim():
    deny = {"Effect": "Deny", "Action": "iot:*", "Resource": "*"}
    assert check_claim_policy("t", {"Statement": [deny]}) == []


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"certificate_mode": "own_ca_key"}, "certificate_mode does not apply to a fleet product"),
        ({"validity_days": 30}, "set claim_validity_days for the claim"),
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"claim_policy": None}, "needs 'claim_policy'"),
        ({"claim_policy": "DevicePolicy"}, "is also a device policy"),
        ({"thing_name": "plug-{model}"}, "must use {serial_number}"),
        ({"thing_name": "{model}-{mac_address}"}, "may use only {model} and {serial_number}"),
        ({"thing_name": "plug {serial_number}"}, "characters a thing name cannot have"),
        ({"template_name": "x" * 37}, "1 to 36 characters"),
        ({"claim_validity_days": 0}, "claim_validity_days must be a whole number"),
        ({"pre_provisioning_hook": "check-serial"}, "is not a Lambda function ARN"),
        ({"attributes": {"SerialNumber": "serial"}}, "not be SerialNumber"),
        ({"attributes": {"Site": "provisioningTemplate"}}, "one the template sets itself"),
        ({"thing_type": None}, "a thing without a thing type may have at most 3"),
        ({"device_configuration": {"nested": {"a": "b"}}}, "device_configuration must map names"),
        ({"template": "templates/missing.j2"}, "template templates/missing.j2 not found"),
        ({"provisioning": "magic"}, "provisioning 'magic' is not one of ['bulk', 'fleet']"),
    ],
)
def test_every_problem_of_an_entry_is_named(tmp_path, changes, words):
    with pytest.raises(CatalogError) as raised:
        _catalog(tmp_path, **changes)
    assert "PL-1" in str(raised.value) and words in str(raised.value)


def test_a_default_template_name_too_long_says_to_set_one(tmp_path):
    shutil.copytree(TEMPLATES, tmp_path / "templates")
    model = "PLUG-" + "9" * 40
    (tmp_path / "products.yaml").write_text(yaml.safe_dump({"products": {model: ENTRY}}))
    with pytest.raises(CatalogError, match="set template_name"):
        load_catalog(tmp_path / "products.yaml")


def test_an_edited_template_that_breaks_the_contract_is_refused(tmp_path):
    catalog = _catalog(tmp_path)
    path = tmp_path / "templates" / "fleet.json.j2"
    path.write_text(path.read_text().replace('"provisioningTemplate"', '"madeBy"'))
    with pytest.raises(TemplateError, match="attribute provisioningTemplate must be 'fleet-PL-1'"):
        render_fleet_template(catalog.fleet_products["PL-1"])


def test_a_template_whose_device_parameter_is_not_sent_is_refused(tmp_path):
    catalog = _catalog(tmp_path)
    path = tmp_path / "templates" / "fleet.json.j2"
    path.write_text(
        path.read_text().replace(
            '"SerialNumber": {"Type": "String"},',
            '"SerialNumber": {"Type": "String"}, "Site": {"Type": "String"},',
        )
    )
    with pytest.raises(TemplateError, match=r"parameters \['Site'\] have no Default"):
        render_fleet_template(catalog.fleet_products["PL-1"])


def test_a_hook_and_extra_policies_reach_the_template(tmp_path):
    catalog = _catalog(
        tmp_path,
        extra_policies=["TelemetryPolicy"],
        pre_provisioning_hook="arn:aws:lambda:us-east-1:123456789012:function:check-serial",
    )
    product = catalog.fleet_products["PL-1"]
    document = json.loads(render_fleet_template(product))
    assert document["Resources"]["policy_1"]["Properties"] == {"PolicyName": "TelemetryPolicy"}
    assert product.pre_provisioning_hook.endswith(":check-serial")
