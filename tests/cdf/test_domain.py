"""The Airflow-free parts without HTTP: templates as derived products, CDF blocks, media types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from include.catalog import load_catalog
from include.cdf.derived_product import derive, entry_row, jinja_text
from include.cdf.errors import BadRequest
from include.cdf.parameters import parse_block, parse_parameters
from include.templates import render_template
from plugins.cdf_api.media import MEDIA_TYPE, accepts_cdf, is_cdf

EXAMPLES = Path(__file__).resolve().parents[2] / "plugins" / "cdf_api" / "examples"


def _example(name: str) -> tuple[dict, object]:
    document = json.loads((EXAMPLES / f"{name}.json").read_text())
    return document, parse_block(document.pop("CDF"), name)


@pytest.mark.parametrize(
    ("name", "mode", "properties"),
    [
        ("cdf-own-ca", "own_ca_key", {"CertificatePem", "CACertificatePem", "Status"}),
        ("cdf-aws-issued", "aws_issued", {"CertificateSigningRequest", "Status"}),
        ("cdf-without-ca", "without_ca", {"CertificateId", "Status"}),
        ("cdf-acmpca", "acm_pca", {"CertificatePem", "CACertificatePem", "Status"}),
    ],
)
def test_each_cdf_mode_becomes_its_catalog_mode(
    tmp_path: Path, name: str, mode: str, properties: set[str]
) -> None:
    document, block = _example(name)
    derived = derive(name, document, block, validity_days=30, extra_policies=["Extra"])
    assert derived.mode == mode and derived.entry["certificate_mode"] == mode
    assert derived.entry["thing_name"] == "{thingname}" and derived.entry["validity_days"] == 30
    assert derived.entry["attributes"] == {"serial_number": "SerialNumber"}
    assert (
        derived.entry["thing_groups"] == ["factory-provisioned"]
        and derived.entry["policy"] == "FactoryDevicePolicy"
    )
    (tmp_path / "t.json.j2").write_text(derived.template_text)
    (tmp_path / "products.yaml").write_text(
        yaml.safe_dump(
            {"version": 1, "products": {derived.model: {"template": "t.json.j2", **derived.entry}}}
        )
    )
    product = load_catalog(tmp_path / "products.yaml").products[derived.model]
    body = json.loads(
        render_template(product, "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    )
    assert set(body["Resources"]["certificate"]["Properties"]) == properties
    assert body["Resources"]["cdfAdditionalPolicy1"]["Properties"]["PolicyName"] == "Extra"
    assert entry_row(derived, {"ThingName": "t-1", "SerialNumber": "S-1"}, "p[0]") == {
        "model": derived.model,
        "thingname": "t-1",
        "serial_number": "S-1",
    }


def test_parameters_are_renamed_everywhere_and_nothing_in_a_string_ends_the_raw_block(tmp_path: Path) -> None:
    document = {
        "Parameters": {
            "deviceId": {"Type": "String"},
            "site": {"Type": "String"},
            "CertificatePem": {"Type": "String"},
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {
                    "ThingName": {"Ref": "deviceId"},
                    "AttributePayload": {"site": {"Fn::Sub": "${site}-{% endraw %}{{ 7*7 }}"}},
                },
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {"CertificatePem": {"Ref": "CertificatePem"}},
            },
            "policy": {
                "Type": "AWS::IoT::Policy",
                "Properties": {"PolicyDocument": '{"Version": "2012-10-17"}'},
            },
        },
    }
    derived = derive(
        "odd",
        document,
        parse_block({"createDeviceCertificate": True}, "odd"),
        validity_days=1,
        extra_policies=[],
    )
    assert derived.columns == {"deviceId": "thingname", "site": "site"}
    assert derived.entry["policy"].startswith("cdf_") and derived.inline_policies
    (tmp_path / "t.json.j2").write_text(derived.template_text)
    (tmp_path / "products.yaml").write_text(
        yaml.safe_dump(
            {"version": 1, "products": {derived.model: {"template": "t.json.j2", **derived.entry}}}
        )
    )
    body = json.loads(
        render_template(load_catalog(tmp_path / "products.yaml").products[derived.model], "PEM")
    )
    thing = body["Resources"]["thing"]["Properties"]
    assert thing["ThingName"] == {"Ref": "ThingName"}
    assert thing["AttributePayload"]["site"] == {
        "Fn::Sub": "${Site}-{% endraw %}{{ 7*7 }}"
    }  # verbatim, not run
    assert body["Resources"]["certificate"]["Properties"]["CACertificatePem"] == "PEM"


def test_cdf_blocks_take_one_mode_and_both_policy_spellings() -> None:
    listed = parse_block({"createDeviceCertificate": True, "attachAdditionalPolicies": [{"name": "a"}]}, "t")
    wrapped = parse_block(
        {"createDeviceCertificate": True, "attachAdditionalPolicies": {"policies": [{"name": "a"}]}}, "t"
    )
    assert listed.attachAdditionalPolicies == wrapped.attachAdditionalPolicies
    with pytest.raises(BadRequest, match="sets createDeviceCertificate and acmpca"):
        parse_block({"createDeviceCertificate": True, "acmpca": {"mode": "REGISTER_WITH_CA"}}, "t")
    with pytest.raises(BadRequest, match="template t: CDF.acmpca.mode: input should be"):
        parse_block({"acmpca": {"mode": "SOMETIMES"}}, "t")
    with pytest.raises(
        BadRequest, match=r"cdfProvisioningParameters.certInfo.daysExpiry: input should be greater"
    ):
        parse_parameters({"certInfo": {"daysExpiry": 0}}, "createDeviceCertificate")


def test_media_types() -> None:
    assert accepts_cdf(MEDIA_TYPE) and accepts_cdf(f"text/html, {MEDIA_TYPE}; q=0.5")
    assert not accepts_cdf("*/*") and not accepts_cdf(f"{MEDIA_TYPE};q=0") and not accepts_cdf(None)
    assert is_cdf(f"{MEDIA_TYPE}; charset=utf-8") and not is_cdf("application/json")


def test_jinja_text_escapes_only_inside_strings() -> None:
    text = jinja_text({"a": "{%", "b": "__CDF_CA_PEM__"})
    assert "{\\u0025" in text and "{{ ca_certificate_pem | tojson }}" in text
