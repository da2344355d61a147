"""Fleet provisioning's device operations on the service: connecting, ownership tokens, their state."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from iot_emulator.errors import IotError
from iot_emulator.fleet_provisioning import DevicePrincipal
from iot_emulator.service import IotService, in_memory_service
from iot_emulator.state import IotState
from tests.iot_emulator.conftest import FLEET_TEMPLATE, ROLE_ARN
from tests.iot_emulator.fleet_devices import credentials_of, make_certificate, new_csr


@pytest.fixture
def iot() -> IotService:
    service = in_memory_service()
    service.create_policy(
        policyName="SensorPolicy",
        policyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
        ),
    )
    service.create_thing_type(thingTypeName="sensor")
    for group in ("fleet", "line-a"):
        service.create_thing_group(thingGroupName=group)
    service.create_provisioning_template(
        templateName="SensorFleet",
        templateBody=json.dumps(FLEET_TEMPLATE),
        provisioningRoleArn=ROLE_ARN,
        enabled=True,
    )
    return service


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)


def _later(service: IotService, seconds: float) -> None:
    service.clock = lambda: time.time() + seconds


def test_who_may_connect(iot: IotService) -> None:
    claim = iot.create_provisioning_claim(templateName="SensorFleet")
    active = iot.create_keys_and_certificate(setAsActive=True)
    inactive = iot.create_keys_and_certificate(setAsActive=False)
    principal = iot.authenticate_device(_der(claim["certificatePem"]))
    assert principal == DevicePrincipal(claim["certificateId"], claim_template="SensorFleet")
    assert iot.authenticate_device(_der(active["certificatePem"])) == DevicePrincipal(active["certificateId"])
    for refused in (inactive["certificatePem"], iot.fleet_create_keys_and_certificate()["certificatePem"]):
        with pytest.raises(IotError, match="not ACTIVE"):
            iot.authenticate_device(_der(refused))
    with pytest.raises(IotError, match="not registered"):
        iot.authenticate_device(b"unknown")
    _later(iot, 301)
    with pytest.raises(IotError, match="expired"):
        iot.authenticate_device(_der(claim["certificatePem"]))


def test_certificates_wait_for_register_thing_and_tokens_are_kept_hashed(iot: IotService) -> None:
    created = iot.fleet_create_keys_and_certificate()
    token = created["certificateOwnershipToken"]
    record = iot.describe_certificate(certificateId=created["certificateId"])["certificateDescription"]
    assert record["status"] == "PENDING_ACTIVATION"
    saved = json.dumps(iot.state.to_document())
    assert token not in saved and created["privateKey"] not in saved  # the state holds neither secret
    assert hashlib.sha256(token.encode()).hexdigest() in iot.state.certificate_ownership_tokens
    request = {"certificateOwnershipToken": token, "parameters": {"SerialNumber": "s1"}}
    registration = iot.fleet_register_thing_request("SensorFleet", request, DevicePrincipal("c" * 64))
    assert iot.fleet_register_thing(registration) == {
        "deviceConfiguration": {"Broker": "mqtt.eu.example", "Serial": "s1"},
        "thingName": "sensor-s1",
    }
    record = iot.describe_certificate(certificateId=created["certificateId"])["certificateDescription"]
    assert record["status"] == "ACTIVE"
    assert iot.state.certificate_ownership_tokens == {}  # spent


def test_expired_tokens_take_their_unused_certificates_with_them(iot: IotService) -> None:
    unused = iot.fleet_create_keys_and_certificate()
    attached = iot.fleet_create_keys_and_certificate()
    iot.create_thing(thingName="kept")
    iot.attach_thing_principal(thingName="kept", principal=iot.arn(f"cert/{attached['certificateId']}"))
    _later(iot, 3601)
    iot.fleet_create_certificate_from_csr(new_csr()[0])  # any new token sweeps the expired ones
    assert unused["certificateId"] not in iot.state.certificates  # AWS IoT deletes it
    assert attached["certificateId"] in iot.state.certificates
    assert len(iot.state.certificate_ownership_tokens) == 1


def test_state_of_version_1_loads_without_tokens() -> None:
    document: dict[str, Any] = {**IotState().to_document(), "version": 1}
    del document["certificate_ownership_tokens"]
    assert IotState.from_document(document).certificate_ownership_tokens == {}


def test_trust_anchors_are_every_issuer_a_device_may_have(iot: IotService) -> None:
    added: list[str] = []
    iot.on_trust_anchor = added.append
    own = credentials_of(*make_certificate("self-signed")).certificate_pem
    iot.register_certificate_without_ca(certificatePem=own, status="ACTIVE")
    assert added == [own]
    anchors = iot.device_trust_anchors()
    assert own in anchors and len(anchors) == 3  # and the stand-in Amazon and claim CAs
