"""MQTT 3.1.1 and 5 packets: the subset a device endpoint needs, decoded from and encoded to bytes.

Only what AWS IoT's device endpoint speaks: CONNECT/CONNACK, PUBLISH (QoS 0 and 1), PUBACK,
SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK, PINGREQ/PINGRESP and DISCONNECT. QoS 2 and AUTH are refused by
the broker (AWS IoT supports neither), so their packets are only recognised, never built.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = 8, 9, 10, 11, 12, 13, 14, 15
MQTT_311, MQTT_5 = 4, 5
MAX_REMAINING_LENGTH = 268_435_455

# MQTT 5 property identifiers and how their values are encoded.
PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA = 0x01, 0x02, 0x03, 0x08, 0x09
SUBSCRIPTION_ID, SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE = 0x0B, 0x11, 0x12, 0x13
AUTH_METHOD, REASON_STRING, RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS = 0x15, 0x1F, 0x21, 0x22, 0x23
MAXIMUM_QOS, RETAIN_AVAILABLE, USER_PROPERTY, MAXIMUM_PACKET_SIZE = 0x24, 0x25, 0x26, 0x27
WILDCARD_AVAILABLE, SUBSCRIPTION_IDS_AVAILABLE, SHARED_AVAILABLE = 0x28, 0x29, 0x2A
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _STRING, 0x13: _TWO, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
# Properties a broker passes on from a PUBLISH it received to the subscribers it delivers to.
FORWARDED_PROPERTIES = (PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA)


class MalformedPacket(ValueError):
    """Bytes that are not a valid packet: the connection is closed (MQTT 5 reason 0x81 first)."""


class ProtocolError(ValueError):
    """A well-formed packet the protocol does not allow here (MQTT 5 reason 0x82)."""


Properties = dict[int, Any]  # USER_PROPERTY and SUBSCRIPTION_ID hold lists, the others one value


@dataclass
class Connect:
    protocol_level: int
    client_id: str
    clean_start: bool
    keep_alive: int
    properties: Properties = field(default_factory=dict)
    will_topic: str | None = None
    will_payload: bytes = b""
    will_qos: int = 0
    will_retain: bool = False
    will_properties: Properties = field(default_factory=dict)
    username: str | None = None


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = field(default_factory=dict)


@dataclass
class Subscribe:
    packet_id: int
    filters: list[tuple[str, int]]  # (topic filter, options byte: QoS in bits 0-1)
    properties: Properties = field(default_factory=dict)


@dataclass
class Unsubscribe:
    packet_id: int
    filters: list[str]


@dataclass
class Ack:
    """PUBACK (and the QoS 2 acknowledgements, which are refused) or DISCONNECT: an id and a reason code."""

    kind: int
    packet_id: int | None = None
    reason: int = 0


@dataclass
class Ping:
    pass


Packet = Connect | Publish | Subscribe | Unsubscribe | Ack | Ping


# ---------------------------------------------------------------- reading


class _Reader:
    """A cursor over one packet's body; running past its end means the packet is malformed."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedPacket("the packet ends before its fields do")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def two(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def four(self) -> int:
        return struct.unpack("!I", self.take(4))[0]

    def varint(self) -> int:
        value, shift = 0, 0
        for _ in range(4):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        raise MalformedPacket("a variable byte integer is longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.two())

    def string(self) -> str:
        raw = self.binary()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("a string is not valid UTF-8") from None
        if "\x00" in text:
            raise MalformedPacket("a string contains U+0000")
        return text

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def properties(self) -> Properties:
        end = self.varint()
        end += self.pos
        if end > len(self.data):
            raise MalformedPacket("the properties run past the packet")
        props: Properties = {}
        while self.pos < end:
            ident = self.varint()
            kind = _PROPERTY_TYPES.get(ident)
            if kind is None:
                raise MalformedPacket(f"unknown property 0x{ident:02x}")
            value = self._value(kind)
            if ident in (USER_PROPERTY, SUBSCRIPTION_ID):
                props.setdefault(ident, []).append(value)
            elif ident in props:
                raise ProtocolError(f"property 0x{ident:02x} appears twice")
            else:
                props[ident] = value
        if self.pos != end:
            raise MalformedPacket("a property runs past the properties' length")
        return props

    def _value(self, kind: int) -> Any:
        if kind == _BYTE:
            return self.byte()
        if kind == _TWO:
            return self.two()
        if kind == _FOUR:
            return self.four()
        if kind == _VARINT:
            return self.varint()
        if kind == _STRING:
            return self.string()
        if kind == _BINARY:
            return self.binary()
        return (self.string(), self.string())


def decode_length(header: bytes) -> int | None:
    """The remaining length announced by the bytes after a packet's first byte, or None if incomplete."""
    value, shift = 0, 0
    for i, b in enumerate(header):
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        shift += 7
        if i == 3:
            raise MalformedPacket("the remaining length is longer than 4 bytes")
    return None


def decode(first: int, body: bytes, level: int | None) -> Packet:
    """One packet from its first byte and body; ``level``: the connection's protocol (None before CONNECT)."""
    kind, flags = first >> 4, first & 0x0F
    r = _Reader(body)
    if level is None:
        if kind != CONNECT:
            raise ProtocolError("the first packet must be CONNECT")
        return _decode_connect(r, flags)
    if kind == PUBLISH:
        return _decode_publish(r, flags, level)
    if kind in (SUBSCRIBE, UNSUBSCRIBE) and flags != 0b0010:
        raise MalformedPacket("SUBSCRIBE and UNSUBSCRIBE must have flags 0010")
    if kind == SUBSCRIBE:
        packet_id = r.two()
        props = r.properties() if level == MQTT_5 else {}
        filters = []
        while not r.at_end():
            filters.append((r.string(), r.byte()))
        if not filters:
            raise ProtocolError("SUBSCRIBE without a topic filter")
        return Subscribe(packet_id, filters, props)
    if kind == UNSUBSCRIBE:
        packet_id = r.two()
        if level == MQTT_5:
            r.properties()
        names = []
        while not r.at_end():
            names.append(r.string())
        if not names:
            raise ProtocolError("UNSUBSCRIBE without a topic filter")
        return Unsubscribe(packet_id, names)
    if kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        packet_id = r.two()
        reason = r.byte() if level == MQTT_5 and not r.at_end() else 0
        return Ack(kind, packet_id, reason)
    if kind == PINGREQ:
        return Ping()
    if kind == DISCONNECT:
        reason = r.byte() if level == MQTT_5 and not r.at_end() else 0
        return Ack(DISCONNECT, None, reason)
    if kind == AUTH:
        return Ack(AUTH)
    raise ProtocolError(f"a client may not send packets of type {kind}")


def _decode_connect(r: _Reader, flags: int) -> Connect:
    if flags:
        raise MalformedPacket("CONNECT flags must be 0")
    name = r.string()
    level = r.byte()
    if name != "MQTT" or level not in (MQTT_311, MQTT_5):
        # 3.1 ("MQIsdp", level 3) and unknown levels: answered "unacceptable protocol version"
        return Connect(protocol_level=level, client_id="", clean_start=True, keep_alive=0)
    connect_flags = r.byte()
    if connect_flags & 0x01:
        raise MalformedPacket("the reserved CONNECT flag is set")
    keep_alive = r.two()
    props = r.properties() if level == MQTT_5 else {}
    packet = Connect(level, r.string(), bool(connect_flags & 0x02), keep_alive, props)
    if connect_flags & 0x04:
        packet.will_properties = r.properties() if level == MQTT_5 else {}
        packet.will_topic = r.string()
        packet.will_payload = r.binary()
        packet.will_qos = (connect_flags >> 3) & 0x03
        packet.will_retain = bool(connect_flags & 0x20)
    if connect_flags & 0x80:
        packet.username = r.string()
    if connect_flags & 0x40:
        r.binary()  # passwords are not used: devices authenticate with their certificate
    return packet


def _decode_publish(r: _Reader, flags: int, level: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    topic = r.string()
    packet_id = r.two() if qos else None
    props = r.properties() if level == MQTT_5 else {}
    return Publish(topic, r.rest(), qos, bool(flags & 0x01), bool(flags & 0x08), packet_id, props)


# ---------------------------------------------------------------- writing


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def _properties(props: Properties) -> bytes:
    out = bytearray()
    for ident, value in props.items():
        kind = _PROPERTY_TYPES[ident]
        for item in value if ident in (USER_PROPERTY, SUBSCRIPTION_ID) else [value]:
            out += _varint(ident)
            if kind == _BYTE:
                out.append(item)
            elif kind == _TWO:
                out += struct.pack("!H", item)
            elif kind == _FOUR:
                out += struct.pack("!I", item)
            elif kind == _VARINT:
                out += _varint(item)
            elif kind == _PAIR:
                out += _string(item[0]) + _string(item[1])
            else:
                out += _string(item)
    return _varint(len(out)) + bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connack(level: int, reason: int, properties: Properties | None = None) -> bytes:
    """CONNACK: never "session present" (every session is clean); ``reason`` in the connection's protocol."""
    body = bytes([0, reason])
    if level == MQTT_5:
        body += _properties(properties or {})
    return _packet(CONNACK << 4, body)


def publish(level: int, packet: Publish) -> bytes:
    flags = (packet.qos << 1) | (0x01 if packet.retain else 0) | (0x08 if packet.dup else 0)
    body = _string(packet.topic)
    if packet.qos:
        assert packet.packet_id is not None
        body += struct.pack("!H", packet.packet_id)
    if level == MQTT_5:
        body += _properties(packet.properties)
    return _packet((PUBLISH << 4) | flags, body + packet.payload)


def puback(level: int, packet_id: int, reason: int = 0) -> bytes:
    body = struct.pack("!H", packet_id)
    if level == MQTT_5 and reason:
        body += bytes([reason])
    return _packet(PUBACK << 4, body)


def suback(level: int, packet_id: int, codes: list[int]) -> bytes:
    body = struct.pack("!H", packet_id) + (_properties({}) if level == MQTT_5 else b"")
    return _packet(SUBACK << 4, body + bytes(codes))


def unsuback(level: int, packet_id: int, codes: list[int]) -> bytes:
    body = struct.pack("!H", packet_id)
    if level == MQTT_5:
        body += _properties({}) + bytes(codes)
    return _packet(UNSUBACK << 4, body)


def pingresp() -> bytes:
    return _packet(PINGRESP << 4, b"")


def disconnect(reason: int, reason_string: str | None = None) -> bytes:
    """An MQTT 5 server DISCONNECT (MQTT 3.1.1 servers just close the connection)."""
    props = {REASON_STRING: reason_string} if reason_string else {}
    return _packet(DISCONNECT << 4, bytes([reason]) + _properties(props))
