"""Contract tests over HTTP: bulk thing registration tasks, their progress, cancellation and reports."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from iot_emulator.server import EmulatorServer
from tests.iot_emulator.test_template_engine import FactoryCa

ROLE = "arn:aws:iam::123456789012:role/bulk-registration"
BUCKET = "bulk-input"
JAVA_ERROR = re.compile(
    r"^com\.amazonaws\.services\.iot\.model\.(\w+): (.+) \(Service: AWSIot; Status Code: (\d+); "
    r"Error Code: \1; Request ID: [0-9a-f-]{36}; Proxy: null\)$"
)
TEMPLATE = json.dumps(
    {
        "Parameters": {
            "ThingName": {"Type": "String"},
            "Type": {"Type": "String", "Default": "bulk-sensor"},
            "CertificatePem": {"Type": "String"},
            "CACertificatePem": {"Type": "String"},
        },
        "Resources": {
            "thing": {
                "Type": "AWS::IoT::Thing",
                "Properties": {"ThingName": {"Ref": "ThingName"}, "ThingTypeName": {"Ref": "Type"}},
            },
            "certificate": {
                "Type": "AWS::IoT::Certificate",
                "Properties": {
                    "CertificatePem": {"Ref": "CertificatePem"},
                    "CACertificatePem": {"Ref": "CACertificatePem"},
                    "Status": "ACTIVE",
                },
            },
            "policy": {"Type": "AWS::IoT::Policy", "Properties": {"PolicyName": "bulk-device"}},
        },
    }
)


@pytest.fixture
def ca(fresh_emulator: Any, iot_client: Any, s3_client: Any) -> FactoryCa:
    """On a reset emulator: a registered factory CA, the thing type and policy, the input bucket."""
    ca = FactoryCa(f"Bulk CA {uuid.uuid4().hex[:6]}")
    code = iot_client.get_registration_code()["registrationCode"]
    iot_client.register_ca_certificate(
        caCertificate=ca.pem, verificationCertificate=ca.verification_pem(code), setAsActive=True
    )
    iot_client.create_thing_type(thingTypeName="bulk-sensor")
    document = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "iot:Connect", "Resource": "*"}],
    }
    iot_client.create_policy(policyName="bulk-device", policyDocument=json.dumps(document))
    s3_client.create_bucket(Bucket=BUCKET)
    return ca


def device_lines(ca: FactoryCa, count: int) -> list[bytes]:
    prefix = uuid.uuid4().hex[:8]
    return [
        json.dumps(
            {
                "ThingName": f"bulk-{prefix}-{i}",
                "CertificatePem": ca.issue(f"d{i}"),
                "CACertificatePem": ca.pem,
            }
        ).encode()
        for i in range(count)
    ]


def start(iot_client: Any, s3_client: Any, data: bytes, template: str = TEMPLATE) -> str:
    key = f"input/{uuid.uuid4().hex}.jsonl"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=data)
    return iot_client.start_thing_registration_task(
        templateBody=template, inputFileBucket=BUCKET, inputFileKey=key, roleArn=ROLE
    )["taskId"]


def wait(iot_client: Any, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = iot_client.describe_thing_registration_task(taskId=task_id)
        if task["status"] not in ("InProgress", "Cancelling"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s")


def report(iot_client: Any, task_id: str, report_type: str) -> list[bytes]:
    """Every line of a report, downloaded with a plain HTTP GET of each resource link (no credentials)."""
    paginator = iot_client.get_paginator("list_thing_registration_task_reports")
    lines: list[bytes] = []
    for page in paginator.paginate(taskId=task_id, reportType=report_type):
        assert page["reportType"] == report_type
        for link in page["resourceLinks"]:
            assert re.search(rf"/{task_id}-\d+\?", link)
            with urllib.request.urlopen(link, timeout=10) as response:  # noqa: S310 - loopback emulator
                lines.extend(response.read().splitlines())
    return lines


def line_ends(data: bytes) -> list[int]:
    """Byte offset just after each line (the report's ``offset``)."""
    ends, position = [], 0
    for line in data.splitlines(keepends=True):
        position += len(line)
        ends.append(position)
    return ends


@pytest.fixture
def faults(emulator: Any) -> Iterator[Any]:
    """Set bulk-task faults through the admin route; cleared afterwards."""

    def set_faults(**settings: Any) -> None:
        request = urllib.request.Request(
            f"{emulator.endpoint_url}/_emulator/faults",
            data=json.dumps(settings).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - loopback emulator
            pass

    yield set_faults
    set_faults(reset=True)


def test_bulk_registration_reports_in_aws_format(iot_client: Any, s3_client: Any, ca: FactoryCa) -> None:
    lines = device_lines(ca, 6)
    ghost = json.loads(lines[4])
    ghost["Type"] = "ghost-type"
    lines[4] = json.dumps(ghost).encode()
    lines.insert(2, b"")  # blank line: line 3
    lines.insert(4, b'{"ThingName": ')  # invalid JSON: line 5
    data = b"\n".join(lines) + b"\n"
    task_id = start(iot_client, s3_client, data)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", task_id)

    task = wait(iot_client, task_id)
    assert task["status"] == "Completed"
    assert (task["successCount"], task["failureCount"], task["percentageProgress"]) == (5, 3, 100)
    assert task["templateBody"] == TEMPLATE and task["roleArn"] == ROLE
    assert task["lastModifiedDate"] >= task["creationDate"]

    ends = line_ends(data)
    results = report(iot_client, task_id, "RESULTS")
    errors = report(iot_client, task_id, "ERRORS")
    for raw in results + errors:
        parsed = json.loads(raw)
        assert (
            raw == json.dumps(parsed, separators=(",", ":"), sort_keys=True).encode()
        )  # compact, keys sorted
        assert list(parsed) == ["errorMessage", "lineNumber", "offset", "response"]
        assert parsed["offset"] == ends[parsed["lineNumber"] - 1]

    parsed_results = [json.loads(r) for r in results]
    assert [r["lineNumber"] for r in parsed_results] == [1, 2, 4, 6, 8]
    for row in parsed_results:
        assert row["errorMessage"] is None
        source = json.loads(data.splitlines()[row["lineNumber"] - 1])
        assert row["response"]["CertificatePem"] == source["CertificatePem"]
        arns = row["response"]["ResourceArns"]
        assert set(arns) == {"thing", "certificate"}  # an existing policy named by PolicyName gets no ARN
        assert arns["thing"] == f"arn:aws:iot:us-east-1:123456789012:thing/{source['ThingName']}"
        thing = iot_client.describe_thing(thingName=source["ThingName"])
        assert thing["thingTypeName"] == "bulk-sensor"
        assert iot_client.list_thing_principals(thingName=source["ThingName"])["principals"] == [
            arns["certificate"]
        ]
        policies = iot_client.list_attached_policies(target=arns["certificate"])["policies"]
        assert [p["policyName"] for p in policies] == ["bulk-device"]

    parsed_errors = {json.loads(e)["lineNumber"]: json.loads(e) for e in errors}
    assert sorted(parsed_errors) == [3, 5, 7]
    messages = {}
    for number, row in parsed_errors.items():
        assert row["response"] is None
        match = JAVA_ERROR.match(row["errorMessage"])
        assert match, row["errorMessage"]
        messages[number] = (match.group(1), match.group(2), match.group(3))
    assert messages[3][0] == "InvalidRequestException" and "blank" in messages[3][1]
    assert messages[5][0] == "InvalidRequestException" and "not valid JSON" in messages[5][1]
    assert messages[7] == (
        "ResourceRegistrationFailureException",
        "Register thing workflow execution terminates due to: Thing Type 123456789012:ghost-type not found.",
        "400",
    )
    # The thing of the failed line was not created, nor its certificate registered.
    with pytest.raises(iot_client.exceptions.ResourceNotFoundException):
        iot_client.describe_thing(thingName=ghost["ThingName"])

    assert task_id in iot_client.list_thing_registration_tasks(status="Completed")["taskIds"]


def test_start_validates_template_and_input(iot_client: Any, s3_client: Any, ca: FactoryCa) -> None:
    broken = TEMPLATE.replace('{"Ref": "ThingName"}', '{"Ref": "Name"}')
    with pytest.raises(iot_client.exceptions.InvalidRequestException) as bad_template:
        start(iot_client, s3_client, b"{}\n", template=broken)
    assert "Resources.thing.Properties.ThingName: Ref 'Name' is not a declared parameter" in str(
        bad_template.value
    )

    with pytest.raises(iot_client.exceptions.InvalidRequestException) as missing:
        iot_client.start_thing_registration_task(
            templateBody=TEMPLATE, inputFileBucket=BUCKET, inputFileKey="nope.jsonl", roleArn=ROLE
        )
    assert f"s3://{BUCKET}/nope.jsonl" in str(missing.value)

    with pytest.raises(iot_client.exceptions.ResourceNotFoundException):
        iot_client.describe_thing_registration_task(taskId=str(uuid.uuid4()))
    with pytest.raises(iot_client.exceptions.InvalidRequestException):
        iot_client.list_thing_registration_task_reports(taskId=str(uuid.uuid4()), reportType="RESULTS")


def test_progress_one_task_at_a_time_and_stop(
    iot_client: Any, s3_client: Any, ca: FactoryCa, faults: Any, emulator: Any
) -> None:
    faults(task_line_delay=0.05)
    data = b"\n".join(device_lines(ca, 40)) + b"\n"
    task_id = start(iot_client, s3_client, data)

    deadline = time.monotonic() + 20
    while True:
        task = iot_client.describe_thing_registration_task(taskId=task_id)
        if task["successCount"] >= 3:
            break
        assert time.monotonic() < deadline, task
        time.sleep(0.05)
    assert task["status"] == "InProgress"
    assert 0 < task["percentageProgress"] < 100
    assert task["percentageProgress"] == task["successCount"] * 100 // 40

    once = emulator.client(
        "iot", config=Config(retries={"max_attempts": 1, "mode": "standard"})
    )  # botocore's standard mode would retry LimitExceeded 3 times
    with pytest.raises(ClientError) as second:
        start(once, s3_client, data)
    assert second.value.response["Error"]["Code"] == "LimitExceededException"
    assert (
        "only one bulk registration task can be in progress at a time"
        in second.value.response["Error"]["Message"]
    )

    iot_client.stop_thing_registration_task(taskId=task_id)
    assert iot_client.describe_thing_registration_task(taskId=task_id)["status"] in (
        "Cancelling",
        "Cancelled",
    )
    task = wait(iot_client, task_id)
    assert task["status"] == "Cancelled"
    assert 3 <= task["successCount"] < 40
    assert len(report(iot_client, task_id, "RESULTS")) == task["successCount"]
    with pytest.raises(iot_client.exceptions.InvalidRequestException):
        iot_client.stop_thing_registration_task(taskId=task_id)
    assert task_id in iot_client.list_thing_registration_tasks(status="Cancelled")["taskIds"]


def test_forced_line_failures(iot_client: Any, s3_client: Any, ca: FactoryCa, faults: Any) -> None:
    faults(fail_lines=[2, 3])
    data = b"\n".join(device_lines(ca, 4)) + b"\n"
    task = wait(iot_client, start(iot_client, s3_client, data))
    assert (task["status"], task["successCount"], task["failureCount"]) == ("Completed", 2, 2)
    errors = [json.loads(e) for e in report(iot_client, task["taskId"], "ERRORS")]
    assert [e["lineNumber"] for e in errors] == [2, 3]
    assert all("Error Code: ThrottlingException" in e["errorMessage"] for e in errors)


def test_list_tasks_paginates(iot_client: Any, s3_client: Any, ca: FactoryCa) -> None:
    ids = [wait(iot_client, start(iot_client, s3_client, b""))["taskId"] for _ in range(3)]
    pages = list(
        iot_client.get_paginator("list_thing_registration_tasks").paginate(PaginationConfig={"PageSize": 2})
    )
    listed = [task_id for page in pages for task_id in page["taskIds"]]
    assert all(len(page["taskIds"]) <= 2 for page in pages) and len(pages) >= 2
    assert listed == ids[::-1]  # newest first
    assert len(listed) == len(set(listed))


def test_interrupted_task_resumes_after_restart(fresh_emulator: Any, tmp_path: Any) -> None:
    first = EmulatorServer("127.0.0.1", 0, state_dir=tmp_path).start()
    try:
        iot, s3 = _clients(first)
        ca = FactoryCa("Restart CA")
        code = iot.get_registration_code()["registrationCode"]
        iot.register_ca_certificate(
            caCertificate=ca.pem, verificationCertificate=ca.verification_pem(code), setAsActive=True
        )
        iot.create_thing_type(thingTypeName="bulk-sensor")
        document = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "iot:*", "Resource": "*"}],
        }
        iot.create_policy(policyName="bulk-device", policyDocument=json.dumps(document))
        s3.create_bucket(Bucket=BUCKET)
        first.faults.update({"task_line_delay": 0.02})
        task_id = start(iot, s3, b"\n".join(device_lines(ca, 30)) + b"\n")
        deadline = time.monotonic() + 20
        while iot.describe_thing_registration_task(taskId=task_id)["successCount"] < 5:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        before = iot.describe_thing_registration_task(taskId=task_id)
        assert before["status"] == "InProgress" and before["successCount"] < 30
    finally:
        first.stop()  # workers stop at their next line; the task stays InProgress in the saved state

    second = EmulatorServer("127.0.0.1", 0, state_dir=tmp_path).start()
    try:
        iot, _ = _clients(second)
        task = wait(iot, task_id)
        assert (task["status"], task["successCount"], task["failureCount"]) == ("Completed", 30, 0)
        numbers = [json.loads(line)["lineNumber"] for line in report(iot, task_id, "RESULTS")]
        assert numbers == list(range(1, 31))  # every line reported exactly once across the restart
    finally:
        second.stop()


def _clients(server: EmulatorServer) -> tuple[Any, Any]:
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    return (
        session.client("iot", endpoint_url=server.endpoint_url),
        session.client("s3", endpoint_url=server.endpoint_url),
    )


def test_big_reports_are_split_into_numbered_parts(
    iot_client: Any, s3_client: Any, ca: FactoryCa, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("iot_emulator.bulk_runner.PART_LINES", 2)  # the emulator runs in this process
    task_id = start(iot_client, s3_client, b"\n".join(device_lines(ca, 5)) + b"\n")
    assert wait(iot_client, task_id)["status"] == "Completed"
    first = iot_client.list_thing_registration_task_reports(
        taskId=task_id, reportType="RESULTS", maxResults=2
    )
    assert len(first["resourceLinks"]) == 2 and first["nextToken"]
    rest = iot_client.list_thing_registration_task_reports(
        taskId=task_id, reportType="RESULTS", nextToken=first["nextToken"]
    )
    links = first["resourceLinks"] + rest["resourceLinks"]
    assert "nextToken" not in rest
    assert [re.search(rf"/{task_id}-(\d+)\?", link).group(1) for link in links] == ["1", "2", "3"]  # type: ignore[union-attr]
    numbers = [json.loads(line)["lineNumber"] for line in report(iot_client, task_id, "RESULTS")]
    assert numbers == [1, 2, 3, 4, 5]
    assert (
        iot_client.list_thing_registration_task_reports(taskId=task_id, reportType="ERRORS")["resourceLinks"]
        == []
    )
