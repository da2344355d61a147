"""Request limits over HTTP: oversized bodies 413, JSON nested too deep 400, never a 500 or a traceback."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from iot_emulator.limits import MAX_BODY_BYTES, MAX_JSON_DEPTH, MAX_TEMPLATE_DEPTH, json_depth
from tests.iot_emulator.test_wire import SCOPE, raw_iot

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Fails the test if the emulator logged anything at WARNING or above (a traceback, say)."""
    with caplog.at_level(logging.WARNING):
        yield caplog
    noisy = [r for r in caplog.records if r.name.startswith("iot_emulator") and r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]
    assert "Traceback" not in caplog.text


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def padded_thing_body(size: int) -> bytes:
    """A CreateThing body of exactly ``size`` bytes (an unknown member carries the padding)."""
    skeleton = b'{"pad": ""}'
    return b'{"pad": "' + b"x" * (size - len(skeleton)) + b'"}'


def chunked_post(endpoint: str, path: str, chunks: list[bytes]) -> tuple[int, dict[str, str], Any]:
    url = urlsplit(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), headers={"Authorization": SCOPE}, encode_chunked=True)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_json_nested_100000_deep_is_a_400_without_traceback(fresh_emulator: Any, quiet_log: Any) -> None:
    status, headers, body = raw_iot(fresh_emulator.endpoint_url, "POST", "/things/deep", nested(100_000))
    assert (status, headers["x-amzn-ErrorType"]) == (400, "InvalidRequestException:")
    limit = MAX_JSON_DEPTH
    assert body == {
        "message": f"The request body nests arrays and objects deeper than {limit} levels, the limit."
    }
    assert "x-amzn-RequestId" in headers


def test_depth_limit_is_exact_and_brackets_in_strings_do_not_count(fresh_emulator: Any) -> None:
    at_limit = b'{"pad": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
    status, _, _ = raw_iot(fresh_emulator.endpoint_url, "POST", "/things/at-limit", at_limit)
    assert status == 200  # the unknown member is ignored, as botocore's model-driven servers do
    over = b'{"pad": ' + nested(MAX_JSON_DEPTH) + b"}"
    assert raw_iot(fresh_emulator.endpoint_url, "POST", "/things/over", over)[0] == 400
    in_string = json.dumps({"pad": "[" * 5000 + '\\"{'}).encode()
    assert raw_iot(fresh_emulator.endpoint_url, "POST", "/things/in-string", in_string)[0] == 200
    assert json_depth(b'{"a": ["]]]", {"b": "\\"[[["}]}') == 3


def test_deep_value_in_a_string_member_is_a_validation_error(fresh_emulator: Any, quiet_log: Any) -> None:
    document = b'{"attributePayload": {"attributes": {"k": ' + nested(990) + b"}}}"
    status, headers, body = raw_iot(fresh_emulator.endpoint_url, "POST", "/things/deep-value", document)
    assert (status, headers["x-amzn-ErrorType"]) == (400, "InvalidRequestException:")
    assert "at 'attributePayload.attributes.k.value'" in body["message"]
    assert "Member must be a string" in body["message"]


def test_oversized_body_is_413_through_boto3(fresh_emulator: Any, aws_client: Any, quiet_log: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(ClientError) as error:
        iot.create_policy(policyName="huge", policyDocument=" " * (MAX_BODY_BYTES + 10))
    assert error.value.response["Error"]["Code"] == "RequestEntityTooLargeException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    assert f"the limit is {MAX_BODY_BYTES} bytes" in error.value.response["Error"]["Message"]
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.get_policy(policyName="huge")


def test_body_size_limit_is_exact(fresh_emulator: Any) -> None:
    status, _, _ = raw_iot(
        fresh_emulator.endpoint_url, "POST", "/things/big", padded_thing_body(MAX_BODY_BYTES)
    )
    assert status == 200
    status, headers, body = raw_iot(
        fresh_emulator.endpoint_url, "POST", "/things/bigger", padded_thing_body(MAX_BODY_BYTES + 1)
    )
    assert (status, headers["x-amzn-ErrorType"]) == (413, "RequestEntityTooLargeException:")
    assert body["message"] == (
        f"The request body is {MAX_BODY_BYTES + 1} bytes long; the limit is {MAX_BODY_BYTES} bytes."
    )


def test_chunked_body_over_the_limit_is_413(fresh_emulator: Any, quiet_log: Any) -> None:
    chunk = b" " * 65536
    count = MAX_BODY_BYTES // len(chunk) + 2
    status, headers, body = chunked_post(fresh_emulator.endpoint_url, "/things/chunked", [chunk] * count)
    assert (status, headers["x-amzn-ErrorType"]) == (413, "RequestEntityTooLargeException:")
    assert body["message"] == f"The request body is more bytes long; the limit is {MAX_BODY_BYTES} bytes."
    status, _, _ = chunked_post(fresh_emulator.endpoint_url, "/things/chunked-small", [b"{", b"}"])
    assert status == 200


def test_deep_template_body_is_refused_by_name(fresh_emulator: Any, aws_client: Any, quiet_log: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    deep = {"Fn::Join": ["", ["a"]]}
    for _ in range(MAX_TEMPLATE_DEPTH):
        deep = {"Fn::Join": ["", [deep]]}
    template = json.dumps(
        {"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": deep}}}}
    )
    with pytest.raises(iot.exceptions.InvalidRequestException) as error:
        iot.register_thing(templateBody=template)
    assert error.value.response["Error"]["Message"] == (
        f"templateBody: nests arrays and objects deeper than {MAX_TEMPLATE_DEPTH} levels, the limit"
    )
    hostile = "[" * 5000 + "]" * 5000  # the whole 10240-character budget spent on nesting
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_provisioning_template(
            templateName="hostile", templateBody=hostile, provisioningRoleArn="arn:aws:iam::1:role/r"
        )


def test_deep_policy_document_is_malformed(fresh_emulator: Any, aws_client: Any, quiet_log: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(iot.exceptions.MalformedPolicyException) as error:
        iot.create_policy(policyName="deep", policyDocument="[" * 1024 + "]" * 1024)
    assert "deeper than 1000 levels" in error.value.response["Error"]["Message"]


def test_admin_body_has_the_same_limits(fresh_emulator: Any, quiet_log: Any) -> None:
    url = urlsplit(fresh_emulator.endpoint_url)
    for body, status, code in (
        (b"x" * (MAX_BODY_BYTES + 1), 413, "RequestEntityTooLargeException"),
        (nested(100_000), 400, "InvalidRequestException"),
        (b"{not json", 400, "InvalidRequestException"),
    ):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            conn.request("POST", "/_emulator/faults", body=body)
            response = conn.getresponse()
            payload = json.loads(response.read())
        finally:
            conn.close()
        assert (response.status, response.getheader("x-amzn-ErrorType")) == (status, f"{code}:")
        assert payload["message"]
    assert fresh_emulator.faults.settings()["throttle_rate"] == 0.0
