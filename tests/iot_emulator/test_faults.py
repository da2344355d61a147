"""Faults on demand: throttling and 5xx as boto3 sees them, per-operation filters, admin route, CLI flags."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from iot_emulator.__main__ import faults_from_args, parse_args
from iot_emulator.faults import Faults

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})
STANDARD = Config(retries={"total_max_attempts": 3, "mode": "standard"})


def admin(endpoint: str, method: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{endpoint}/_emulator/faults", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def faulty(fresh_emulator: Any) -> Iterator[Any]:
    yield fresh_emulator
    fresh_emulator.faults.reset()


def test_throttling_is_retried_by_boto3_then_raised(faulty: Any, aws_client: Any) -> None:
    admin(faulty.endpoint_url, "POST", {"throttle_rate": 1.0})
    iot = aws_client("iot", config=STANDARD)
    with pytest.raises(iot.exceptions.ThrottlingException) as error:
        iot.list_things()
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error.value.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert admin(faulty.endpoint_url, "GET")[1]["injected"] == {"ThrottlingException": 3}


def test_throttling_without_retries_is_exactly_one_request(faulty: Any, aws_client: Any) -> None:
    admin(faulty.endpoint_url, "POST", {"throttle_rate": 1.0})
    iot = aws_client("iot", config=NO_RETRIES)
    with pytest.raises(iot.exceptions.ThrottlingException):
        iot.list_things()
    assert faulty.faults.injected == {"ThrottlingException": 1}


def test_a_throttle_budget_lets_retries_succeed(faulty: Any, aws_client: Any) -> None:
    admin(faulty.endpoint_url, "POST", {"throttle_rate": 1.0, "throttle_count": 2})
    response = aws_client("iot", config=STANDARD).list_things()
    assert response["ResponseMetadata"]["RetryAttempts"] == 2
    assert faulty.faults.injected == {"ThrottlingException": 2}


@pytest.mark.parametrize(
    ("status", "code"), [(500, "InternalFailureException"), (503, "ServiceUnavailableException")]
)
def test_transient_5xx(faulty: Any, aws_client: Any, status: int, code: str) -> None:
    admin(faulty.endpoint_url, "POST", {"error_rate": 1.0, "error_status": status})
    with pytest.raises(ClientError) as error:
        aws_client("iot", config=NO_RETRIES).list_things()
    assert error.value.response["Error"]["Code"] == code
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


def test_faults_apply_only_to_the_listed_operations_and_only_to_iot(faulty: Any, aws_client: Any) -> None:
    admin(faulty.endpoint_url, "POST", {"throttle_rate": 1.0, "operations": ["DescribeThing"]})
    iot = aws_client("iot", config=NO_RETRIES)
    iot.create_thing(thingName="filtered")
    with pytest.raises(iot.exceptions.ThrottlingException):
        iot.describe_thing(thingName="filtered")
    aws_client("s3", config=NO_RETRIES).list_buckets()


def test_same_seed_same_fault_sequence() -> None:
    def sequence() -> list[bool]:
        faults = Faults()
        faults.update({"throttle_rate": 0.5, "seed": 7})
        return [faults.request_fault("ListThings") is not None for _ in range(40)]

    first = sequence()
    assert first == sequence()
    assert 5 < sum(first) < 35


def test_admin_route_round_trip_validation_and_reset(faulty: Any) -> None:
    status, settings = admin(
        faulty.endpoint_url, "POST", {"task_line_delay": 0.25, "fail_lines": [3, 1], "fail_rate": 0.1}
    )
    assert status == 200
    assert (settings["task_line_delay"], settings["fail_lines"], settings["fail_rate"]) == (0.25, [1, 3], 0.1)
    backend = faulty.backend()
    assert backend.faults is faulty.faults  # one Faults for the server, every region and its runner
    assert backend.faults.fail_lines == {1, 3}
    assert admin(faulty.endpoint_url, "POST", {"throttle_rate": 2})[0] == 400
    assert admin(faulty.endpoint_url, "POST", {"no_such_fault": 1})[0] == 400
    status, settings = admin(faulty.endpoint_url, "POST", {"reset": True})
    assert status == 200 and settings["fail_lines"] == [] and settings["task_line_delay"] == 0.0
    admin(faulty.endpoint_url, "POST", {"throttle_rate": 0.3})
    assert admin(faulty.endpoint_url, "DELETE")[1]["throttle_rate"] == 0.0


def test_command_line_flags() -> None:
    args = parse_args(
        [
            "--port",
            "0",
            "--throttle-rate",
            "0.2",
            "--error-rate",
            "0.1",
            "--error-status",
            "503",
            "--fault-operations",
            "StartThingRegistrationTask,DescribeThing",
            "--task-line-delay",
            "0.01",
            "--fail-lines",
            "2,5",
            "--seed",
            "9",
        ]
    )
    faults = faults_from_args(args)
    assert faults.settings() == {
        "throttle_rate": 0.2,
        "error_rate": 0.1,
        "error_status": 503,
        "operations": ["DescribeThing", "StartThingRegistrationTask"],
        "throttle_count": None,
        "error_count": None,
        "task_line_delay": 0.01,
        "fail_lines": [2, 5],
        "fail_rate": 0.0,
        "partial_fail_lines": [],
        "detach_lag": 0.0,
        "seed": 9,
        "injected": {},
    }
