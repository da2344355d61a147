"""Fleet provisioning fixtures: a fleet template with its policy, groups and type, a claim, the endpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.iot_emulator.fleet_devices import Credentials, Endpoint

TEMPLATE_NAME = "SensorFleet"
POLICY_NAME = "SensorPolicy"
THING_GROUPS = ("fleet", "line-a")
THING_TYPE = "sensor"
ROLE_ARN = "arn:aws:iam::123456789012:role/fleet-provisioning"
POLICY_DOCUMENT = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["iot:Connect", "iot:Publish"], "Resource": "*"}],
}
# The fleet template language as AWS documents it: Mappings, DeviceConfiguration, the certificate the
# device made over MQTT by AWS::IoT::Certificate::Id, and a thing with type, groups and attributes.
FLEET_TEMPLATE = {
    "Parameters": {
        "SerialNumber": {"Type": "String"},
        "Site": {"Type": "String", "Default": "eu"},
        "AWS::IoT::Certificate::Id": {"Type": "String"},
    },
    "Mappings": {"Sites": {"eu": {"Broker": "mqtt.eu.example"}, "us": {"Broker": "mqtt.us.example"}}},
    "Resources": {
        "thing": {
            "Type": "AWS::IoT::Thing",
            "Properties": {
                "ThingName": {"Fn::Join": ["", ["sensor-", {"Ref": "SerialNumber"}]]},
                "ThingTypeName": THING_TYPE,
                "ThingGroups": list(THING_GROUPS),
                "AttributePayload": {"serial": {"Ref": "SerialNumber"}},
            },
        },
        "certificate": {
            "Type": "AWS::IoT::Certificate",
            "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"}, "Status": "Active"},
        },
        "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": POLICY_NAME}},
    },
    "DeviceConfiguration": {
        "Broker": {"Fn::FindInMap": ["Sites", {"Ref": "Site"}, "Broker"]},
        "Serial": {"Ref": "SerialNumber"},
    },
}


@dataclass
class Fleet:
    """A fleet provisioning set-up on the emulator: its control-plane client, endpoint and one claim."""

    iot: Any
    endpoint: Endpoint
    template_name: str
    claim: Credentials

    def new_claim(self, template_name: str | None = None) -> Credentials:
        claim = self.iot.create_provisioning_claim(templateName=template_name or self.template_name)
        return Credentials(claim["certificatePem"], claim["keyPair"]["PrivateKey"])

    def active_certificate(self) -> Credentials:
        """A device certificate made on the control plane, ACTIVE: not a claim."""
        made = self.iot.create_keys_and_certificate(setAsActive=True)
        return Credentials(made["certificatePem"], made["keyPair"]["PrivateKey"])

    def create_template(self, name: str, body: dict[str, Any], **kwargs: Any) -> None:
        self.iot.create_provisioning_template(
            templateName=name,
            templateBody=json.dumps(body),
            provisioningRoleArn=ROLE_ARN,
            enabled=kwargs.pop("enabled", True),
            **kwargs,
        )


@pytest.fixture
def fleet(fresh_emulator: Any) -> Fleet:
    iot = fresh_emulator.client("iot")
    iot.create_policy(policyName=POLICY_NAME, policyDocument=json.dumps(POLICY_DOCUMENT))
    iot.create_thing_type(thingTypeName=THING_TYPE)
    for group in THING_GROUPS:
        iot.create_thing_group(thingGroupName=group)
    host = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    endpoint = Endpoint(host, fresh_emulator.mqtt_port, fresh_emulator.mqtt_root_ca.read_bytes())
    setup = Fleet(iot, endpoint, TEMPLATE_NAME, Credentials("", ""))
    setup.create_template(TEMPLATE_NAME, FLEET_TEMPLATE)
    setup.claim = setup.new_claim()
    return setup
