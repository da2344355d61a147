"""The endpoint: health, dispatch by SigV4 service (IoT vs moto), admin reset, presigned links."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from botocore.exceptions import ClientError

from iot_emulator.server import credential_scope

ROOT = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_health_answers_json(emulator):
    status, body = _get(emulator.endpoint_url + "/_emulator/health")
    assert status == 200
    assert json.loads(body)["status"] == "ok"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_command_line_serves_within_three_seconds_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "iot_emulator", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while True:
            try:
                status, _ = _get(f"http://127.0.0.1:{port}/_emulator/health")
                break
            except OSError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() - started < 3, "not ready within 3 s"
                time.sleep(0.05)
        assert status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


def test_credential_scope_from_header_and_presigned_query():
    header = {"HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AK/20240101/eu-west-1/iot/aws4_request, X=1"}
    assert credential_scope(header) == ("iot", "eu-west-1")
    query = {"QUERY_STRING": "X-Amz-Credential=AK%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=1"}
    assert credential_scope(query) == ("s3", "us-east-1")
    assert credential_scope({}) == (None, None)


def test_iot_and_s3_share_one_endpoint(fresh_emulator, iot_client, s3_client):
    iot_client.create_thing(thingName="dispatch-1")
    s3_client.create_bucket(Bucket="dispatch-bucket")
    s3_client.put_object(Bucket="dispatch-bucket", Key="things/dispatch-1.json", Body=b"{}")
    assert iot_client.describe_thing(thingName="dispatch-1")["thingName"] == "dispatch-1"
    listed = s3_client.list_objects_v2(Bucket="dispatch-bucket")["Contents"]
    assert [o["Key"] for o in listed] == ["things/dispatch-1.json"]


def test_sqs_goes_to_moto(fresh_emulator, aws_client):
    sqs = aws_client("sqs")
    url = sqs.create_queue(QueueName="inbox-events")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)["Messages"]
    assert messages[0]["Body"] == "hello"


def test_iot_regions_are_separate(fresh_emulator, aws_client):
    aws_client("iot", region="us-east-1").create_thing(thingName="east-only")
    west = aws_client("iot", region="eu-west-1")
    with pytest.raises(west.exceptions.ResourceNotFoundException):
        west.describe_thing(thingName="east-only")
    assert fresh_emulator.backend(region="eu-west-1").region == "eu-west-1"


def test_presigned_link_downloads_without_credentials(fresh_emulator, s3_client):
    s3_client.create_bucket(Bucket="links")
    s3_client.put_object(Bucket="links", Key="reports/a b+c.jsonl", Body=b'{"lineNumber":1}\n')
    url = fresh_emulator.server.s3.presigned_get_url("links", "reports/a b+c.jsonl")
    assert url.startswith(fresh_emulator.endpoint_url + "/links/")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url
    assert _get(url) == (200, b'{"lineNumber":1}\n')


def test_s3_store_reads_and_writes_moto_objects(fresh_emulator, s3_client):
    store = fresh_emulator.server.s3
    s3_client.create_bucket(Bucket="store-bucket")
    store.put_object("store-bucket", "in/params.jsonl", b"line\n")
    assert s3_client.get_object(Bucket="store-bucket", Key="in/params.jsonl")["Body"].read() == b"line\n"
    with pytest.raises(Exception) as missing:
        store.get_object("store-bucket", "nope.jsonl")
    assert missing.value.code == "InvalidRequestException"
    assert "s3://store-bucket/nope.jsonl" in missing.value.message


def test_admin_reset_forgets_iot_and_s3(emulator, iot_client, s3_client):
    iot_client.create_thing(thingName="to-forget")
    s3_client.create_bucket(Bucket="to-forget")
    request = urllib.request.Request(emulator.endpoint_url + "/_emulator/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    with pytest.raises(iot_client.exceptions.ResourceNotFoundException):
        iot_client.describe_thing(thingName="to-forget")
    with pytest.raises(ClientError) as error:
        s3_client.head_bucket(Bucket="to-forget")
    assert error.value.response["Error"]["Code"] == "404"


def test_unknown_admin_route_is_404(emulator):
    with pytest.raises(urllib.error.HTTPError) as error:
        _get(emulator.endpoint_url + "/_emulator/nope")
    assert error.value.code == 404


def test_s3_object_created_notifications_reach_sqs(fresh_emulator, aws_client):
    sqs, s3 = aws_client("sqs"), aws_client("s3")
    queue_url = sqs.create_queue(QueueName="manifest-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.create_bucket(Bucket="factory-inbox")
    s3.put_bucket_notification_configuration(
        Bucket="factory-inbox",
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "inbox/"}]}},
                }
            ]
        },
    )
    sqs.purge_queue(QueueUrl=queue_url)  # drop the s3:TestEvent
    s3.put_object(Bucket="factory-inbox", Key="inbox/batch-1.csv", Body=b"serial_number,model\n")
    s3.put_object(Bucket="factory-inbox", Key="elsewhere/ignored.csv", Body=b"x")
    messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
    records = [r for m in messages for r in json.loads(m["Body"]).get("Records", [])]
    # Event keys are URL-encoded (moto also encodes "/"): consumers must unquote_plus them, as on AWS.
    keys = [unquote_plus(r["s3"]["object"]["key"]) for r in records]
    assert keys == ["inbox/batch-1.csv"]
