"""The provisioning template engine: template errors, intrinsics, pseudo-parameters and OverrideSettings."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from iot_emulator.errors import IotError
from iot_emulator.service import IotService, in_memory_service
from iot_emulator.template_language import compile_template, policy_name_for_document
from iot_emulator.template_provisioning import provision

ACCOUNT = "123456789012"


class FactoryCa:
    """A small ECDSA P-256 CA that issues device certificates straight from public keys."""

    def __init__(self, common_name: str = "Factory CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.cert = self._build(self.name, self.key.public_key(), ca=True)
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def _build(self, subject: x509.Name, public_key: Any, ca: bool = False) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, common_name: str, **subject: str) -> str:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        oids = {
            "serial": NameOID.SERIAL_NUMBER,
            "country": NameOID.COUNTRY_NAME,
            "org": NameOID.ORGANIZATION_NAME,
        }
        attrs += [x509.NameAttribute(oids[k], v) for k, v in subject.items()]
        cert = self._build(x509.Name(attrs), ec.generate_private_key(ec.SECP256R1()).public_key())
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def verification_pem(self, registration_code: str) -> str:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, registration_code)])
        cert = self._build(subject, ec.generate_private_key(ec.SECP256R1()).public_key())
        return cert.public_bytes(serialization.Encoding.PEM).decode()


def csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def body(resources: dict[str, Any], parameters: dict[str, Any] | None = None, **sections: Any) -> str:
    return json.dumps({"Parameters": parameters or {}, "Resources": resources, **sections})


def thing(name: Any, **props: Any) -> dict[str, Any]:
    return {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": name, **props}}


STRING = {"Type": "String"}


@pytest.fixture
def backend() -> IotService:
    b = in_memory_service()
    b.create_thing_type(thingTypeName="sensor")
    b.create_thing_group(thingGroupName="line-1")
    b.create_thing_group(thingGroupName="line-2")
    b.create_policy(
        policyName="device", policyDocument=json.dumps({"Version": "2012-10-17", "Statement": []})
    )
    return b


@pytest.fixture
def ca(backend: IotService) -> FactoryCa:
    ca = FactoryCa()
    code = backend.get_registration_code()["registrationCode"]
    backend.register_ca_certificate(
        caCertificate=ca.pem, verificationCertificate=ca.verification_pem(code), setAsActive=True
    )
    return ca


def error_of(template_body: str) -> str:
    with pytest.raises(IotError) as exc:
        compile_template(template_body)
    assert exc.value.code == "InvalidRequestException"
    return exc.value.message


# ---------------------------------------------------------------- template errors name what and where


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            body({"thing": thing({"Ref": "Name"})}),
            "Resources.thing.Properties.ThingName: Ref 'Name' is not a declared parameter",
        ),
        (
            body({"thing": thing({"Fn::Join": ["-", ["a", {"Ref": "Serial"}]]})}),
            "Resources.thing.Properties.ThingName.Fn::Join[1][1]: Ref 'Serial' is not a declared parameter",
        ),
        (
            body({"thing": thing({"Ref": "AWS::Region"})}),
            "Resources.thing.Properties.ThingName: Ref 'AWS::Region' is not a supported pseudo-parameter",
        ),
        (
            body({"thing": thing({"Fn::If": ["c", "a", "b"]})}),
            "Resources.thing.Properties.ThingName: unsupported intrinsic function 'Fn::If'",
        ),
        (
            body({"thing": thing({"Fn::FindInMap": ["Nope", "a", "b"]})}),
            "ThingName.Fn::FindInMap[0]: mapping 'Nope' is not declared in Mappings",
        ),
        (
            body({"thing": {"Type": "AWS::IoT::Gadget"}}),
            "Resources.thing.Type: must be one of AWS::IoT::Thing",
        ),
        (
            body({"thing": thing("a", Colour="red")}),
            "Resources.thing.Properties.Colour: unknown property for AWS::IoT::Thing",
        ),
        (body({"thing": {"Type": "AWS::IoT::Thing", "Properties": {}}}), "ThingName is required"),
        (
            body(
                {
                    "cert": {
                        "Type": "AWS::IoT::Certificate",
                        "Properties": {"CertificateId": "x", "CertificateSigningRequest": "y"},
                    }
                }
            ),
            "Resources.cert.Properties: exactly one of CertificateSigningRequest, CertificateId or Cert",
        ),
        (
            body(
                {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "a", "PolicyDocument": "{}"}}}
            ),
            "Resources.p.Properties: exactly one of PolicyName",
        ),
        (
            body(
                {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "a"}, "OverrideSettings": {}}}
            ),
            "Resources.p.OverrideSettings: OverrideSettings are not available for AWS::IoT::Policy",
        ),
        (
            body({"thing": {**thing("a"), "OverrideSettings": {"ThingTypeName": "MERGE"}}}),
            "OverrideSettings.ThingTypeName: MERGE is valid only for ThingGroups and AttributePayload",
        ),
        (
            body({"thing": {**thing("a"), "OverrideSettings": {"ThingName": "REPLACE"}}}),
            "Resources.thing.OverrideSettings.ThingName: cannot be overridden",
        ),
        (
            body({"thing": thing("a")}, {"Count": {"Type": "Number"}}),
            "Parameters.Count.Type: must be 'String', got 'Number'",
        ),
        (
            body({"thing": thing("a")}, Mappings={"M": {"k": {"v": {"Ref": "x"}}}}),
            "Mappings.M.k.v: Mappings hold plain values; intrinsic functions are not allowed",
        ),
        (body({"thing": thing("a")}, Conditions={}), "Conditions: unknown template section"),
        (body({}), "Resources: must be a non-empty object"),
        ("{not json", "templateBody: is not valid JSON"),
        (json.dumps({"Resources": {"t": thing("x" * 10300)}}), "characters, the limit is 10240"),
    ],
)
def test_template_errors_say_what_and_where(template: str, message: str) -> None:
    assert message in error_of(template)


def test_template_body_of_exactly_10240_characters_is_accepted() -> None:
    template = body({"thing": thing("t")})
    padded = template[:-1] + " " * (10240 - len(template)) + "}"
    assert len(padded) == 10240
    compile_template(padded)


# ---------------------------------------------------------------- intrinsic functions and parameters


def evaluate_thing_name(
    backend: IotService, name_node: Any, parameters: dict[str, Any], **sections: Any
) -> str:
    params = {k: STRING for k in parameters} | sections.pop("declared", {})
    template = compile_template(body({"thing": thing(name_node)}, params, **sections))
    result = provision(backend, template, parameters)
    return result.thing_name or ""


@pytest.mark.parametrize(
    ("node", "parameters", "expected"),
    [
        ({"Ref": "Serial"}, {"Serial": "A1"}, "A1"),
        ({"Fn::Join": ["-", ["TH", {"Ref": "Serial"}]]}, {"Serial": "A1"}, "TH-A1"),
        ({"Fn::Join": ["", ["TH", {"Ref": "Serial"}]]}, {"Serial": "A1"}, "THA1"),
        ({"Fn::Select": ["1", {"Fn::Split": [":", {"Ref": "Id"}]}]}, {"Id": "x:yy:z"}, "yy"),
        ({"Fn::Select": [2, ["a", "b", {"Ref": "Serial"}]]}, {"Serial": "c"}, "c"),
        ({"Fn::Sub": "dev-${Serial}"}, {"Serial": "7"}, "dev-7"),
        (
            {"Fn::Sub": ["${Prefix}-${Serial}", {"Prefix": {"Fn::Join": ["", ["p", "q"]]}}]},
            {"Serial": "7"},
            "pq-7",
        ),
    ],
)
def test_intrinsic_functions(
    backend: IotService, node: Any, parameters: dict[str, Any], expected: str
) -> None:
    assert evaluate_thing_name(backend, node, parameters) == expected


def test_find_in_map_and_defaults(backend: IotService) -> None:
    mappings = {"Models": {"TH-100": {"prefix": "thermo"}}}
    node = {"Fn::Join": ["_", [{"Fn::FindInMap": ["Models", {"Ref": "Model"}, "prefix"]}, {"Ref": "Serial"}]]}
    declared = {"Model": {"Type": "String", "Default": "TH-100"}}
    assert (
        evaluate_thing_name(backend, node, {"Serial": "9"}, Mappings=mappings, declared=declared)
        == "thermo_9"
    )
    with pytest.raises(IotError, match=r"Fn::FindInMap\[1\]: key 'GW-200' is not in mapping 'Models'"):
        evaluate_thing_name(
            backend, node, {"Serial": "9", "Model": "GW-200"}, Mappings=mappings, declared=declared
        )


def test_sub_escapes_literal_dollar_braces(backend: IotService) -> None:
    # Policy variables must survive Fn::Sub: ${!x} is the literal ${x}.
    document = (
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iot:Connect",'
        '"Resource":"arn:aws:iot:*:*:client/${!iot:ClientId}-${N}"}]}'
    )
    template = compile_template(
        body(
            {"p": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": {"Fn::Sub": document}}}},
            {"N": STRING},
        )
    )
    result = provision(backend, template, {"N": "t1"})
    policy = backend.get_policy(policyName=result.resource_arns["p"].rsplit("/", 1)[1])
    assert json.loads(policy["policyDocument"])["Statement"][0]["Resource"] == (
        "arn:aws:iot:*:*:client/${iot:ClientId}-t1"
    )


def test_missing_parameter_without_default_is_named(backend: IotService) -> None:
    template = compile_template(body({"thing": thing({"Ref": "ThingName"})}, {"ThingName": STRING}))
    with pytest.raises(IotError) as exc:
        provision(backend, template, {})
    assert exc.value.code == "InvalidRequestException"
    assert exc.value.message == (
        "Resources.thing.Properties.ThingName: parameter 'ThingName' has no value in the input and no Default"
    )


def test_select_out_of_range_is_a_precise_error(backend: IotService) -> None:
    with pytest.raises(
        IotError, match=r"ThingName.Fn::Select: index 5 is out of range for a list of 2 elements"
    ):
        evaluate_thing_name(backend, {"Fn::Select": ["5", ["a", "b"]]}, {})


def test_non_string_parameter_values_are_refused_when_structured(backend: IotService) -> None:
    assert evaluate_thing_name(backend, {"Ref": "N"}, {"N": 42}) == "42"
    with pytest.raises(IotError, match="parameter 'N' must be a string, got an object"):
        evaluate_thing_name(backend, {"Ref": "N"}, {"N": {"a": 1}})


# ---------------------------------------------------------------- pseudo-parameters from the certificate


def test_certificate_pseudo_parameters(backend: IotService, ca: FactoryCa) -> None:
    pem = ca.issue("sensor-77", serial="SN-77", country="DE", org="Acme")
    template = compile_template(
        body(
            {
                "thing": thing(
                    {"Ref": "AWS::IoT::Certificate::CommonName"},
                    AttributePayload={
                        "serial": {"Ref": "AWS::IoT::Certificate::SerialNumber"},
                        "country": {"Ref": "AWS::IoT::Certificate::Country"},
                        "org": {"Fn::Sub": "${AWS::IoT::Certificate::Organization}"},
                    },
                ),
                "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificatePem": {"Ref": "Pem"}}},
            },
            {"Pem": STRING},
        )
    )
    result = provision(backend, template, {"Pem": pem})
    assert result.thing_name == "sensor-77"
    assert backend.describe_thing(thingName="sensor-77")["attributes"] == {
        "serial": "SN-77",
        "country": "DE",
        "org": "Acme",
    }
    assert result.resource_arns["cert"].endswith(f"cert/{result.certificate_id}")
    principals = backend.list_thing_principals(thingName="sensor-77")["principals"]
    assert principals == [result.resource_arns["cert"]]


def test_missing_subject_attribute_is_an_error(backend: IotService, ca: FactoryCa) -> None:
    template = compile_template(
        body(
            {
                "thing": thing({"Ref": "AWS::IoT::Certificate::OrganizationalUnit"}),
                "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificatePem": {"Ref": "Pem"}}},
            },
            {"Pem": STRING},
        )
    )
    with pytest.raises(
        IotError, match="AWS::IoT::Certificate::OrganizationalUnit: the certificate subject has no"
    ):
        provision(backend, template, {"Pem": ca.issue("x")})


# ---------------------------------------------------------------- resources and OverrideSettings


def test_csr_certificate_policy_document_and_existing_policy(backend: IotService) -> None:
    document = json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
    )
    template = compile_template(
        body(
            {
                "thing": thing("gw-1", ThingTypeName="sensor", ThingGroups=["line-1"]),
                "certificate": {
                    "Type": "AWS::IoT::Certificate",
                    "Properties": {"CertificateSigningRequest": {"Ref": "CSR"}, "Status": "ACTIVE"},
                },
                "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyDocument": document}},
                "named": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "device"}},
            },
            {"CSR": STRING},
        )
    )
    result = provision(backend, template, {"CSR": csr_pem()})
    generated = policy_name_for_document(document)
    assert len(generated) == 40 and generated.isupper()
    assert set(result.resource_arns) == {"thing", "certificate", "policy"}  # an existing policy gets no entry
    assert result.resource_arns["policy"] == f"arn:aws:iot:us-east-1:{ACCOUNT}:policy/{generated}"
    cert_arn = result.resource_arns["certificate"]
    attached = backend.list_attached_policies(target=cert_arn)["policies"]
    assert sorted(p["policyName"] for p in attached) == sorted([generated, "device"])
    assert backend.describe_certificate(certificateId=result.certificate_id)["certificateDescription"][
        "status"
    ] == ("ACTIVE")
    groups = backend.list_thing_groups_for_thing(thingName="gw-1")["thingGroups"]
    assert [g["groupName"] for g in groups] == ["line-1"]


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ({"ThingTypeName": "nope"}, f"Thing Type {ACCOUNT}:nope not found."),
        ({"ThingGroups": ["nope"]}, f"Thing Group {ACCOUNT}:nope not found."),
    ],
)
def test_missing_prerequisites_fail_like_aws_and_create_nothing(
    backend: IotService, ca: FactoryCa, missing: dict[str, Any], message: str
) -> None:
    template = compile_template(
        body(
            {
                "thing": thing("t-1", **missing),
                "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificatePem": {"Ref": "Pem"}}},
            },
            {"Pem": STRING},
        )
    )
    with pytest.raises(IotError) as exc:
        provision(backend, template, {"Pem": ca.issue("t-1")})
    assert exc.value.code == "ResourceRegistrationFailureException"
    assert exc.value.message == f"Register thing workflow execution terminates due to: {message}"
    assert backend.list_certificates()["certificates"] == []


def _thing_template(overrides: dict[str, str] | None, **props: Any) -> str:
    resource: dict[str, Any] = thing("t-1", **props)
    if overrides is not None:
        resource["OverrideSettings"] = overrides
    return body({"thing": resource})


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (None, {"a": "1", "b": "old"}),  # no OverrideSettings: the existing thing is left alone
        ("DO_NOTHING", {"a": "1", "b": "old"}),
        ("REPLACE", {"b": "new", "c": "3"}),
        ("MERGE", {"a": "1", "b": "new", "c": "3"}),
    ],
)
def test_attribute_payload_overrides(
    backend: IotService, action: str | None, expected: dict[str, str]
) -> None:
    backend.create_thing(thingName="t-1", attributePayload={"attributes": {"a": "1", "b": "old"}})
    overrides = None if action is None else {"AttributePayload": action}
    provision(
        backend, compile_template(_thing_template(overrides, AttributePayload={"b": "new", "c": "3"})), {}
    )
    assert backend.describe_thing(thingName="t-1")["attributes"] == expected


def test_fail_override_refuses_a_different_existing_thing(backend: IotService) -> None:
    backend.create_thing(thingName="t-1", attributePayload={"attributes": {"a": "1"}})
    same = compile_template(_thing_template({"AttributePayload": "FAIL"}, AttributePayload={"a": "1"}))
    provision(backend, same, {})  # identical: nothing conflicts
    different = compile_template(_thing_template({"AttributePayload": "FAIL"}, AttributePayload={"a": "2"}))
    with pytest.raises(IotError) as exc:
        provision(backend, different, {})
    assert exc.value.code == "ResourceRegistrationFailureException"
    assert "ResourceConflictsException" in exc.value.message
    assert backend.describe_thing(thingName="t-1")["attributes"] == {"a": "1"}


@pytest.mark.parametrize(("action", "expected"), [("MERGE", ["line-1", "line-2"]), ("REPLACE", ["line-2"])])
def test_thing_groups_overrides(backend: IotService, action: str, expected: list[str]) -> None:
    backend.create_thing(thingName="t-1")
    backend.add_thing_to_thing_group(thingGroupName="line-1", thingName="t-1")
    provision(backend, compile_template(_thing_template({"ThingGroups": action}, ThingGroups=["line-2"])), {})
    groups = backend.list_thing_groups_for_thing(thingName="t-1")["thingGroups"]
    assert sorted(g["groupName"] for g in groups) == expected


def test_thing_type_replace(backend: IotService) -> None:
    backend.create_thing(thingName="t-1")
    provision(
        backend, compile_template(_thing_template({"ThingTypeName": "REPLACE"}, ThingTypeName="sensor")), {}
    )
    assert backend.describe_thing(thingName="t-1")["thingTypeName"] == "sensor"


@pytest.mark.parametrize(
    ("action", "expected"), [(None, "ACTIVE"), ("REPLACE", "ACTIVE"), ("DO_NOTHING", "INACTIVE")]
)
def test_certificate_status_override(backend: IotService, action: str | None, expected: str) -> None:
    cert_id = backend.create_certificate_from_csr(certificateSigningRequest=csr_pem())["certificateId"]
    resource: dict[str, Any] = {
        "Type": "AWS::IoT::Certificate",
        "Properties": {"CertificateId": {"Ref": "Id"}, "Status": "Active"},
    }
    if action:
        resource["OverrideSettings"] = {"Status": action}
    result = provision(backend, compile_template(body({"cert": resource}, {"Id": STRING})), {"Id": cert_id})
    assert result.certificate_pem is not None
    status = backend.describe_certificate(certificateId=cert_id)["certificateDescription"]["status"]
    assert status == expected


def test_same_certificate_twice_is_reused_not_duplicated(backend: IotService, ca: FactoryCa) -> None:
    template = compile_template(
        body(
            {
                "thing": thing({"Ref": "N"}),
                "cert": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificatePem": {"Ref": "Pem"}}},
            },
            {"N": STRING, "Pem": STRING},
        )
    )
    pem = ca.issue("d")
    first = provision(backend, template, {"N": "d", "Pem": pem})
    second = provision(backend, template, {"N": "d", "Pem": pem})
    assert first.resource_arns == second.resource_arns
    assert len(backend.list_certificates()["certificates"]) == 1


def test_fleet_style_template_uses_the_callers_certificate(backend: IotService) -> None:
    issued = backend.create_certificate_from_csr(
        certificateSigningRequest=csr_pem()
    )  # INACTIVE, like MQTT-made
    template = compile_template(
        body(
            {
                "thing": thing({"Fn::Join": ["", ["fleet_", {"Ref": "SerialNumber"}]]}),
                "certificate": {
                    "Type": "AWS::IoT::Certificate",
                    "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
                },
            },
            {"SerialNumber": STRING, "Location": STRING},
            Mappings={"Urls": {"Seattle": {"Url": "https://example.aws"}}},
            DeviceConfiguration={"LocationUrl": {"Fn::FindInMap": ["Urls", {"Ref": "Location"}, "Url"]}},
        )
    )
    result = provision(
        backend,
        template,
        {"SerialNumber": "42", "Location": "Seattle"},
        certificate_pem=issued["certificatePem"],
    )
    assert result.certificate_id == issued["certificateId"]
    assert result.device_configuration == {"LocationUrl": "https://example.aws"}
    description = backend.describe_certificate(certificateId=issued["certificateId"])[
        "certificateDescription"
    ]
    assert description["status"] == "ACTIVE"
    assert backend.list_thing_principals(thingName="fleet_42")["principals"] == [issued["certificateArn"]]
