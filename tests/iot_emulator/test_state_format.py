"""The state dir's files: IoT state as versioned JSON that round-trips, upgrades, and pickles never loaded."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core.base_backend import BackendDict

from iot_emulator import state as state_module
from iot_emulator.persistence import StateDirError, StateFileTooNew
from iot_emulator.server import EmulatorServer
from iot_emulator.state import STATE_VERSION, IotState, StateFormatError, StateTooNew
from tests.iot_emulator.test_template_engine import FactoryCa

ROLE = "arn:aws:iam::123456789012:role/provisioning"
TEMPLATE = json.dumps(
    {
        "Parameters": {"ThingName": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}
        },
    }
)
POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}]}
)


def iot_client(server: EmulatorServer, region: str = "us-east-1") -> Any:
    return boto3.session.Session().client(
        "iot",
        endpoint_url=server.endpoint_url,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def servers(fresh_emulator: Any, state_dir: Path) -> Iterator[Callable[[], EmulatorServer]]:
    """Emulators on one state dir; each start stops the previous one and forgets moto, as a new process."""
    started: list[EmulatorServer] = []

    def start() -> EmulatorServer:
        if started:
            started[-1].stop()
            BackendDict.reset()
        server = EmulatorServer("127.0.0.1", 0, state_dir=state_dir).start()
        started.append(server)
        return server

    yield start
    if started:
        started[-1].stop()
    fresh_emulator.reset()  # moto is process-global: leave the session emulator clean


def everything(iot: Any) -> dict[str, Any]:
    """What the registry says about the resources ``populate`` made (timestamps included)."""
    cert_id = iot.list_certificates()["certificates"][0]["certificateId"]
    ca_id = iot.list_ca_certificates()["certificates"][0]["certificateId"]
    return {
        "thing": iot.describe_thing(thingName="kept"),
        "type": iot.describe_thing_type(thingTypeName="kept-type"),
        "child": iot.describe_thing_group(thingGroupName="kept-child"),
        "groups": iot.list_thing_groups_for_thing(thingName="kept")["thingGroups"],
        "in_group": iot.list_things_in_thing_group(thingGroupName="kept-child")["things"],
        "billing": iot.describe_billing_group(billingGroupName="kept-billing"),
        "policy": iot.get_policy(policyName="kept-policy"),
        "targets": iot.list_targets_for_policy(policyName="kept-policy")["targets"],
        "principals": iot.list_thing_principals(thingName="kept")["principals"],
        "cert": iot.describe_certificate(certificateId=cert_id)["certificateDescription"],
        "ca": iot.describe_ca_certificate(certificateId=ca_id)["certificateDescription"],
        "template": iot.describe_provisioning_template(templateName="kept-template"),
        "versions": iot.list_provisioning_template_versions(templateName="kept-template")["versions"],
        "version 2": iot.describe_provisioning_template_version(templateName="kept-template", versionId=2),
    }


def populate(iot: Any) -> None:
    ca = FactoryCa("Kept CA")
    code = iot.get_registration_code()["registrationCode"]
    iot.register_ca_certificate(
        caCertificate=ca.pem, verificationCertificate=ca.verification_pem(code), setAsActive=True
    )
    cert_arn = iot.register_certificate(certificatePem=ca.issue("kept"), setAsActive=True)["certificateArn"]
    iot.create_thing_type(thingTypeName="kept-type", thingTypeProperties={"searchableAttributes": ["a"]})
    iot.create_thing_group(thingGroupName="kept-root")
    iot.create_thing_group(thingGroupName="kept-child", parentGroupName="kept-root")
    iot.create_billing_group(billingGroupName="kept-billing")
    iot.create_thing(
        thingName="kept",
        thingTypeName="kept-type",
        attributePayload={"attributes": {"a": "1"}},
        billingGroupName="kept-billing",
    )
    iot.add_thing_to_thing_group(thingGroupName="kept-child", thingName="kept")
    iot.create_policy(policyName="kept-policy", policyDocument=POLICY)
    iot.attach_policy(policyName="kept-policy", target=cert_arn)
    iot.attach_thing_principal(thingName="kept", principal=cert_arn)
    iot.create_provisioning_template(
        templateName="kept-template", templateBody=TEMPLATE, provisioningRoleArn=ROLE, enabled=True
    )
    iot.create_provisioning_template_version(templateName="kept-template", templateBody=TEMPLATE)


def test_the_state_is_versioned_json_and_every_collection_round_trips(servers: Any, state_dir: Path) -> None:
    first = servers()
    iot = iot_client(first)
    populate(iot)
    iot.create_provisioning_claim(templateName="kept-template")
    before = everything(iot)
    first.save_now()

    saved = json.loads((state_dir / "iot" / "123456789012-us-east-1.json").read_bytes())
    assert saved["version"] == STATE_VERSION
    assert (saved["account_id"], saved["region"]) == ("123456789012", "us-east-1")
    assert list(saved["things"]) == ["kept"] and len(saved["provisioning_claims"]) == 1
    assert list(saved["provisioning_templates"]["kept-template"]["versions"]) == ["1", "2"]

    iot = iot_client(servers())
    for name, value in everything(iot).items():
        if isinstance(value, dict):
            value.pop("ResponseMetadata", None)
            before[name].pop("ResponseMetadata", None)
        assert value == before[name], name


def test_a_pickle_left_by_an_older_emulator_is_ignored_and_never_unpickled(
    servers: Any, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = state_dir.parent / "unpickled"

    class Trap:  # what a hostile state file could do when unpickled
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    (state_dir / "iot").mkdir(parents=True)
    (state_dir / "iot" / "123456789012-us-east-1.pickle").write_bytes(pickle.dumps(Trap()))
    with caplog.at_level(logging.WARNING, logger="iot_emulator"):
        server = servers()
    assert not marker.exists()
    lines = [r.getMessage() for r in caplog.records if "pickle" in r.getMessage()]
    assert len(lines) == 1 and "123456789012-us-east-1.pickle" in lines[0]
    assert "never loaded" in lines[0] and "runs code" in lines[0]
    assert iot_client(server).list_things()["things"] == []


def test_a_pickled_bucket_notification_is_ignored_with_one_line(
    servers: Any, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (state_dir / "s3").mkdir(parents=True)
    index = {"old-inbox": {"region": "us-east-1", "objects": {}, "notification": pickle.dumps({}).hex()}}
    (state_dir / "s3" / "index.json").write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="iot_emulator"):
        server = servers()
    assert [r for r in caplog.records if "old-inbox" in r.getMessage() and "pickle" in r.getMessage()]
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["old-inbox"]  # the bucket itself is kept


def test_a_state_file_of_a_newer_emulator_stops_the_start(fresh_emulator: Any, state_dir: Path) -> None:
    (state_dir / "iot").mkdir(parents=True)
    path = state_dir / "iot" / "123456789012-us-east-1.json"
    path.write_text(json.dumps({"version": STATE_VERSION + 1, "things": {}}))
    with pytest.raises(StateFileTooNew) as raised:
        EmulatorServer("127.0.0.1", 0, state_dir=state_dir)
    assert isinstance(raised.value, StateDirError)  # the command line prints it and exits 2
    assert str(path) in str(raised.value) and "use a newer emulator" in str(raised.value)
    assert json.loads(path.read_text())["version"] == STATE_VERSION + 1  # left as it was
    path.unlink()
    EmulatorServer("127.0.0.1", 0, state_dir=state_dir).stop()  # the failed start released the dir's lock


def test_an_unreadable_state_file_is_set_aside_not_overwritten(
    servers: Any, state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (state_dir / "iot").mkdir(parents=True)
    path = state_dir / "iot" / "123456789012-us-east-1.json"
    path.write_text('{"version": 1, "things": ')
    with caplog.at_level(logging.ERROR, logger="iot_emulator"):
        server = servers()
    assert (state_dir / "iot" / "123456789012-us-east-1.json.unreadable").read_text().startswith('{"version"')
    assert "could not load IoT state" in caplog.text and "Traceback" not in caplog.text
    iot_client(server).create_thing(thingName="fresh")
    server.save_now()
    assert list(json.loads(path.read_bytes())["things"]) == ["fresh"]


def test_older_versions_are_upgraded_step_by_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def v1_to_v2(document: dict[str, Any]) -> dict[str, Any]:
        return {
            **document,
            "things": {name: {**t, "upgraded": True} for name, t in document["things"].items()},
        }

    monkeypatch.setattr(state_module, "STATE_VERSION", 2)
    monkeypatch.setattr(state_module, "_UPGRADES", {1: v1_to_v2})
    loaded = IotState.from_document(
        {"version": 1, "region": "eu-west-1", "things": {"t": {"thingName": "t"}}}
    )
    assert loaded.region == "eu-west-1"
    assert loaded.things == {"t": {"thingName": "t", "upgraded": True}}
    assert loaded.to_document()["version"] == 2


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ([], StateFormatError),
        ({"things": {}}, StateFormatError),
        ({"version": "1"}, StateFormatError),
        ({"version": True}, StateFormatError),
        ({"version": STATE_VERSION + 1}, StateTooNew),
    ],
)
def test_documents_that_cannot_be_loaded(document: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        IotState.from_document(document)


def test_bucket_notifications_are_saved_as_json(servers: Any, state_dir: Path) -> None:
    server = servers()
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    sqs = session.client("sqs", endpoint_url=server.endpoint_url)
    s3 = session.client("s3", endpoint_url=server.endpoint_url)
    queue_url = sqs.create_queue(QueueName="json-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.create_bucket(Bucket="json-inbox")
    rule = {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inbox/"}]}}
    s3.put_bucket_notification_configuration(
        Bucket="json-inbox",
        NotificationConfiguration={
            "QueueConfigurations": [
                {"Id": "inbox", "QueueArn": arn, "Events": ["s3:ObjectCreated:*"], "Filter": rule}
            ]
        },
    )
    server.save_now()
    entry = json.loads((state_dir / "s3" / "index.json").read_bytes())["json-inbox"]
    assert "notification" not in entry
    queue = entry["notificationConfiguration"]["QueueConfiguration"]
    assert [(q["Id"], q["Queue"], q["Event"]) for q in queue] == [("inbox", arn, ["s3:ObjectCreated:*"])]

    s3 = boto3.session.Session().client(
        "s3", endpoint_url=servers().endpoint_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    restored = s3.get_bucket_notification_configuration(Bucket="json-inbox")["QueueConfigurations"]
    assert [(q["Id"], q["QueueArn"], q["Events"]) for q in restored] == [
        ("inbox", arn, ["s3:ObjectCreated:*"])
    ]
    assert restored[0]["Filter"]["Key"]["FilterRules"] == [{"Name": "prefix", "Value": "inbox/"}]
