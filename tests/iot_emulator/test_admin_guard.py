"""Admin routes (/_emulator/* but health, /moto-api/*): loopback peers only, or the admin token when set."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from iot_emulator.__main__ import parse_args
from iot_emulator.admin import AdminGuard, is_admin_path, is_loopback
from iot_emulator.server import EmulatorServer

GUARDED = [
    ("POST", "/_emulator/reset"),
    ("POST", "/_emulator/save"),
    ("GET", "/_emulator/faults"),
    ("POST", "/_emulator/faults"),
    ("DELETE", "/_emulator/faults"),
    ("POST", "/moto-api/reset"),
    ("GET", "/moto-api/data.json"),
    ("POST", "/moto-api/recorder/start-recording"),
]


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (connecting to it makes us a non-loopback peer)."""
    try:
        output = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        output = ""
    for address in output.split():
        if "." in address and not is_loopback(address):
            return address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.123", 9))  # no packet is sent; this only picks the source address
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if is_loopback(address) else address


def call(url: str, method: str, token: str | None = None, body: bytes | None = None) -> tuple[int, Any, Any]:
    headers = {"X-Emulator-Admin-Token": token} if token is not None else {}
    if body is None and method == "POST":
        body = b"{}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture
def public_server(
    fresh_emulator: Any, request: pytest.FixtureRequest
) -> Iterator[tuple[EmulatorServer, str]]:
    """An emulator on 0.0.0.0 and a non-loopback base URL for it (skipped if the machine has none)."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine (the WSGI tests below still cover the rule)")
    server = EmulatorServer("0.0.0.0", 0, admin_token=getattr(request, "param", None)).start()
    try:
        yield server, f"http://{address}:{server.port}"
    finally:
        server.stop()
        fresh_emulator.reset()  # moto is process-global


def test_non_loopback_peers_are_refused_the_admin_routes(public_server: Any) -> None:
    server, remote = public_server
    for method, path in GUARDED:
        status, headers, body = call(remote + path, method)
        assert status == 403, (method, path)
        assert headers["x-amzn-ErrorType"] == "AccessDeniedException:"
        assert "loopback" in json.loads(body)["message"]
    assert call(remote + "/_emulator/health", "GET")[0] == 200  # stays open for health checks
    assert call(f"http://127.0.0.1:{server.port}/_emulator/faults", "GET")[0] == 200


def test_iot_and_s3_still_answer_non_loopback_peers(public_server: Any) -> None:
    _, remote = public_server
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    iot = session.client("iot", endpoint_url=remote)
    iot.create_thing(thingName="reached-from-afar")
    assert iot.describe_thing(thingName="reached-from-afar")["thingName"] == "reached-from-afar"
    session.client("s3", endpoint_url=remote).create_bucket(Bucket="reached-from-afar")


@pytest.mark.parametrize("public_server", ["s3cret-token"], indirect=True)
def test_the_admin_token_lets_a_non_loopback_peer_in(public_server: Any) -> None:
    server, remote = public_server
    assert call(remote + "/_emulator/faults", "GET")[0] == 403
    assert call(remote + "/_emulator/faults", "GET", token="wrong")[0] == 403
    status, _, body = call(remote + "/_emulator/faults", "POST", "s3cret-token", b'{"throttle_rate": 0.5}')
    assert status == 200 and json.loads(body)["throttle_rate"] == 0.5
    assert server.faults.throttle_rate == 0.5
    assert call(remote + "/moto-api/reset", "POST", token="s3cret-token")[0] == 200
    assert server.faults.throttle_rate == 0.0  # the reset cleared the faults too


def wsgi(server: EmulatorServer, method: str, path: str, remote: str, **headers: str) -> tuple[str, bytes]:
    """Call the WSGI app directly with a chosen REMOTE_ADDR (addresses this machine may not have)."""
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "REMOTE_ADDR": remote,
        "wsgi.input": io.BytesIO(b""),
        "CONTENT_LENGTH": "0",
        **{"HTTP_" + k.upper(): v for k, v in headers.items()},
    }
    seen: list[str] = []
    body = b"".join(server(environ, lambda status, _headers: seen.append(status)))
    return seen[0], body


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.7", False),
        ("172.17.0.1", False),  # the docker bridge gateway: how a published port's traffic arrives
        ("fd00::2", False),
        ("<local>", False),
    ],
)
def test_the_loopback_rule_on_remote_addr(fresh_emulator: Any, remote: str, allowed: bool) -> None:
    status, body = wsgi(fresh_emulator.server, "GET", "/_emulator/faults", remote)
    assert status.startswith("200" if allowed else "403"), (remote, body)
    assert wsgi(fresh_emulator.server, "GET", "/_emulator/health", remote)[0].startswith("200")


def test_the_token_rule_without_a_network() -> None:
    environ = {"REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "GET", "PATH_INFO": "/_emulator/faults"}
    assert AdminGuard(None).refusal(environ) is not None
    assert AdminGuard(None).refusal({**environ, "HTTP_X_EMULATOR_ADMIN_TOKEN": ""}) is not None
    assert AdminGuard("t0k").refusal({**environ, "HTTP_X_EMULATOR_ADMIN_TOKEN": "t0k"}) is None
    assert AdminGuard("t0k").refusal({**environ, "HTTP_X_EMULATOR_ADMIN_TOKEN": "t0k2"}) is not None
    refused = AdminGuard("t0k").refusal(environ)
    assert refused is not None and (refused.code, refused.status) == ("AccessDeniedException", 403)


def test_which_paths_are_admin() -> None:
    assert not is_admin_path("/_emulator/health") and not is_admin_path("/_emulator/health/")
    assert is_admin_path("/_emulator/reset") and is_admin_path("/_emulator/nope")
    assert is_admin_path("/moto-api/") and is_admin_path("//moto-api/reset")
    assert not is_admin_path("/things/moto-api") and not is_admin_path("/bucket/moto-api/key")


def test_command_line_token_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IOT_EMULATOR_ADMIN_TOKEN", raising=False)
    assert parse_args([]).admin_token is None
    assert parse_args(["--admin-token", "abc"]).admin_token == "abc"
    monkeypatch.setenv("IOT_EMULATOR_ADMIN_TOKEN", "from-env")
    assert parse_args([]).admin_token == "from-env"
    monkeypatch.setenv("IOT_EMULATOR_ADMIN_TOKEN", "")
    assert parse_args([]).admin_token is None  # compose passes an empty value when none is set


def test_moto_api_reset_resets_iot_too(fresh_emulator: Any, iot_client: Any, s3_client: Any) -> None:
    iot_client.create_thing(thingName="moto-reset")
    s3_client.create_bucket(Bucket="moto-reset")
    status, _, body = call(fresh_emulator.endpoint_url + "/moto-api/reset", "POST")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    with pytest.raises(iot_client.exceptions.ResourceNotFoundException):
        iot_client.describe_thing(thingName="moto-reset")
    assert s3_client.list_buckets()["Buckets"] == []
    assert iot_client.list_things()["things"] == []
