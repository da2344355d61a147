"""An asyncio MQTT 3.1.1 and 5 broker with AWS IoT's rules, whose reserved topics never pass between clients.

Ordinary topics are published to every session whose filters match. A PUBLISH to a reserved topic (`$...`)
is never routed at all: it goes to the ``BrokerHooks`` with the ``Session`` that sent it, and the answer is
written to that session alone (``Session.deliver``). So one device's certificate and key cannot reach
another device, whatever either subscribes to: no code path copies a `$` topic to a second session.
Sessions are clean (no persistence, no retained messages), QoS is 0 or 1, as on AWS IoT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
from collections.abc import Awaitable
from typing import Any, Protocol

from iot_emulator import mqtt_codec as codec
from iot_emulator.mqtt_topics import is_reserved, matches, valid_topic_filter, valid_topic_name

log = logging.getLogger(__name__)

# AWS IoT's limit on a PUBLISH is 128 KiB of payload; the packet may carry its topic and properties too.
MAX_PACKET_SIZE = 149_504
MAX_WRITE_BUFFER = 4 * 1024 * 1024  # a client that reads nothing is disconnected, not buffered forever
CONNECT_TIMEOUT = 10.0
# MQTT 5 reason codes (and the MQTT 3.1.1 CONNACK return codes as their pairs).
NORMAL, WITH_WILL, NO_SUBSCRIPTION, UNSPECIFIED, MALFORMED, PROTOCOL = 0x00, 0x04, 0x11, 0x80, 0x81, 0x82
UNSUPPORTED_VERSION, BAD_CLIENT_ID, NOT_AUTHORIZED, SHUTTING_DOWN = 0x84, 0x85, 0x87, 0x8B
KEEP_ALIVE_TIMEOUT, TAKEN_OVER, FILTER_INVALID, TOPIC_INVALID = 0x8D, 0x8E, 0x8F, 0x90
TOPIC_ALIAS_INVALID, TOO_LARGE, QOS_NOT_SUPPORTED, SHARED_NOT_SUPPORTED = 0x94, 0x95, 0x9B, 0x9E
CONNACK_311 = {UNSUPPORTED_VERSION: 1, BAD_CLIENT_ID: 2, SHUTTING_DOWN: 3, UNSPECIFIED: 3, NOT_AUTHORIZED: 5}
SUBACK_FAILURE_311 = 0x80
CONNACK_PROPERTIES = {
    codec.MAXIMUM_QOS: 1,
    codec.RETAIN_AVAILABLE: 0,
    codec.MAXIMUM_PACKET_SIZE: MAX_PACKET_SIZE,
    codec.WILDCARD_AVAILABLE: 1,
    codec.SUBSCRIPTION_IDS_AVAILABLE: 0,
    codec.SHARED_AVAILABLE: 0,
}


class Refused(Exception):
    """A CONNECT the endpoint refuses; ``reason`` is the MQTT 5 code (3.1.1 clients get its pair)."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Close(Exception):
    """End the connection; MQTT 5 clients get a DISCONNECT with ``reason`` first."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BrokerHooks(Protocol):
    """What the broker asks the endpoint: who a client is, what it may do, the reserved topics' answers."""

    async def authenticate(self, peer_certificate: bytes | None, client_id: str) -> Any: ...

    def may_publish(self, principal: Any, topic: str) -> bool: ...

    def may_subscribe(self, principal: Any, topic_filter: str) -> bool: ...

    async def reserved_publish(self, session: Session, packet: codec.Publish) -> None: ...


class Session:
    """One client connection: its subscriptions and the only way anything is written to it."""

    def __init__(
        self, writer: asyncio.StreamWriter, level: int, client_id: str, principal: Any, max_packet: int
    ) -> None:
        self.writer = writer
        self.level = level
        self.client_id = client_id
        self.principal = principal
        self.max_packet = max_packet  # what the client accepts (MQTT 5 Maximum Packet Size)
        self.subscriptions: dict[str, int] = {}  # filter -> granted QoS
        self.keep_alive = 0
        self.will: codec.Connect | None = None  # the CONNECT that carried a will message
        self.closed = False
        self.close_reason: int | None = None
        self._next_id = 0
        self._unacked: set[int] = set()

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        transport = self.writer.transport
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("MQTT client %s reads too slowly; disconnecting it", self.client_id)
            self.close(UNSPECIFIED)
            return
        self.writer.write(data)

    def deliver(
        self, topic: str, payload: bytes, qos: int = 1, properties: codec.Properties | None = None
    ) -> bool:
        """Send a PUBLISH if one of this session's filters matches ``topic``; False when none does."""
        granted = max((q for f, q in self.subscriptions.items() if matches(f, topic)), default=None)
        if granted is None or self.closed:
            return False
        qos = min(qos, granted)
        packet = codec.Publish(topic, payload, qos, properties=properties or {})
        if qos:
            packet.packet_id = self._packet_id()
            if packet.packet_id is None:
                log.warning("MQTT client %s acknowledges nothing: %s dropped", self.client_id, topic)
                return False
        data = codec.publish(self.level, packet)
        if len(data) > self.max_packet:
            log.info(
                "MQTT client %s accepts no packet of %d bytes: %s dropped", self.client_id, len(data), topic
            )
            return False
        if qos:
            self._unacked.add(packet.packet_id)  # type: ignore[arg-type]
        self.send(data)
        return True

    def acknowledged(self, packet_id: int) -> None:
        self._unacked.discard(packet_id)

    def _packet_id(self) -> int | None:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._unacked:
                return self._next_id
        return None  # 65535 messages await acknowledgement

    def close(self, reason: int | None = None) -> None:
        """Close the connection (MQTT 5: a DISCONNECT with ``reason`` first); the reading task ends."""
        if self.closed:
            return
        if reason is not None and self.level == codec.MQTT_5:
            self.writer.write(codec.disconnect(reason))
        self.closed = True
        self.close_reason = reason
        self.writer.close()


class Broker:
    """Connections, sessions by client id, and routing; all of it runs on one asyncio loop."""

    def __init__(self, hooks: BrokerHooks) -> None:
        self.hooks = hooks
        self.sessions: dict[str, Session] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext) -> int:
        self._server = await asyncio.start_server(
            self._connection, host, port, ssl=ssl_context, ssl_handshake_timeout=CONNECT_TIMEOUT
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions.values()):
            session.close(SHUTTING_DOWN)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def spawn(self, work: Awaitable[Any]) -> None:
        """Run ``work`` as a task the broker cancels when it stops."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ one connection

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        session: Session | None = None
        try:
            session = await self._open(reader, writer)
            if session is not None:
                await self._serve(reader, session)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        except Exception:  # a bug must cost one connection, never the broker
            log.exception("MQTT connection failed")
        finally:
            if session is not None:
                self._closed(session)
            with contextlib.suppress(Exception):
                writer.close()

    async def _open(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Session | None:
        first, body = await asyncio.wait_for(_read_packet(reader), CONNECT_TIMEOUT)
        try:
            connect = codec.decode(first, body, None)
        except (codec.MalformedPacket, codec.ProtocolError) as exc:
            log.info("MQTT connection closed: %s", exc)
            return None
        assert isinstance(connect, codec.Connect)
        level = connect.protocol_level
        if level not in (codec.MQTT_311, codec.MQTT_5):
            writer.write(codec.connack(codec.MQTT_311, CONNACK_311[UNSUPPORTED_VERSION]))
            return None
        client_id, assigned = connect.client_id, None
        if not client_id:
            if level == codec.MQTT_311 and not connect.clean_start:
                writer.write(codec.connack(level, CONNACK_311[BAD_CLIENT_ID]))
                return None
            client_id = assigned = f"auto-{uuid.uuid4()}"
        ssl_object = writer.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            principal = await self.hooks.authenticate(peer, client_id)
        except Refused as exc:
            log.info("MQTT connection of client %s refused: %s", client_id, exc)
            code = exc.reason if level == codec.MQTT_5 else CONNACK_311.get(exc.reason, 5)
            props = {codec.REASON_STRING: str(exc)} if level == codec.MQTT_5 else None
            writer.write(codec.connack(level, code, props))
            await _drain(writer)
            return None
        max_packet = connect.properties.get(codec.MAXIMUM_PACKET_SIZE, codec.MAX_REMAINING_LENGTH)
        session = Session(writer, level, client_id, principal, max_packet)
        session.keep_alive = connect.keep_alive
        if connect.will_topic is not None:
            session.will = connect
        previous = self.sessions.get(client_id)
        if previous is not None:  # AWS IoT, like MQTT, keeps the newest connection of a client id
            previous.close(TAKEN_OVER)
        self.sessions[client_id] = session
        if level == codec.MQTT_5:
            props = dict(CONNACK_PROPERTIES)
            if assigned:
                props[codec.ASSIGNED_CLIENT_ID] = assigned
            if connect.properties.get(codec.SESSION_EXPIRY):
                props[codec.SESSION_EXPIRY] = 0  # sessions end with their connection
            writer.write(codec.connack(level, NORMAL, props))
        else:
            writer.write(codec.connack(level, NORMAL))
        log.debug("MQTT client %s connected (protocol level %d)", client_id, level)
        return session

    async def _serve(self, reader: asyncio.StreamReader, session: Session) -> None:
        keep_alive = session.keep_alive * 1.5 if session.keep_alive else None  # MQTT: 1.5 times, then closed
        while not session.closed:
            try:
                first, body = await asyncio.wait_for(_read_packet(reader), keep_alive)
                packet = codec.decode(first, body, session.level)
                self._handle(session, packet)
            except TimeoutError:
                session.close(KEEP_ALIVE_TIMEOUT)
            except _PacketTooLarge:
                session.close(TOO_LARGE)
            except codec.MalformedPacket as exc:
                log.info("MQTT client %s sent a malformed packet: %s", session.client_id, exc)
                session.close(MALFORMED)
            except codec.ProtocolError as exc:
                log.info("MQTT client %s broke the protocol: %s", session.client_id, exc)
                session.close(PROTOCOL)
            except _Close as exc:
                log.info("MQTT client %s disconnected: %s", session.client_id, exc)
                session.close(exc.reason)
            if not session.closed:
                await _drain(session.writer)

    def _handle(self, session: Session, packet: codec.Packet) -> None:
        if isinstance(packet, codec.Publish):
            self._publish(session, packet)
        elif isinstance(packet, codec.Subscribe):
            self._subscribe(session, packet)
        elif isinstance(packet, codec.Unsubscribe):
            codes = [
                NORMAL if session.subscriptions.pop(f, None) is not None else NO_SUBSCRIPTION
                for f in packet.filters
            ]
            session.send(codec.unsuback(session.level, packet.packet_id, codes))
        elif isinstance(packet, codec.Ping):
            session.send(codec.pingresp())
        elif isinstance(packet, codec.Ack):
            if packet.kind == codec.PUBACK and packet.packet_id is not None:
                session.acknowledged(packet.packet_id)
            elif packet.kind == codec.DISCONNECT:
                if packet.reason != WITH_WILL:
                    session.will = None
                session.close()
            else:
                raise codec.ProtocolError("QoS 2 and AUTH are not supported")
        else:
            raise codec.ProtocolError("a second CONNECT")

    def _publish(self, session: Session, packet: codec.Publish) -> None:
        if packet.qos == 2:
            raise _Close(QOS_NOT_SUPPORTED, "QoS 2 is not supported (as on AWS IoT)")
        if codec.TOPIC_ALIAS in packet.properties:
            raise _Close(TOPIC_ALIAS_INVALID, "topic aliases are not supported")
        if not valid_topic_name(packet.topic):
            raise _Close(TOPIC_INVALID, f"invalid topic name {packet.topic!r}")
        if not self.hooks.may_publish(session.principal, packet.topic):
            if session.level == codec.MQTT_311:  # AWS IoT closes a 3.1.1 connection that is not authorized
                raise _Close(NOT_AUTHORIZED, f"not authorized to publish to {packet.topic}")
            if packet.qos:
                session.send(codec.puback(session.level, packet.packet_id or 0, NOT_AUTHORIZED))
            return
        if packet.qos:
            session.send(codec.puback(session.level, packet.packet_id or 0))
        if is_reserved(packet.topic):
            # Never routed: the hooks answer, on this session only.
            self.spawn(self.hooks.reserved_publish(session, packet))
            return
        self.route(packet)

    def route(self, packet: codec.Publish) -> int:
        """Deliver an ordinary topic to every matching session; a reserved topic is refused outright."""
        if is_reserved(packet.topic):
            raise ValueError("reserved topics are answered per connection, never routed")
        props = {k: v for k, v in packet.properties.items() if k in codec.FORWARDED_PROPERTIES}
        if codec.USER_PROPERTY in packet.properties:
            props[codec.USER_PROPERTY] = packet.properties[codec.USER_PROPERTY]
        return sum(
            s.deliver(packet.topic, packet.payload, packet.qos, props) for s in list(self.sessions.values())
        )

    def _subscribe(self, session: Session, packet: codec.Subscribe) -> None:
        codes = []
        v5 = session.level == codec.MQTT_5
        for topic_filter, options in packet.filters:
            if topic_filter.startswith("$share/"):
                codes.append(SHARED_NOT_SUPPORTED if v5 else SUBACK_FAILURE_311)
            elif not valid_topic_filter(topic_filter):
                codes.append(FILTER_INVALID if v5 else SUBACK_FAILURE_311)
            elif not self.hooks.may_subscribe(session.principal, topic_filter):
                codes.append(NOT_AUTHORIZED if v5 else SUBACK_FAILURE_311)
            else:
                granted = min(options & 0x03, 1)  # AWS IoT grants QoS 1 at most
                session.subscriptions[topic_filter] = granted
                codes.append(granted)
        session.send(codec.suback(session.level, packet.packet_id, codes))

    def _closed(self, session: Session) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        session.closed = True
        will = session.will
        if will is not None and will.will_topic is not None and session.close_reason != TAKEN_OVER:
            topic = will.will_topic
            if (
                valid_topic_name(topic)
                and not is_reserved(topic)
                and self.hooks.may_publish(session.principal, topic)
            ):
                self.route(
                    codec.Publish(
                        topic, will.will_payload, min(will.will_qos, 1), properties=will.will_properties
                    )
                )
        log.debug("MQTT client %s disconnected", session.client_id)


class _PacketTooLarge(Exception):
    pass


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    header = b""
    while True:
        header += await reader.readexactly(1)
        length = codec.decode_length(header)
        if length is not None:
            break
    if length > MAX_PACKET_SIZE:
        raise _PacketTooLarge
    return first, await reader.readexactly(length) if length else b""


async def _drain(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()
