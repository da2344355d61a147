"""Devices of the official SDK (awsiotsdk / awscrt) for the MQTT endpoint's tests, driven from asyncio.

``DeviceConnection`` wraps an MQTT 3.1.1 ``awscrt.mqtt.Connection`` or an MQTT 5 ``awscrt.mqtt5.Client``
built by the SDK's builders, and records every PUBLISH the connection receives, whoever it is for.
``provision`` runs one device through fleet provisioning with ``awsiot.iotidentity.IotIdentityClientV2``
and reconnects it with its new certificate. Many devices share one event loop: all their connections are
open at the same time, each waiting on its own futures.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from awscrt import mqtt, mqtt5, mqtt_request_response
from awsiot import iotidentity, mqtt5_client_builder, mqtt_connection_builder
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TIMEOUT = 30.0


@dataclass(frozen=True)
class Endpoint:
    """Where devices connect: the host DescribeEndpoint names, the MQTT port, the emulator's root CA."""

    host: str
    port: int
    root_ca: bytes


@dataclass(frozen=True)
class Credentials:
    certificate_pem: str
    private_key_pem: str


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes


class ConnectRefused(Exception):
    """The endpoint refused the connection; ``reason`` is the MQTT 5 CONNACK reason code (None on 3.1.1)."""

    def __init__(self, message: str, reason: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def _resolve(future: Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


class DeviceConnection:
    """One SDK connection and every PUBLISH it received (``received``), in arrival order."""

    def __init__(self, client_id: str, mqtt5_protocol: bool) -> None:
        self.client_id = client_id
        self.mqtt5 = mqtt5_protocol
        self.received: list[Received] = []
        self.connection: Any = None
        self._stopped: Future[None] = Future()

    @classmethod
    async def open(
        cls, endpoint: Endpoint, credentials: Credentials, client_id: str, *, mqtt5_protocol: bool
    ) -> DeviceConnection:
        device = cls(client_id, mqtt5_protocol)
        common = {
            "endpoint": endpoint.host,
            "port": endpoint.port,  # always given: without it the builders pick 443 and ALPN
            "cert_bytes": credentials.certificate_pem.encode(),
            "pri_key_bytes": credentials.private_key_pem.encode(),
            "ca_bytes": endpoint.root_ca,
            "client_id": client_id,
        }
        if mqtt5_protocol:
            connected: Future[None] = Future()

            def failed(data: mqtt5.LifecycleConnectFailureData) -> None:
                reason = data.connack_packet.reason_code if data.connack_packet is not None else None
                _resolve(
                    connected, error=ConnectRefused(str(data.exception), int(reason) if reason else None)
                )

            device.connection = mqtt5_client_builder.mtls_from_bytes(
                **common,
                on_publish_received=lambda data: device._record(
                    data.publish_packet.topic, data.publish_packet.payload
                ),
                on_lifecycle_connection_success=lambda _: _resolve(connected),
                on_lifecycle_connection_failure=failed,
                on_lifecycle_stopped=lambda _: _resolve(device._stopped),
            )
            device.connection.start()
            try:
                await asyncio.wait_for(asyncio.wrap_future(connected), TIMEOUT)
            except BaseException:
                device.connection.stop()  # the client would retry forever
                raise
        else:
            device.connection = mqtt_connection_builder.mtls_from_bytes(**common, clean_session=True)
            device.connection.on_message(lambda topic, payload, **_: device._record(topic, payload))
            try:
                await asyncio.wait_for(asyncio.wrap_future(device.connection.connect()), TIMEOUT)
            except Exception as exc:
                if isinstance(exc, asyncio.TimeoutError):
                    raise
                raise ConnectRefused(str(exc)) from exc
        return device

    def _record(self, topic: str, payload: bytes) -> None:
        self.received.append(Received(topic, bytes(payload)))

    def identity_client(self) -> iotidentity.IotIdentityClientV2:
        return iotidentity.IotIdentityClientV2(
            self.connection, mqtt_request_response.ClientOptions(2, 0, int(TIMEOUT))
        )

    async def subscribe(self, topic_filter: str) -> int:
        """Subscribe with QoS 1; the granted QoS, or 128 when the broker refused (SUBACK failure)."""
        if self.mqtt5:
            packet = mqtt5.SubscribePacket(
                subscriptions=[mqtt5.Subscription(topic_filter, mqtt5.QoS.AT_LEAST_ONCE)]
            )
            suback = await asyncio.wrap_future(self.connection.subscribe(packet))
            return int(suback.reason_codes[0])
        future, _ = self.connection.subscribe(topic_filter, mqtt.QoS.AT_LEAST_ONCE)
        result = await asyncio.wrap_future(future)
        return 128 if result["qos"] is None else int(result["qos"])

    async def publish(self, topic: str, payload: bytes) -> None:
        if self.mqtt5:
            packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
            await asyncio.wrap_future(self.connection.publish(packet))
        else:
            future, _ = self.connection.publish(topic, payload, mqtt.QoS.AT_LEAST_ONCE)
            await asyncio.wrap_future(future)

    async def close(self) -> None:
        if self.mqtt5:
            self.connection.stop()
            await asyncio.wait_for(asyncio.wrap_future(self._stopped), TIMEOUT)
        else:
            await asyncio.wait_for(asyncio.wrap_future(self.connection.disconnect()), TIMEOUT)


def new_csr() -> tuple[str, str]:
    """(CSR PEM, private key PEM) of a device that makes its own ECDSA P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode(), private.decode()


def make_certificate(
    subject: str, issuer: tuple[Any, Any] | None = None, ca: bool = False
) -> tuple[Any, Any]:
    """(key, certificate): self-signed, or signed by ``issuer`` (key, certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_key, signer = issuer if issuer else (key, None)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer.subject if signer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer_key, hashes.SHA256())
    )
    return key, cert


def credentials_of(key: Any, cert: Any) -> Credentials:
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return Credentials(cert.public_bytes(serialization.Encoding.PEM).decode(), private.decode())


@dataclass
class ProvisionedDevice:
    """What one device ended with, and every message its claim connection received."""

    client_id: str
    certificate_id: str
    certificate_pem: str
    private_key_pem: str
    thing_name: str
    device_configuration: dict[str, Any]
    received: list[Received] = field(default_factory=list)
    reconnected: bool = False


async def provision(
    endpoint: Endpoint,
    claim: Credentials,
    *,
    client_id: str,
    template_name: str,
    parameters: dict[str, str],
    mqtt5_protocol: bool,
    flow: str,
) -> ProvisionedDevice:
    """Claim connection, CreateKeysAndCertificate or CreateCertificateFromCsr, RegisterThing, reconnect."""
    device = await DeviceConnection.open(endpoint, claim, client_id, mqtt5_protocol=mqtt5_protocol)
    try:
        identity = device.identity_client()
        if flow == "keys":
            created = await asyncio.wrap_future(
                identity.create_keys_and_certificate(iotidentity.CreateKeysAndCertificateRequest())
            )
            private_key = created.private_key
        else:
            csr, private_key = new_csr()
            created = await asyncio.wrap_future(
                identity.create_certificate_from_csr(
                    iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)
                )
            )
        registered = await asyncio.wrap_future(
            identity.register_thing(
                iotidentity.RegisterThingRequest(
                    template_name=template_name,
                    certificate_ownership_token=created.certificate_ownership_token,
                    parameters=parameters,
                )
            )
        )
    finally:
        await device.close()
    result = ProvisionedDevice(
        client_id=client_id,
        certificate_id=created.certificate_id,
        certificate_pem=created.certificate_pem,
        private_key_pem=private_key,
        thing_name=registered.thing_name,
        device_configuration=registered.device_configuration,
        received=device.received,
    )
    own = Credentials(result.certificate_pem, result.private_key_pem)
    again = await DeviceConnection.open(endpoint, own, result.thing_name, mqtt5_protocol=mqtt5_protocol)
    await again.close()
    result.reconnected = True
    return result
