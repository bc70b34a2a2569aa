"""A minimal MQTT broker for `edged demo` on machines without mosquitto.

Enough of MQTT 3.1.1 and 5 for edged and its monitor on one machine:
CONNECT (with Last Will), SUBSCRIBE/UNSUBSCRIBE with + and # wildcards,
PUBLISH QoS 0/1 (QoS 2 is accepted and delivered at QoS 1), retained messages,
keepalive, PING, DISCONNECT. Sessions are not persisted, MQTT 5 properties are
skipped, nothing is authenticated: it listens on 127.0.0.1 only and is not
for production (use mosquitto or any real broker there).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = (
    8, 9, 10, 11, 12, 13, 14)


class ProtocolError(Exception):
    """The peer sent something this broker does not understand; drop it."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT wildcard matching; `$`-topics are not matched by a leading wildcard."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    fparts, tparts = topic_filter.split("/"), topic.split("/")
    for i, part in enumerate(fparts):
        if part == "#":
            return True
        if i >= len(tparts) or (part != "+" and part != tparts[i]):
            return False
    return len(fparts) == len(tparts)


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode_str(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + encode_varint(len(body)) + body


class Reader:
    """Cursor over one packet's body."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("truncated packet")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("!H", self.take(2))[0]

    def varint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 21:
                raise ProtocolError("bad variable length")

    def string(self) -> str:
        return self.take(self.u16()).decode("utf-8")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def skip_properties(self) -> None:
        self.take(self.varint())

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


@dataclass
class Session:
    client_id: str
    version: int
    writer: asyncio.StreamWriter
    keepalive: int = 0
    will: Optional[Message] = None
    subscriptions: Dict[str, int] = field(default_factory=dict)
    next_id: int = 0

    def packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def deliver(self, msg: Message, qos: int, retain: bool) -> None:
        qos = min(qos, msg.qos, 1)
        body = encode_str(msg.topic)
        if qos:
            body += struct.pack("!H", self.packet_id())
        if self.version == 5:
            body += b"\x00"
        self.send(packet(PUBLISH, (qos << 1) | int(retain), body + msg.payload))


class EmbeddedBroker:
    """Run with start() (background thread) or serve() (inside an asyncio loop)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.sessions: Dict[str, Session] = {}
        self.retained: Dict[str, Message] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    # ------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0) -> "EmbeddedBroker":
        """Listen in a background thread; return once the port accepts connections."""
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._server is None:
            raise RuntimeError(f"embedded broker failed to listen on {self.host}:{self.port}")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._listen())
            self._ready.set()
            self._loop.run_forever()
        finally:
            self._ready.set()
            self._loop.close()

    async def _listen(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            log.error("embedded broker: cannot listen on %s:%s: %s", self.host, self.port, exc)
            return
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("embedded broker listening on %s", self.url)

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for session in list(self.sessions.values()):
            session.writer.close()

    # -------------------------------------------------------------- clients
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session: Optional[Session] = None
        clean = False
        try:
            kind, _, body = await self._read_packet(reader, timeout=10)
            if kind != CONNECT:
                raise ProtocolError("first packet is not CONNECT")
            session = self._connect(Reader(body), writer)
            while True:
                timeout = session.keepalive * 1.5 if session.keepalive else None
                kind, flags, body = await self._read_packet(reader, timeout)
                if kind == DISCONNECT:
                    clean = True
                    break
                self._dispatch(session, kind, flags, Reader(body))
                await writer.drain()
        except (ProtocolError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                ConnectionError, UnicodeDecodeError) as exc:
            log.debug("embedded broker: client dropped: %r", exc)
        finally:
            self._drop(session, clean)
            writer.close()

    @staticmethod
    async def _read_packet(reader: asyncio.StreamReader,
                           timeout: Optional[float]) -> Tuple[int, int, bytes]:
        first = await asyncio.wait_for(reader.readexactly(1), timeout)
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        return first[0] >> 4, first[0] & 0x0F, await reader.readexactly(length)

    def _connect(self, r: Reader, writer: asyncio.StreamWriter) -> Session:
        r.string()                        # protocol name
        version, flags, keepalive = r.u8(), r.u8(), r.u16()
        if version not in (4, 5):
            raise ProtocolError(f"unsupported MQTT protocol level {version}")
        if version == 5:
            r.skip_properties()
        session = Session(r.string(), version, writer, keepalive)
        if flags & 0x04:
            if version == 5:
                r.skip_properties()
            topic, payload = r.string(), r.binary()
            session.will = Message(topic, payload, (flags >> 3) & 3, bool(flags & 0x20))
        old = self.sessions.get(session.client_id)
        if old is not None:               # client id takeover: old connection goes away
            old.writer.close()
        self.sessions[session.client_id] = session
        body = b"\x00\x00" + (b"\x00" if version == 5 else b"")
        session.send(packet(CONNACK, 0, body))
        return session

    def _drop(self, session: Optional[Session], clean: bool) -> None:
        if session is None or self.sessions.get(session.client_id) is not session:
            return
        del self.sessions[session.client_id]
        if session.will is not None and not clean:
            self._route(session.will)

    def _dispatch(self, s: Session, kind: int, flags: int, r: Reader) -> None:
        if kind == PUBLISH:
            self._publish(s, flags, r)
        elif kind == PUBREL:
            s.send(packet(PUBCOMP, 0, struct.pack("!H", r.u16())))
        elif kind == SUBSCRIBE:
            self._subscribe(s, r)
        elif kind == UNSUBSCRIBE:
            self._unsubscribe(s, r)
        elif kind == PINGREQ:
            s.send(packet(PINGRESP, 0, b""))
        elif kind in (PUBACK, PUBREC, PUBCOMP):
            pass                          # acks for our deliveries: nothing is retried
        else:
            raise ProtocolError(f"unsupported packet type {kind}")

    def _publish(self, s: Session, flags: int, r: Reader) -> None:
        qos, retain = (flags >> 1) & 3, bool(flags & 1)
        topic = r.string()
        packet_id = r.u16() if qos else 0
        if s.version == 5:
            r.skip_properties()
        msg = Message(topic, r.rest(), qos, retain)
        if qos == 1:
            s.send(packet(PUBACK, 0, struct.pack("!H", packet_id)))
        elif qos == 2:
            s.send(packet(PUBREC, 0, struct.pack("!H", packet_id)))
        self._route(msg)

    def _route(self, msg: Message) -> None:
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        for session in list(self.sessions.values()):
            granted = [q for f, q in session.subscriptions.items() if topic_matches(f, msg.topic)]
            if granted:
                session.deliver(msg, max(granted), retain=False)

    def _subscribe(self, s: Session, r: Reader) -> None:
        packet_id = r.u16()
        if s.version == 5:
            r.skip_properties()
        codes = bytearray()
        new: List[Tuple[str, int]] = []
        while r.pos < len(r.data):
            topic_filter, options = r.string(), r.u8()
            qos = min(options & 3, 1)
            s.subscriptions[topic_filter] = qos
            new.append((topic_filter, qos))
            codes.append(qos)
        props = b"\x00" if s.version == 5 else b""
        s.send(packet(SUBACK, 0, struct.pack("!H", packet_id) + props + bytes(codes)))
        for topic_filter, qos in new:
            for msg in list(self.retained.values()):
                if topic_matches(topic_filter, msg.topic):
                    s.deliver(msg, qos, retain=True)

    def _unsubscribe(self, s: Session, r: Reader) -> None:
        packet_id = r.u16()
        if s.version == 5:
            r.skip_properties()
        count = 0
        while r.pos < len(r.data):
            s.subscriptions.pop(r.string(), None)
            count += 1
        body = struct.pack("!H", packet_id)
        if s.version == 5:
            body += b"\x00" + bytes(count)
        s.send(packet(UNSUBACK, 0, body))


def main() -> None:
    """`python -m edged.mqtt.embedded_broker [PORT]`: run in the foreground."""
    import sys

    logging.basicConfig(level=logging.INFO)
    broker = EmbeddedBroker(port=int(sys.argv[1]) if len(sys.argv) > 1 else 1883).start()
    print(f"listening on {broker.url}; Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        broker.stop()


if __name__ == "__main__":
    main()
