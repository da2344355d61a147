"""Catalog loading and checks; template rendering (sandboxed, strict, size-limited); parameter lines."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from include.catalog import load_catalog
from include.certificate_authority import CertificateAuthority
from include.credentials import ProductSpec
from include.errors import CatalogError, TemplateError
from include.parameter_file import encode_parameters
from include.settings import Settings
from include.templates import MAX_TEMPLATE_BODY, line_parameters, render_template, template_parameters

PRODUCT = """\
products:
  X-1:
    template: t.json.j2
    thing_name: "{model}-{serial_number}"
    thing_type: Sensor
    thing_groups: [a, b]
    policy: P
    certificate_mode: own_ca_key
    attributes: {serial_number: serialNumber}
"""


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(Settings().catalog_path)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create_development()


def _catalog(tmp_path: Path, text: str = PRODUCT, template: str = "{}"):
    (tmp_path / "t.json.j2").write_text(template)
    (tmp_path / "products.yaml").write_text(text)
    return load_catalog(tmp_path / "products.yaml")


def test_shipped_catalog(catalog):
    th, gw = catalog.get("TH-100"), catalog.get("GW-200")
    assert (th.certificate_mode, th.key_algorithm, gw.certificate_mode) == (
        "own_ca_key",
        "ec-p256",
        "device_csr",
    )
    assert th.group == "TH-100" and th.max_attributes == 50


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("certificate_mode: own_ca_key", "certificate_mode: aws"), "certificate_mode 'aws'"),
        (("policy: P", "policy: 'bad policy'"), "not a valid IoT policy name"),
        (("thing_groups: [a, b]", "thing_groups: [a, 'b c']"), "thing_groups"),
        (("t.json.j2", "missing.json.j2"), "template missing.json.j2 not found"),
        (("{model}-{serial_number}", "{model}-{0}"), "plain {column} fields"),
        (("serialNumber}", "ThingName}"), "clashes with template parameter"),
        (("    policy: P\n", "    policy: P\n    colour: red\n"), "unknown field(s) ['colour']"),
    ],
)
def test_catalog_errors_name_the_product_and_field(tmp_path, change, words):
    with pytest.raises(CatalogError) as raised:
        _catalog(tmp_path, PRODUCT.replace(*change))
    assert "product X-1" in str(raised.value) and words in str(raised.value)


def test_unreadable_catalog(tmp_path):
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "nope.yaml")
    (tmp_path / "x.yaml").write_text("products: [1")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(tmp_path / "x.yaml")


def test_rendered_template_is_compact_json_with_parameters_for_every_line(catalog, ca):
    for product in catalog.products.values():
        body = render_template(product, ca.certificate_pem)
        assert len(body) <= MAX_TEMPLATE_BODY and "\n " not in body
        document = json.loads(body)
        required, optional = template_parameters(document)
        assert required == {"ThingName", product.certificate_parameter}
        assert line_parameters(product) == required | optional
        resources = document["Resources"]
        certificate = resources["certificate"]["Properties"]
        # Each mode's certificate: a PEM under the CA that signs it, AWS's signature of a CSR, or an id.
        expected = {
            "CertificatePem": {
                "CertificatePem": {"Ref": "CertificatePem"},
                "CACertificatePem": ca.certificate_pem,
            },
            "CSR": {"CertificateSigningRequest": {"Ref": "CSR"}},
            "CertificateId": {"CertificateId": {"Ref": "CertificateId"}},
        }[product.certificate_parameter]
        assert certificate == {**expected, "Status": "ACTIVE"}
        assert resources["policy"]["Properties"] == {"PolicyName": product.policy}
        extra = [r["Properties"]["PolicyName"] for k, r in resources.items() if k.startswith("policy_")]
        assert extra == list(product.extra_policies)
        thing = resources["thing"]["Properties"]
        assert thing["ThingTypeName"] == product.thing_type and thing["ThingGroups"] == list(
            product.thing_groups
        )
        assert thing["AttributePayload"]["serialNumber"] == {"Ref": "SerialNumber"}


def test_template_errors(tmp_path, ca):
    product = _catalog(tmp_path, template='{"x": {{ nope }}}').get("X-1")
    with pytest.raises(TemplateError, match="'nope' is undefined"):
        render_template(product, ca.certificate_pem)
    product = _catalog(tmp_path, template='{"x": {{ product.__class__.__mro__ }}}').get("X-1")
    with pytest.raises(TemplateError, match="unsafe"):
        render_template(product, ca.certificate_pem)  # the sandbox refuses dunder access
    product = _catalog(tmp_path, template="{'single': 'quotes'}").get("X-1")
    with pytest.raises(TemplateError, match="does not render to JSON"):
        render_template(product, ca.certificate_pem)
    big = (
        '{"Parameters": {"ThingName": {"Type": "String"}, "CertificatePem": {"Type": "String"}, '
        '"SerialNumber": {"Type": "String"}}, "x": "' + "a" * 10300 + '"}'
    )
    product = _catalog(tmp_path, template=big).get("X-1")
    with pytest.raises(TemplateError, match="at most 10240"):
        render_template(product, ca.certificate_pem)
    product = _catalog(
        tmp_path, template='{"Parameters": {"ThingName": {"Type": "String"}, "Other": {"Type": "String"}}}'
    ).get("X-1")
    with pytest.raises(TemplateError, match=r"\['Other'\] have no Default"):
        render_template(product, ca.certificate_pem)


def test_parameter_lines_are_string_valued_orjson(catalog):
    product = catalog.get("TH-100")
    device = {"thing_name": "TH-100-A1", "attributes": {"serialNumber": "A1", "macAddress": ""}}
    pem = "-----BEGIN CERTIFICATE-----\nAB\n-----END CERTIFICATE-----\n"
    line = encode_parameters(device, pem, ProductSpec.of(product).attributes)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # PEM newlines are escaped inside the JSON string
    values = orjson.loads(line)
    assert set(values) == line_parameters(product)
    assert all(isinstance(v, str) for v in values.values())
    assert values["ThingName"] == "TH-100-A1" and values["FirmwareVersion"] == ""
    assert values["CertificatePem"] == pem
