"""The IoT wire layer: routing from botocore's model, validation, AWS's error encoding, serialisation."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import urllib.error
import urllib.request
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from iot_emulator import wire

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})
SCOPE = (
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iot/aws4_request, SignedHeaders=host, Signature=0"
)


def raw_iot(
    endpoint: str, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    """An IoT request that botocore's client-side validation cannot stop (no signature is checked)."""
    request = urllib.request.Request(
        endpoint + path, data=body, method=method, headers={"Authorization": SCOPE}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")


# ---------------------------------------------------------------- routing


def test_every_modeled_operation_routes_to_itself() -> None:
    routes = wire.all_routes()
    assert len(routes) == len(wire.service_model().operation_names)
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x1", route.uri.split("?")[0])
        found = wire.match_route(route.method, path)
        assert found is not None and found[0].name == route.name, route.uri


@pytest.mark.parametrize(
    ("method", "path", "operation", "labels"),
    [
        ("POST", "/things", "RegisterThing", {}),
        ("POST", "/things/dev-1", "CreateThing", {"thingName": "dev-1"}),
        ("GET", "/things", "ListThings", {}),
        ("GET", "/things/dev-1", "DescribeThing", {"thingName": "dev-1"}),
        ("PUT", "/things/dev-1/principals", "AttachThingPrincipal", {"thingName": "dev-1"}),
        (
            "GET",
            "/thing-registration-tasks/t-1/reports",
            "ListThingRegistrationTaskReports",
            {"taskId": "t-1"},
        ),
        ("PUT", "/thing-registration-tasks/t-1/cancel", "StopThingRegistrationTask", {"taskId": "t-1"}),
        ("GET", "/registrationcode", "GetRegistrationCode", {}),
        ("GET", "/certificates/abc", "DescribeCertificate", {"certificateId": "abc"}),
        ("GET", "/cacertificates", "ListCACertificates", {}),
        ("GET", "/cacertificate/abc", "DescribeCACertificate", {"caCertificateId": "abc"}),
        ("GET", "/things/a%3Ab%2Fc", "DescribeThing", {"thingName": "a:b/c"}),
        (
            "GET",
            "/destinations/arn:aws:iot:us-east-1:123456789012:ruledestination/http/x",
            "GetTopicRuleDestination",
            {"arn": "arn:aws:iot:us-east-1:123456789012:ruledestination/http/x"},
        ),
    ],
)
def test_look_alike_uris(method: str, path: str, operation: str, labels: dict[str, str]) -> None:
    found = wire.match_route(method, path)
    assert found is not None
    assert (found[0].name, found[1]) == (operation, labels)


def test_unknown_route_is_a_modeled_looking_404(emulator: Any) -> None:
    status, headers, body = raw_iot(emulator.endpoint_url, "GET", "/no-such-thing/here")
    assert status == 404
    assert headers["x-amzn-ErrorType"] == "UnknownOperationException:"
    assert "GET /no-such-thing/here" in body["message"]


def test_uri_labels_are_decoded(fresh_emulator: Any, iot_client: Any) -> None:
    iot_client.create_thing(thingName="line:7_a-b")
    assert iot_client.describe_thing(thingName="line:7_a-b")["thingName"] == "line:7_a-b"


# ---------------------------------------------------------------- validation


def test_pattern_violation_names_member_and_pattern(fresh_emulator: Any, aws_client: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(iot.exceptions.InvalidRequestException) as error:
        iot.create_thing(thingName="bad name!")
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.value.response["Error"]["Message"] == (
        "1 validation error detected: Value 'bad name!' at 'thingName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9:_-]+"
    )


def test_max_length_enum_and_range_are_checked_server_side(fresh_emulator: Any, aws_client: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(iot.exceptions.InvalidRequestException) as error:
        iot.create_thing(thingName="x" * 129)
    assert (
        "at 'thingName' failed to satisfy constraint: Member must have length less than or equal to 128"
        in (error.value.response["Error"]["Message"])
    )
    with pytest.raises(iot.exceptions.InvalidRequestException) as error:
        iot.list_thing_registration_task_reports(taskId="t", reportType="EVERYTHING")
    assert "Member must satisfy enum value set: [ERRORS, RESULTS]" in error.value.response["Error"]["Message"]
    with pytest.raises(iot.exceptions.InvalidRequestException) as error:
        iot.list_things(maxResults=251)
    assert (
        "at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 250"
        in (error.value.response["Error"]["Message"])
    )


def test_several_problems_are_counted(fresh_emulator: Any, aws_client: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(iot.exceptions.InvalidRequestException) as error:
        iot.create_thing(thingName="bad name!", thingTypeName="also bad!")
    message = error.value.response["Error"]["Message"]
    assert message.startswith("2 validation errors detected: ")
    assert "'thingName'" in message and "'thingTypeName'" in message


def test_required_member_missing_and_bad_types_over_raw_http(emulator: Any) -> None:
    cert = "a" * 64
    status, headers, body = raw_iot(emulator.endpoint_url, "PUT", f"/certificates/{cert}")
    assert (status, headers["x-amzn-ErrorType"]) == (400, "InvalidRequestException:")
    assert body["message"] == (
        "1 validation error detected: Value null at 'newStatus' failed to satisfy constraint: "
        "Member must not be null"
    )
    status, _, body = raw_iot(emulator.endpoint_url, "POST", "/keys-and-certificate?setAsActive=maybe")
    assert status == 400 and "'setAsActive'" in body["message"] and "boolean" in body["message"]
    status, _, body = raw_iot(emulator.endpoint_url, "GET", "/things?maxResults=many")
    assert status == 400 and "'maxResults'" in body["message"]
    status, _, body = raw_iot(emulator.endpoint_url, "POST", "/things/json-thing", body=b"{not json")
    assert status == 400 and body["message"] == "The request body is not valid JSON."


def test_nested_body_members_are_validated(emulator: Any) -> None:
    document = {"attributePayload": {"attributes": {"ok": "x" * 801}}}
    status, _, body = raw_iot(emulator.endpoint_url, "POST", "/things/nested", json.dumps(document).encode())
    assert status == 400
    assert "at 'attributePayload.attributes.ok.value'" in body["message"]
    assert "length less than or equal to 800" in body["message"]


def test_querystring_types_are_converted(fresh_emulator: Any, iot_client: Any) -> None:
    for index in range(3):
        iot_client.create_thing(thingName=f"page-{index}")
    first = iot_client.list_things(maxResults=2)
    assert len(first["things"]) == 2 and first["nextToken"]
    second = iot_client.list_things(maxResults=2, nextToken=first["nextToken"])
    assert len(second["things"]) == 1
    created = iot_client.create_keys_and_certificate(setAsActive=True)
    described = iot_client.describe_certificate(certificateId=created["certificateId"])
    assert described["certificateDescription"]["status"] == "ACTIVE"


# ---------------------------------------------------------------- errors


def test_resource_already_exists_carries_resource_id_and_arn(fresh_emulator: Any, aws_client: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    created = iot.create_thing(thingName="dup", attributePayload={"attributes": {"a": "1"}})
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as error:
        iot.create_thing(thingName="dup", attributePayload={"attributes": {"a": "2"}})
    response = error.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 409
    assert (
        response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "ResourceAlreadyExistsException:"
    )
    assert (
        response["ResponseMetadata"]["RequestId"]
        == response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    )
    assert response["resourceId"] == created["thingId"]
    assert response["resourceArn"] == created["thingArn"]


def test_not_found_is_the_modeled_class(fresh_emulator: Any, aws_client: Any) -> None:
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as error:
        iot.describe_thing(thingName="ghost")
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_unimplemented_operation_names_itself(fresh_emulator: Any, aws_client: Any) -> None:
    assert not hasattr(fresh_emulator.backend(), "describe_account_audit_configuration")
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(ClientError) as error:
        iot.describe_account_audit_configuration()
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    assert error.value.response["Error"] == {
        "Code": "NotImplemented",
        "Message": "Operation DescribeAccountAuditConfiguration is not implemented by the emulator.",
    }


def test_unexpected_exception_is_internal_failure_without_request_body_in_log(
    fresh_emulator: Any, aws_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**_: Any) -> dict[str, Any]:
        raise RuntimeError("backend bug")

    monkeypatch.setattr(fresh_emulator.backend(), "create_thing", broken)
    iot = aws_client("iot", config=NO_RETRIES)
    with (
        caplog.at_level(logging.ERROR, logger="iot_emulator.iot_handler"),
        pytest.raises(ClientError) as error,
    ):
        iot.create_thing(thingName="boom", attributePayload={"attributes": {"secret": "SECRET-VALUE"}})
    assert error.value.response["Error"]["Code"] == "InternalFailureException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert "CreateThing" in caplog.text and "backend bug" in caplog.text
    assert "SECRET-VALUE" not in caplog.text


# ---------------------------------------------------------------- serialisation


def _route(name: str) -> wire.Route:
    return next(r for r in wire.all_routes() if r.name == name)


def test_output_keeps_modeled_members_and_epoch_timestamps() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    status, headers, body = wire.serialise_output(
        _route("DescribeThingRegistrationTask"),
        {
            "taskId": "t",
            "creationDate": when,
            "lastModifiedDate": 12.5,
            "internal": "dropped",
            "message": None,
        },
    )
    assert (status, headers) == (200, {})
    assert json.loads(body) == {"taskId": "t", "creationDate": when.timestamp(), "lastModifiedDate": 12.5}


def test_empty_output_is_an_empty_object() -> None:
    assert wire.serialise_output(_route("DeleteThing"), {}) == (200, {}, b"{}")


def test_status_code_member_sets_http_status() -> None:
    status, _, body = wire.serialise_output(_route("DeleteCommand"), {"statusCode": 202})
    assert status == 202 and json.loads(body) == {}


def test_input_timestamps_become_epoch_floats() -> None:
    params = wire.parse_input(
        _route("ListAuditMitigationActionsTasks"),
        {},
        "startTime=2026-01-01T00%3A00%3A00Z&endTime=1767225600&auditTaskId=a",
        {},
        b"",
    )
    assert params["startTime"] == params["endTime"] == 1767225600.0
