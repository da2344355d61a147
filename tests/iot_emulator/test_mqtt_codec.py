"""MQTT packets and topics: decoding what clients send, the `$` rule of wildcards, AWS IoT's topic limits."""

from __future__ import annotations

import struct

import pytest

from iot_emulator import mqtt_codec as codec
from iot_emulator.mqtt_topics import is_reserved, matches, valid_topic_filter, valid_topic_name


def _string(value: str) -> bytes:
    return struct.pack("!H", len(value.encode())) + value.encode()


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("+/b", "a/b", True),
        ("#", "a/b", True),
        ("#", "$aws/certificates/create/json/accepted", False),  # [MQTT-4.7.2-1]
        ("+/certificates/create/json/accepted", "$aws/certificates/create/json/accepted", False),
        ("$aws/#", "$aws/certificates/create/json/accepted", True),
        ("$aws/certificates/+/json/accepted", "$aws/certificates/create/json/accepted", True),
    ],
)
def test_topic_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


def test_topic_names_and_filters() -> None:
    assert valid_topic_name("telemetry/1") and not valid_topic_name("a/+") and not valid_topic_name("")
    assert not valid_topic_name("x" * 257)  # AWS IoT: 256 bytes at most
    assert valid_topic_filter("a/+/#") and valid_topic_filter("#")
    assert not valid_topic_filter("a/#/b") and not valid_topic_filter("a/b+") and not valid_topic_filter("a#")
    assert is_reserved("$aws/things/t/shadow/get") and not is_reserved("aws/x")


def test_connect_of_both_protocols_with_will_and_username() -> None:
    v311 = (
        _string("MQTT")
        + bytes([4, 0x02 | 0x04 | 0x08 | 0x80])
        + struct.pack("!H", 30)
        + _string("dev-1")
        + _string("status/dev-1")
        + _string("gone")
        + _string("?SDK=Python")
    )
    connect = codec.decode(0x10, v311, None)
    assert isinstance(connect, codec.Connect)
    assert (connect.protocol_level, connect.client_id, connect.keep_alive) == (4, "dev-1", 30)
    assert (connect.will_topic, connect.will_payload, connect.will_qos) == ("status/dev-1", b"gone", 1)
    assert connect.username == "?SDK=Python"
    props = b"\x05\x11\x00\x00\x00\x3c"  # session expiry 60
    v5 = _string("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 60) + props + _string("dev-2")
    connect = codec.decode(0x10, v5, None)
    assert isinstance(connect, codec.Connect)
    assert connect.properties == {codec.SESSION_EXPIRY: 60}


def test_publish_round_trips_with_properties() -> None:
    packet = codec.Publish(
        "a/b",
        b"payload",
        qos=1,
        packet_id=7,
        properties={codec.PAYLOAD_FORMAT: 1, codec.USER_PROPERTY: [("k", "v"), ("k", "w")]},
    )
    data = codec.publish(codec.MQTT_5, packet)
    assert codec.decode_length(data[1:2]) == len(data) - 2
    assert codec.decode(data[0], data[2:], codec.MQTT_5) == packet
    plain = codec.publish(codec.MQTT_311, codec.Publish("a/b", b"x"))
    assert codec.decode(plain[0], plain[2:], codec.MQTT_311) == codec.Publish("a/b", b"x")


@pytest.mark.parametrize(
    ("first", "body", "level", "error"),
    [
        (0x30, b"\x00\x05ab", codec.MQTT_311, codec.MalformedPacket),  # topic longer than the packet
        (0x30, _string("t") + b"\x04\x01\x00\x01\x00", codec.MQTT_5, codec.ProtocolError),  # property twice
        (0x30, _string("t") + b"\x02\x7f\x00", codec.MQTT_5, codec.MalformedPacket),  # unknown property
        (
            0x80,
            b"\x00\x01" + _string("a") + b"\x01",
            codec.MQTT_311,
            codec.MalformedPacket,
        ),  # SUBSCRIBE flags
        (0x82, b"\x00\x01", codec.MQTT_311, codec.ProtocolError),  # SUBSCRIBE without a filter
        (0x30, b"\x00\x01\xff", codec.MQTT_311, codec.MalformedPacket),  # not UTF-8
        (0x20, b"\x00\x00", codec.MQTT_311, codec.ProtocolError),  # CONNACK from a client
        (0x30, b"", None, codec.ProtocolError),  # PUBLISH before CONNECT
    ],
)
def test_bad_packets_are_refused(first: int, body: bytes, level: int | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        codec.decode(first, body, level)


def test_remaining_length_is_at_most_four_bytes() -> None:
    assert codec.decode_length(b"\x80") is None  # more bytes to come
    assert codec.decode_length(b"\xff\xff\xff\x7f") == codec.MAX_REMAINING_LENGTH
    with pytest.raises(codec.MalformedPacket):
        codec.decode_length(b"\xff\xff\xff\xff\x01")
