"""Hundreds of SDK devices provision at once, per protocol: each gets its own answers, and no one else does.

A plain publish/subscribe broker hands every device's CreateKeysAndCertificate answer (certificate and
private key) to every device subscribed to the accepted topic. Here 100 devices run
CreateKeysAndCertificate + RegisterThing and 100 more CreateCertificateFromCsr + RegisterThing, all
connected at the same time with the same claim, while spies subscribe to every answer topic (and `#`)
and a rogue client publishes a forged answer: every device must receive exactly its two answers, and the
spies nothing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.iot_emulator.conftest import POLICY_NAME, THING_GROUPS, THING_TYPE, Fleet
from tests.iot_emulator.fleet_devices import DeviceConnection, ProvisionedDevice, provision

DEVICES_PER_FLOW = 100
SPY_FILTERS = (
    "#",
    "$aws/#",
    "$aws/certificates/#",
    "$aws/certificates/create/json/accepted",
    "$aws/certificates/create-from-csr/json/accepted",
    "$aws/provisioning-templates/+/provision/json/accepted",
)
CLAIM_SPY_FILTERS = (
    "$aws/certificates/create/json/accepted",
    "$aws/certificates/create-from-csr/json/accepted",
    "$aws/provisioning-templates/SensorFleet/provision/json/accepted",
)
FORGED = json.dumps({"certificateId": "0" * 64, "certificatePem": "forged", "privateKey": "forged"}).encode()


async def _provision_fleet(fleet: Fleet, mqtt5_protocol: bool) -> tuple[list[ProvisionedDevice], list[Any]]:
    endpoint = fleet.endpoint
    spy = await DeviceConnection.open(
        endpoint, fleet.active_certificate(), "spy", mqtt5_protocol=mqtt5_protocol
    )
    claim_spy = await DeviceConnection.open(endpoint, fleet.claim, "claim-spy", mqtt5_protocol=mqtt5_protocol)
    for topic_filter in SPY_FILTERS:
        assert await spy.subscribe(topic_filter) == 1
    for topic_filter in CLAIM_SPY_FILTERS:
        assert await claim_spy.subscribe(topic_filter) == 1
    devices = [
        provision(
            endpoint,
            fleet.claim,
            client_id=f"device-{flow}-{i}",
            template_name=fleet.template_name,
            parameters={"SerialNumber": f"{flow}-{i}"},
            mqtt5_protocol=mqtt5_protocol,
            flow=flow,
        )
        for i in range(DEVICES_PER_FLOW)
        for flow in ("keys", "csr")
    ]
    # A forged answer on the accepted topics, by a client that is not the service, while devices wait.
    forgeries = [spy.publish("$aws/certificates/create/json/accepted", FORGED) for _ in range(5)]
    results = await asyncio.gather(*devices, *forgeries)
    await spy.close()
    await claim_spy.close()
    return [r for r in results if isinstance(r, ProvisionedDevice)], [*spy.received, *claim_spy.received]


def _public_key(pem: str, private: bool = False) -> bytes:
    key = (
        serialization.load_pem_private_key(pem.encode(), None).public_key()
        if private
        else x509.load_pem_x509_certificate(pem.encode()).public_key()
    )
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("mqtt5_protocol", [False, True], ids=["mqtt-3.1.1", "mqtt-5"])
def test_concurrent_devices_each_end_with_their_own_certificate_and_thing(
    fleet: Fleet, fresh_emulator: Any, mqtt5_protocol: bool
) -> None:
    devices, spied = asyncio.run(_provision_fleet(fleet, mqtt5_protocol))

    assert len(devices) == 2 * DEVICES_PER_FLOW
    assert spied == []  # no answer and no forgery reached anyone but its requester
    assert len({d.certificate_id for d in devices}) == len(devices)
    service = fresh_emulator.backend()
    for device in devices:
        flow, serial = device.client_id.split("-", 2)[1], device.client_id.split("-", 1)[1]
        create_topic = "create" if flow == "keys" else "create-from-csr"
        # exactly its own two answers: the certificate, then the thing
        assert [r.topic for r in device.received] == [
            f"$aws/certificates/{create_topic}/json/accepted",
            f"$aws/provisioning-templates/{fleet.template_name}/provision/json/accepted",
        ]
        assert json.loads(device.received[0].payload)["certificateId"] == device.certificate_id
        assert json.loads(device.received[1].payload)["thingName"] == f"sensor-{serial}"
        assert device.thing_name == f"sensor-{serial}"
        assert device.device_configuration == {"Broker": "mqtt.eu.example", "Serial": serial}
        # the certificate is for the key the device holds (its CSR's, or the one it was sent)
        assert _public_key(device.certificate_pem) == _public_key(device.private_key_pem, private=True)
        assert device.reconnected
        with service.lock:
            certificate = service.describe_certificate(certificateId=device.certificate_id)[
                "certificateDescription"
            ]
            thing = service.describe_thing(thingName=device.thing_name)
            principals = service.list_thing_principals(thingName=device.thing_name)["principals"]
            policies = service.list_attached_policies(target=certificate["certificateArn"])["policies"]
            groups = service.list_thing_groups_for_thing(thingName=device.thing_name)["thingGroups"]
        assert certificate["status"] == "ACTIVE"
        assert principals == [certificate["certificateArn"]]
        assert [p["policyName"] for p in policies] == [POLICY_NAME]
        assert sorted(g["groupName"] for g in groups) == sorted(THING_GROUPS)
        assert thing["thingTypeName"] == THING_TYPE
        assert thing["attributes"] == {"serial": serial}
