"""The broker at the byte level (a raw TLS client): CONNACK codes, AWS IoT's limits, routing, sessions."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iot_emulator import mqtt_codec as codec
from iot_emulator.mqtt_codec import MQTT_5, MQTT_311

MINIMAL_TEMPLATE = '{"Resources": {"thing": {"Type": "AWS::IoT::Thing", "Properties": {"ThingName": "t"}}}}'
PROTOCOLS = pytest.mark.parametrize("level", [MQTT_311, MQTT_5], ids=["mqtt-3.1.1", "mqtt-5"])


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        encoded.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([first]) + bytes(encoded) + body


class RawClient:
    """A minimal MQTT client over TLS that sends packets as built here and reads what the server sends."""

    def __init__(self, port: int, context: ssl.SSLContext, level: int) -> None:
        self.level = level
        self.sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), 10), server_hostname="localhost"
        )
        self.sock.settimeout(10)

    def props(self, data: bytes = b"") -> bytes:
        return (bytes([len(data)]) + data) if self.level == MQTT_5 else b""

    def connect(
        self, client_id: str, keep_alive: int = 60, will: tuple[str, bytes] | None = None, name: str = "MQTT"
    ) -> tuple[int, int]:
        flags, payload = 0x02, _string(client_id)
        if will is not None:
            flags |= 0x04 | (1 << 3)
            payload += self.props() + _string(will[0]) + _string(will[1])
        body = _string(name) + bytes([self.level, flags]) + struct.pack("!H", keep_alive) + self.props()
        self.send(_packet(0x10, body + payload))
        return self.read()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def subscribe(self, packet_id: int, *filters: str) -> list[int]:
        body = struct.pack("!H", packet_id) + self.props() + b"".join(_string(f) + b"\x01" for f in filters)
        self.send(_packet(0x82, body))
        kind, details = self.read()
        assert kind == codec.SUBACK
        return details

    def publish(self, topic: str, payload: bytes, qos: int = 1, packet_id: int = 1) -> None:
        body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + self.props() + payload
        self.send(_packet(0x30 | (qos << 1), body))

    def read(self) -> tuple[int, Any]:
        """(packet type, details) of the next packet; (0, None) when the server closed the connection."""
        first = self.sock.recv(1)
        if not first:
            return 0, None
        header = b""
        while codec.decode_length(header) is None:
            header += self.sock.recv(1)
        length = codec.decode_length(header) or 0
        body = b""
        while len(body) < length:
            chunk = self.sock.recv(length - len(body))
            if not chunk:
                return 0, None
            body += chunk
        kind = first[0] >> 4
        if kind == codec.CONNACK:
            return kind, body[1]
        if kind == codec.PUBLISH:
            return kind, codec.decode(first[0], body, self.level)
        if kind == codec.SUBACK:
            offset = 2 + (1 + body[2] if self.level == MQTT_5 else 0)
            return kind, list(body[offset:])
        if kind == codec.PUBACK:
            return kind, body[2] if len(body) > 2 else 0
        if kind == codec.DISCONNECT:
            return kind, body[0] if body else 0
        return kind, body

    def read_until(self, kind: int) -> Any:
        while True:
            got, details = self.read()
            if got in (kind, 0):
                return details if got == kind else None

    def closed(self) -> bool:
        """Whether the server closed the connection (after an MQTT 5 DISCONNECT, if any)."""
        try:
            kind, _ = self.read()
            while kind == codec.DISCONNECT:
                kind, _ = self.read()
            return kind == 0
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients(fresh_emulator: Any, tmp_path: Path) -> Iterator[Callable[..., RawClient]]:
    iot = fresh_emulator.client("iot")
    opened: list[RawClient] = []

    def open_client(level: int, status: str = "ACTIVE", claim: bool = False) -> RawClient:
        if claim:
            iot.create_provisioning_template(
                templateName="RawFleet",
                templateBody=MINIMAL_TEMPLATE,
                provisioningRoleArn="arn:aws:iam::123456789012:role/r",
            )
            made = iot.create_provisioning_claim(templateName="RawFleet")
        else:
            made = iot.create_keys_and_certificate(setAsActive=status == "ACTIVE")
            if status not in ("ACTIVE", "INACTIVE"):
                iot.update_certificate(certificateId=made["certificateId"], newStatus=status)
        cert, key = tmp_path / f"{len(opened)}.crt", tmp_path / f"{len(opened)}.key"
        cert.write_text(made["certificatePem"])
        key.write_text(made["keyPair"]["PrivateKey"])
        context = ssl.create_default_context(cafile=str(fresh_emulator.mqtt_root_ca))
        context.load_cert_chain(cert, key)
        client = RawClient(fresh_emulator.mqtt_port, context, level)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


@PROTOCOLS
def test_certificates_not_active_get_not_authorized(clients: Callable[..., RawClient], level: int) -> None:
    for status in ("INACTIVE", "REVOKED"):
        client = clients(level, status)
        assert client.connect("refused") == (codec.CONNACK, 5 if level == MQTT_311 else 0x87)
        assert client.closed()


def test_mqtt_3_1_is_an_unacceptable_protocol_version(clients: Callable[..., RawClient]) -> None:
    client = clients(3)
    assert client.connect("old", name="MQIsdp") == (codec.CONNACK, 1)
    assert client.closed()


def test_mqtt5_connack_announces_aws_iot_limits(clients: Callable[..., RawClient]) -> None:
    client = clients(MQTT_5)
    client.send(
        _packet(
            0x10, _string("MQTT") + bytes([5, 0x02, 0, 60]) + b"\x05\x11\x00\x00\x0e\x10" + _string("lim")
        )
    )
    first = client.sock.recv(1)
    header = client.sock.recv(1)
    body = client.sock.recv(codec.decode_length(header) or 0)
    assert first == b"\x20" and body[:2] == b"\x00\x00"
    props = codec._Reader(body[2:]).properties()
    assert props[codec.MAXIMUM_QOS] == 1
    assert props[codec.RETAIN_AVAILABLE] == 0
    assert props[codec.SHARED_AVAILABLE] == 0
    assert props[codec.MAXIMUM_PACKET_SIZE] == 149_504
    assert props[codec.SESSION_EXPIRY] == 0  # asked for an hour: sessions end with their connection


@PROTOCOLS
def test_devices_publish_to_each_other_but_never_on_reserved_topics(
    clients: Callable[..., RawClient], level: int
) -> None:
    listener, talker = clients(level), clients(level)
    assert listener.connect("listener")[1] == 0 and talker.connect("talker")[1] == 0
    assert listener.subscribe(1, "telemetry/+", "#", "$aws/certificates/create/json/accepted") == [1, 1, 1]
    talker.publish("$aws/certificates/create/json/accepted", b'{"forged": true}', packet_id=7)
    assert talker.read() == (codec.PUBACK, 0)
    talker.publish("telemetry/talker", b"21.5", packet_id=8)
    assert talker.read() == (codec.PUBACK, 0)
    received = listener.read_until(codec.PUBLISH)
    assert (received.topic, received.payload, received.qos) == ("telemetry/talker", b"21.5", 1)


@PROTOCOLS
def test_claims_may_only_use_the_provisioning_api(clients: Callable[..., RawClient], level: int) -> None:
    claim = clients(level, claim=True)
    assert claim.connect("claim")[1] == 0
    refused = 0x80 if level == MQTT_311 else 0x87
    assert claim.subscribe(1, "#", "$aws/certificates/create/json/accepted") == [refused, 1]
    claim.publish("telemetry/claim", b"x", packet_id=2)
    if level == MQTT_311:  # AWS IoT closes a 3.1.1 connection on an unauthorized publish
        assert claim.closed()
    else:
        assert claim.read() == (codec.PUBACK, 0x87)


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (_packet(0x34, _string("t") + b"\x00\x01\x00x"), 0x9B),  # QoS 2: AWS IoT has no QoS 2
        (_packet(0x30, b"\x00\x05ab"), 0x81),  # the topic runs past the packet
        (b"\x30\xff\xff\xff\x7f", 0x95),  # larger than AWS IoT's packet size limit
        (_packet(0x30, _string("a/#") + b"\x00"), 0x90),  # a wildcard in a topic name
    ],
    ids=["qos2", "malformed", "too-large", "wildcard-topic"],
)
def test_bad_packets_end_the_connection_with_a_reason(
    clients: Callable[..., RawClient], packet: bytes, reason: int
) -> None:
    client = clients(MQTT_5)
    assert client.connect("bad")[1] == 0
    client.send(packet)
    assert client.read() == (codec.DISCONNECT, reason)
    assert client.closed()


def test_a_new_connection_with_the_same_client_id_takes_over(clients: Callable[..., RawClient]) -> None:
    first, second = clients(MQTT_5), clients(MQTT_5)
    assert first.connect("same-id")[1] == 0
    assert second.connect("same-id")[1] == 0
    assert first.read() == (codec.DISCONNECT, 0x8E)
    second.send(_packet(0xC0, b""))  # PINGREQ
    assert second.read()[0] == codec.PINGRESP


@PROTOCOLS
def test_a_lost_connection_publishes_its_will(clients: Callable[..., RawClient], level: int) -> None:
    listener, dying = clients(level), clients(level)
    assert listener.connect("listener")[1] == 0
    assert listener.subscribe(1, "status/#") == [1]
    assert dying.connect("dying", will=("status/dying", b"offline"))[1] == 0
    dying.sock.close()  # no DISCONNECT: the will goes out
    will = listener.read_until(codec.PUBLISH)
    assert (will.topic, will.payload) == ("status/dying", b"offline")


def test_a_silent_client_is_disconnected_after_one_and_a_half_keep_alives(
    clients: Callable[..., RawClient],
) -> None:
    client = clients(MQTT_5)
    assert client.connect("silent", keep_alive=1)[1] == 0
    assert client.read() == (codec.DISCONNECT, 0x8D)
