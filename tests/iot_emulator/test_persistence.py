"""--state-dir: IoT, S3 and SQS state survive a restart; an interrupted bulk task resumes; reset clears it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.core.base_backend import BackendDict

from iot_emulator.persistence import atomic_write
from iot_emulator.server import EmulatorServer

THING_TEMPLATE = json.dumps(
    {
        "Parameters": {"ThingName": {"Type": "String"}},
        "Resources": {
            "thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": {"Ref": "ThingName"}}}
        },
    }
)
ROLE = "arn:aws:iam::123456789012:role/provisioning"


def client(server: EmulatorServer, service: str) -> Any:
    return boto3.session.Session().client(
        service,
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def servers(fresh_emulator: Any, tmp_path: Path) -> Iterator[Callable[[], EmulatorServer]]:
    """Start emulators on one state dir; ``restart`` semantics: stop the last, forget moto, start anew."""
    started: list[EmulatorServer] = []

    def start() -> EmulatorServer:
        if started and started[-1] is not None:
            started[-1].stop()
            BackendDict.reset()  # what a new process would start from: nothing but the state dir
        server = EmulatorServer("127.0.0.1", 0, state_dir=tmp_path / "state").start()
        started.append(server)
        return server

    yield start
    started[-1].stop()
    fresh_emulator.reset()  # moto is process-global: leave the session emulator clean


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_things_certificates_templates_objects_and_queues_survive_a_restart(servers: Any) -> None:
    first = servers()
    iot, s3, sqs = client(first, "iot"), client(first, "s3"), client(first, "sqs")
    thing = iot.create_thing(thingName="kept-thing", attributePayload={"attributes": {"line": "7"}})
    cert = iot.create_keys_and_certificate(setAsActive=True)
    iot.create_provisioning_template(
        templateName="kept-template", templateBody=THING_TEMPLATE, provisioningRoleArn=ROLE, enabled=True
    )
    s3.create_bucket(Bucket="kept-bucket")
    s3.put_object(
        Bucket="kept-bucket", Key="inbox/batch 1.csv", Body=b"serial_number,model\n", ContentType="text/csv"
    )
    queue_url = sqs.create_queue(QueueName="kept-queue", Attributes={"VisibilityTimeout": "45"})["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody="object created")

    second = servers()
    iot, s3, sqs = client(second, "iot"), client(second, "s3"), client(second, "sqs")
    described = iot.describe_thing(thingName="kept-thing")
    assert (described["thingArn"], described["attributes"]) == (thing["thingArn"], {"line": "7"})
    kept_cert = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]
    assert (kept_cert["status"], kept_cert["certificatePem"]) == ("ACTIVE", cert["certificatePem"])
    assert iot.describe_provisioning_template(templateName="kept-template")["templateBody"] == THING_TEMPLATE
    obj = s3.get_object(Bucket="kept-bucket", Key="inbox/batch 1.csv")
    assert obj["Body"].read() == b"serial_number,model\n"
    assert obj["ContentType"] == "text/csv"
    queue_url = sqs.get_queue_url(QueueName="kept-queue")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["VisibilityTimeout"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "45"
    assert sqs.receive_message(QueueUrl=queue_url)["Messages"][0]["Body"] == "object created"


def test_deleted_objects_stay_deleted(servers: Any) -> None:
    first = servers()
    s3 = client(first, "s3")
    s3.create_bucket(Bucket="churn")
    s3.put_object(Bucket="churn", Key="gone", Body=b"1")
    s3.put_object(Bucket="churn", Key="kept", Body=b"2")
    first.save_now()
    s3.delete_object(Bucket="churn", Key="gone")
    s3.put_object(Bucket="churn", Key="kept", Body=b"3")

    s3 = client(servers(), "s3")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="churn")["Contents"]] == ["kept"]
    assert s3.get_object(Bucket="churn", Key="kept")["Body"].read() == b"3"


def test_mutations_are_saved_soon_without_a_shutdown(servers: Any, tmp_path: Path) -> None:
    server = servers()
    client(server, "iot").create_thing(thingName="debounced")
    state = tmp_path / "state" / "iot" / "123456789012-us-east-1.json"
    wait_for(state.exists, timeout=5)


def test_an_interrupted_bulk_task_resumes_after_a_restart(servers: Any) -> None:
    first = servers()
    first.faults.update({"task_line_delay": 0.05})
    iot, s3 = client(first, "iot"), client(first, "s3")
    s3.create_bucket(Bucket="bulk-input")
    lines = b"".join(json.dumps({"ThingName": f"resumed-{n}"}).encode() + b"\n" for n in range(1, 31))
    s3.put_object(Bucket="bulk-input", Key="params.jsonl", Body=lines)
    task_id = iot.start_thing_registration_task(
        templateBody=THING_TEMPLATE, inputFileBucket="bulk-input", inputFileKey="params.jsonl", roleArn=ROLE
    )["taskId"]
    wait_for(lambda: iot.describe_thing_registration_task(taskId=task_id)["successCount"] >= 3)

    iot = client(servers(), "iot")
    wait_for(lambda: iot.describe_thing_registration_task(taskId=task_id)["status"] == "Completed")
    task = iot.describe_thing_registration_task(taskId=task_id)
    assert (task["successCount"], task["failureCount"], task["percentageProgress"]) == (30, 0, 100)
    names = {t["thingName"] for t in iot.list_things(maxResults=250)["things"]}
    assert names == {f"resumed-{n}" for n in range(1, 31)}


def test_admin_reset_clears_the_state_dir(servers: Any, tmp_path: Path) -> None:
    server = servers()
    client(server, "iot").create_thing(thingName="to-clear")
    server.save_now()
    assert list((tmp_path / "state" / "iot").glob("*.json"))
    server.reset()
    assert not (tmp_path / "state" / "iot").exists()
    iot = client(server, "iot")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="to-clear")


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "state.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["state.bin"]


def test_bucket_notifications_survive_a_restart(servers: Any) -> None:
    first = servers()
    sqs, s3 = client(first, "sqs"), client(first, "s3")
    queue_url = sqs.create_queue(QueueName="kept-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.create_bucket(Bucket="kept-inbox")
    s3.put_bucket_notification_configuration(
        Bucket="kept-inbox",
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    sqs.purge_queue(QueueUrl=queue_url)

    second = servers()
    sqs, s3 = client(second, "sqs"), client(second, "s3")
    s3.put_object(Bucket="kept-inbox", Key="after-restart.csv", Body=b"x")
    queue_url = sqs.get_queue_url(QueueName="kept-events")["QueueUrl"]
    bodies = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=queue_url)["Messages"]]
    assert [r["s3"]["object"]["key"] for b in bodies for r in b.get("Records", [])] == ["after-restart.csv"]
