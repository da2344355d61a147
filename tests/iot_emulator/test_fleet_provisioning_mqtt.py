"""Fleet provisioning over MQTT with the official SDK: CBOR, hooks, AWS's rejections and who may connect."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import awsiot
import cbor2
import pytest
from awsiot import iotidentity

from tests.iot_emulator.conftest import FLEET_TEMPLATE, Fleet
from tests.iot_emulator.fleet_devices import (
    ConnectRefused,
    Credentials,
    DeviceConnection,
    credentials_of,
    make_certificate,
    new_csr,
)

PROTOCOLS = pytest.mark.parametrize("mqtt5_protocol", [False, True], ids=["mqtt-3.1.1", "mqtt-5"])
HOOK_ARN = "arn:aws:lambda:us-east-1:123456789012:function:check-serial"
NOT_AUTHORIZED = 0x87


def advance_clock(emulator: Any, seconds: float) -> None:
    emulator.backend().clock = lambda: time.time() + seconds


async def _claim_connection(fleet: Fleet, mqtt5_protocol: bool, claim: Credentials | None = None) -> Any:
    return await DeviceConnection.open(
        fleet.endpoint, claim or fleet.claim, "claimed-device", mqtt5_protocol=mqtt5_protocol
    )


async def _rejection(future: Future[Any]) -> tuple[int, str, str]:
    with pytest.raises(awsiot.V2ServiceException) as raised:
        await asyncio.wrap_future(future)
    error = raised.value.modeled_error
    assert error is not None, raised.value.inner_error
    return error.status_code, error.error_code, error.error_message


def _register(identity: Any, token: str, parameters: dict[str, str], template: str = "SensorFleet") -> Any:
    return identity.register_thing(
        iotidentity.RegisterThingRequest(
            template_name=template, certificate_ownership_token=token, parameters=parameters
        )
    )


async def _new_token(identity: Any) -> Any:
    return await asyncio.wrap_future(
        identity.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest())
    )


# ---------------------------------------------------------------- the endpoint


def test_describe_endpoint_names_the_host_the_server_certificate_is_for(fleet: Fleet) -> None:
    assert fleet.iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"] == "localhost"
    assert fleet.iot.describe_endpoint()["endpointAddress"] == "localhost"
    with pytest.raises(fleet.iot.exceptions.InvalidRequestException):
        fleet.iot.describe_endpoint(endpointType="iot:CredentialProvider")


@PROTOCOLS
def test_the_host_names_and_address_of_the_certificate_all_connect(
    fleet: Fleet, mqtt5_protocol: bool
) -> None:
    async def connect(host: str) -> None:
        endpoint = type(fleet.endpoint)(host, fleet.endpoint.port, fleet.endpoint.root_ca)
        device = await DeviceConnection.open(
            endpoint, fleet.claim, f"via-{host}", mqtt5_protocol=mqtt5_protocol
        )
        await device.close()

    for host in ("localhost", "127.0.0.1"):
        asyncio.run(connect(host))


@PROTOCOLS
def test_the_v1_identity_client_provisions_too(fleet: Fleet, mqtt5_protocol: bool) -> None:
    async def scenario() -> tuple[Any, Any]:
        device = await _claim_connection(fleet, mqtt5_protocol)
        client = iotidentity.IotIdentityClient(device.connection)
        loop = asyncio.get_running_loop()
        created: asyncio.Future[Any] = loop.create_future()
        registered: asyncio.Future[Any] = loop.create_future()

        def settle(future: asyncio.Future[Any]) -> Any:
            return lambda response: loop.call_soon_threadsafe(
                lambda: future.done() or future.set_result(response)
            )

        qos = awsiot.mqtt.QoS.AT_LEAST_ONCE
        for subscribed, _ in (
            client.subscribe_to_create_keys_and_certificate_accepted(
                iotidentity.CreateKeysAndCertificateSubscriptionRequest(), qos, settle(created)
            ),
            client.subscribe_to_create_keys_and_certificate_rejected(
                iotidentity.CreateKeysAndCertificateSubscriptionRequest(), qos, settle(created)
            ),
            client.subscribe_to_register_thing_accepted(
                iotidentity.RegisterThingSubscriptionRequest(template_name="SensorFleet"),
                qos,
                settle(registered),
            ),
            client.subscribe_to_register_thing_rejected(
                iotidentity.RegisterThingSubscriptionRequest(template_name="SensorFleet"),
                qos,
                settle(registered),
            ),
        ):
            await asyncio.wrap_future(subscribed)
        await asyncio.wrap_future(
            client.publish_create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest(), qos)
        )
        keys = await asyncio.wait_for(created, 30)
        request = iotidentity.RegisterThingRequest(
            template_name="SensorFleet",
            certificate_ownership_token=keys.certificate_ownership_token,
            parameters={"SerialNumber": "v1"},
        )
        await asyncio.wrap_future(client.publish_register_thing(request, qos))
        thing = await asyncio.wait_for(registered, 30)
        await device.close()
        return keys, thing

    keys, thing = asyncio.run(scenario())
    assert isinstance(keys, iotidentity.CreateKeysAndCertificateResponse)
    assert isinstance(thing, iotidentity.RegisterThingResponse) and thing.thing_name == "sensor-v1"
    status = fleet.iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"][
        "status"
    ]
    assert status == "ACTIVE"


# ---------------------------------------------------------------- CBOR


@PROTOCOLS
def test_cbor_topics_take_and_give_cbor(fleet: Fleet, mqtt5_protocol: bool) -> None:
    async def ask(device: DeviceConnection, topic: str, request: dict[str, Any]) -> tuple[str, Any]:
        start = len(device.received)
        await device.publish(topic, cbor2.dumps(request))
        for _ in range(300):
            if len(device.received) > start:
                answer = device.received[start]
                return answer.topic.rsplit("/", 1)[1], cbor2.loads(answer.payload)
            await asyncio.sleep(0.01)
        raise AssertionError(f"no answer on {topic}")

    async def scenario() -> list[tuple[str, Any]]:
        device = await _claim_connection(fleet, mqtt5_protocol)
        for topic in (
            "$aws/certificates/create/cbor/+",
            "$aws/certificates/create-from-csr/cbor/+",
            "$aws/provisioning-templates/+/provision/cbor/+",
        ):
            assert await device.subscribe(topic) == 1
        keys = await ask(device, "$aws/certificates/create/cbor", {})
        csr, _ = new_csr()
        from_csr = await ask(
            device, "$aws/certificates/create-from-csr/cbor", {"certificateSigningRequest": csr}
        )
        token = from_csr[1]["certificateOwnershipToken"]
        registered = await ask(
            device,
            "$aws/provisioning-templates/SensorFleet/provision/cbor",
            {"certificateOwnershipToken": token, "parameters": {"SerialNumber": "cbor-1"}},
        )
        unknown = await ask(
            device,
            "$aws/provisioning-templates/NoSuchTemplate/provision/cbor",
            {"certificateOwnershipToken": keys[1]["certificateOwnershipToken"], "parameters": {}},
        )
        await device.close()
        return [keys, from_csr, registered, unknown]

    keys, from_csr, registered, unknown = asyncio.run(scenario())
    assert keys[0] == "accepted"
    assert set(keys[1]) == {"certificateId", "certificatePem", "privateKey", "certificateOwnershipToken"}
    assert from_csr[0] == "accepted"
    assert set(from_csr[1]) == {"certificateId", "certificatePem", "certificateOwnershipToken"}
    assert registered == (
        "accepted",
        {
            "deviceConfiguration": {"Broker": "mqtt.eu.example", "Serial": "cbor-1"},
            "thingName": "sensor-cbor-1",
        },
    )
    assert unknown == (
        "rejected",
        {
            "statusCode": 404,
            "errorCode": "ResourceNotFound",
            "errorMessage": "Template NoSuchTemplate not found",
        },
    )


# ---------------------------------------------------------------- rejections


@PROTOCOLS
def test_rejections_carry_aws_error_codes(fleet: Fleet, fresh_emulator: Any, mqtt5_protocol: bool) -> None:
    fleet.create_template("Disabled", FLEET_TEMPLATE, enabled=False)
    foreign = {**FLEET_TEMPLATE, "Parameters": {**FLEET_TEMPLATE["Parameters"], "CertId": {"Type": "String"}}}
    foreign["Resources"] = {
        **FLEET_TEMPLATE["Resources"],
        "certificate": {"Type": "AWS::IoT::Certificate", "Properties": {"CertificateId": {"Ref": "CertId"}}},
    }
    fleet.create_template("ForeignCertificate", foreign)

    async def scenario() -> dict[str, tuple[int, str, str]]:
        # a certificate that is not a claim may use any template (a claim is bound to its own)
        device = await _claim_connection(fleet, mqtt5_protocol, fleet.active_certificate())
        identity = device.identity_client()
        keys = await _new_token(identity)
        token = keys.certificate_ownership_token
        other = fleet.iot.create_keys_and_certificate(setAsActive=True)["certificateId"]
        outcomes = {
            "unknown template": await _rejection(_register(identity, token, {"SerialNumber": "1"}, "NoSuch")),
            "disabled template": await _rejection(
                _register(identity, token, {"SerialNumber": "1"}, "Disabled")
            ),
            "empty token": await _rejection(_register(identity, "", {"SerialNumber": "1"})),
            "bad token": await _rejection(_register(identity, "not-a-token", {"SerialNumber": "1"})),
            "missing parameter": await _rejection(_register(identity, token, {"Site": "us"})),
            "foreign certificate": await _rejection(
                _register(identity, token, {"SerialNumber": "1", "CertId": other}, "ForeignCertificate")
            ),
            "bad csr": await _rejection(
                identity.create_certificate_from_csr(
                    iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request="not a CSR")
                )
            ),
        }
        await asyncio.wrap_future(_register(identity, token, {"SerialNumber": "1"}))  # still usable: accepted
        outcomes["spent token"] = await _rejection(_register(identity, token, {"SerialNumber": "1"}))
        late = await _new_token(identity)
        advance_clock(fresh_emulator, 3601)  # tokens live one hour
        outcomes["expired token"] = await _rejection(
            _register(identity, late.certificate_ownership_token, {"SerialNumber": "2"})
        )
        await device.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes["unknown template"] == (404, "ResourceNotFound", "Template NoSuch not found")
    assert outcomes["disabled template"][:2] == (403, "AccessDenied")
    assert "disabled" in outcomes["disabled template"][2]
    assert outcomes["empty token"] == (
        400,
        "InvalidCertificateOwnershipToken",
        "Certificate ownership token cannot be empty.",
    )
    for case in ("bad token", "spent token", "expired token"):
        assert outcomes[case][:2] == (400, "InvalidCertificateOwnershipToken"), case
    status, code, message = outcomes["missing parameter"]
    assert (status, code) == (400, "InvalidParameters") and "'SerialNumber'" in message
    assert outcomes["foreign certificate"][:2] == (400, "InvalidParameters")
    assert "CertificateId" in outcomes["foreign certificate"][2]
    assert outcomes["bad csr"][:2] == (400, "InvalidParameters")


def test_a_claim_provisions_with_its_own_template_only(fleet: Fleet) -> None:
    fleet.create_template("OtherFleet", FLEET_TEMPLATE)

    async def scenario() -> tuple[int, str, str]:
        device = await _claim_connection(fleet, True, fleet.new_claim("OtherFleet"))
        identity = device.identity_client()
        keys = await _new_token(identity)
        rejected = await _rejection(
            _register(identity, keys.certificate_ownership_token, {"SerialNumber": "x"})
        )
        await device.close()
        return rejected

    status, code, message = asyncio.run(scenario())
    assert (status, code) == (403, "AccessDenied") and "OtherFleet" in message


def test_a_rejected_device_keeps_a_certificate_that_cannot_connect(fleet: Fleet) -> None:
    async def scenario() -> Any:
        device = await _claim_connection(fleet, False)
        identity = device.identity_client()
        keys = await _new_token(identity)
        await _rejection(_register(identity, keys.certificate_ownership_token, {}))
        await device.close()
        own = Credentials(keys.certificate_pem, keys.private_key)
        with pytest.raises(ConnectRefused):
            await DeviceConnection.open(fleet.endpoint, own, "pending", mqtt5_protocol=False)
        return keys

    keys = asyncio.run(scenario())
    description = fleet.iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"]
    assert description["status"] == "PENDING_ACTIVATION"


# ---------------------------------------------------------------- the pre-provisioning hook


@pytest.fixture
def hooked_template(fleet: Fleet) -> str:
    fleet.create_template(
        "HookedFleet",
        FLEET_TEMPLATE,
        preProvisioningHook={"targetArn": HOOK_ARN, "payloadVersion": "2020-04-01"},
    )
    return "HookedFleet"


def _provision_hooked(fleet: Fleet, template: str, serial: str, claim: Credentials | None = None) -> Any:
    async def scenario() -> Any:
        device = await _claim_connection(fleet, True, claim or fleet.new_claim(template))
        identity = device.identity_client()
        keys = await _new_token(identity)
        future = _register(identity, keys.certificate_ownership_token, {"SerialNumber": serial}, template)
        try:
            return keys, await asyncio.wrap_future(future)
        except awsiot.V2ServiceException as exc:
            error = exc.modeled_error
            return keys, (error.status_code, error.error_code, error.error_message)
        finally:
            await device.close()

    return asyncio.run(scenario())


def test_a_hook_sees_aws_input_and_its_overrides_win(
    fleet: Fleet, hooked_template: str, provisioning_hooks: Any
) -> None:
    events: list[dict[str, Any]] = []

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        events.append(event)
        return {"allowProvisioning": True, "parameterOverrides": {"SerialNumber": "from-hook"}}

    provisioning_hooks.set(HOOK_ARN, hook)
    claim = fleet.new_claim(hooked_template)
    keys, registered = _provision_hooked(fleet, hooked_template, "from-device", claim)
    assert registered.thing_name == "sensor-from-hook"
    [event] = events
    template_arn = fleet.iot.describe_provisioning_template(templateName=hooked_template)["templateArn"]
    assert event == {
        "claimCertificateId": _certificate_id(claim.certificate_pem),
        "certificateId": keys.certificate_id,
        "certificatePem": keys.certificate_pem,
        "templateArn": template_arn,
        "clientId": "claimed-device",
        "parameters": {"SerialNumber": "from-device"},
    }


def _certificate_id(pem: str) -> str:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)).hexdigest()


@pytest.mark.parametrize(
    "target",
    [
        lambda event: {"allowProvisioning": False},
        lambda event: {"parameterOverrides": {"SerialNumber": "x"}},
        lambda event: 1 / 0,
        "deny",
        None,  # no target configured for the ARN: the Lambda function does not exist
    ],
    ids=["refuses", "no-allow", "fails", "deny", "unmapped"],
)
def test_a_hook_that_does_not_allow_denies_with_access_denied(
    fleet: Fleet, hooked_template: str, provisioning_hooks: Any, target: Any
) -> None:
    provisioning_hooks.set(HOOK_ARN, target)
    keys, rejected = _provision_hooked(fleet, hooked_template, "denied")
    assert rejected[:2] == (403, "AccessDenied")
    status = fleet.iot.describe_certificate(certificateId=keys.certificate_id)["certificateDescription"][
        "status"
    ]
    assert status == "PENDING_ACTIVATION"
    with pytest.raises(fleet.iot.exceptions.ResourceNotFoundException):
        fleet.iot.describe_thing(thingName="sensor-denied")


def test_a_hook_past_its_time_limit_denies(
    fleet: Fleet, hooked_template: str, provisioning_hooks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("iot_emulator.provisioning_hooks.HOOK_TIMEOUT", 0.2)
    release = threading.Event()
    provisioning_hooks.set(HOOK_ARN, lambda event: release.wait(5) and {"allowProvisioning": True})
    try:
        _, rejected = _provision_hooked(fleet, hooked_template, "slow")
    finally:
        release.set()
    assert rejected[:2] == (403, "AccessDenied") and "0.2 seconds" in rejected[2]


@pytest.fixture
def http_hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append(event)
            allow = event["parameters"]["SerialNumber"] != "blocked"
            body = json.dumps({"allowProvisioning": allow, "parameterOverrides": {"Site": "us"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_http_hook_stands_in_for_the_lambda(
    fleet: Fleet, hooked_template: str, provisioning_hooks: Any, http_hook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = http_hook
    provisioning_hooks.set("*", url)  # any hook ARN without a target of its own
    _, allowed = _provision_hooked(fleet, hooked_template, "allowed")
    _, blocked = _provision_hooked(fleet, hooked_template, "blocked")
    assert allowed.thing_name == "sensor-allowed"
    assert allowed.device_configuration == {"Broker": "mqtt.us.example", "Serial": "allowed"}  # the override
    assert blocked[:2] == (403, "AccessDenied")
    assert [e["parameters"] for e in received] == [{"SerialNumber": "allowed"}, {"SerialNumber": "blocked"}]


# ---------------------------------------------------------------- who may connect


async def _refused(fleet: Fleet, credentials: Credentials, mqtt5_protocol: bool) -> int | None:
    with pytest.raises(ConnectRefused) as refused:
        await DeviceConnection.open(fleet.endpoint, credentials, "refused", mqtt5_protocol=mqtt5_protocol)
    return refused.value.reason


@PROTOCOLS
def test_expired_claims_and_certificates_not_active_are_refused(
    fleet: Fleet, fresh_emulator: Any, mqtt5_protocol: bool
) -> None:
    made = [fleet.iot.create_keys_and_certificate(setAsActive=True) for _ in range(2)]
    fleet.iot.update_certificate(certificateId=made[0]["certificateId"], newStatus="INACTIVE")
    fleet.iot.update_certificate(certificateId=made[1]["certificateId"], newStatus="REVOKED")

    async def scenario() -> list[int | None]:
        reasons = [
            await _refused(
                fleet, Credentials(m["certificatePem"], m["keyPair"]["PrivateKey"]), mqtt5_protocol
            )
            for m in made
        ]
        advance_clock(fresh_emulator, 301)  # the claim's 5 minutes are over
        reasons.append(await _refused(fleet, fleet.claim, mqtt5_protocol))
        return reasons

    reasons = asyncio.run(scenario())
    if mqtt5_protocol:
        assert reasons == [NOT_AUTHORIZED] * 3


def test_certificates_of_issuers_registered_while_running_connect(fleet: Fleet) -> None:
    ca = make_certificate("factory CA", ca=True)
    device = make_certificate("device-1", issuer=ca)
    own = make_certificate("self-signed device")
    stranger = make_certificate("unknown device", issuer=make_certificate("unknown CA", ca=True))
    ca_pem = credentials_of(*ca).certificate_pem
    registered = credentials_of(*device)
    without_ca = credentials_of(*own)

    async def connect(credentials: Credentials) -> None:
        connection = await DeviceConnection.open(
            fleet.endpoint, credentials, "registered", mqtt5_protocol=True
        )
        await connection.close()

    fleet.iot.register_ca_certificate(caCertificate=ca_pem, setAsActive=True, certificateMode="SNI_ONLY")
    fleet.iot.register_certificate(
        certificatePem=registered.certificate_pem, caCertificatePem=ca_pem, setAsActive=True
    )
    fleet.iot.register_certificate_without_ca(certificatePem=without_ca.certificate_pem, status="ACTIVE")
    asyncio.run(connect(registered))
    asyncio.run(connect(without_ca))
    asyncio.run(_refused(fleet, credentials_of(*stranger), False))  # an issuer nobody registered: TLS fails
