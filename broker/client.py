"""An MQTT client session, sans-I/O: bytes in, events and bytes out.

What kefu needs to attach to an external broker (kefu/attach.py drives it over a
trio stream): CONNECT with a persistent session, SUBSCRIBE, QoS 0/1 PUBLISH both
ways, PINGREQ, DISCONNECT; MQTT 5.0 or 3.1.1 (``version`` 5 or 4). It uses the
broker's own codec (``kefu.broker.mqtt.codec``) in client mode, so the wire format
is the one the embedded broker is tested against.

One ``ClientSession`` lives across connections (it *is* the client side of the
persistent session): ``connect_packet()`` starts each connection, and on a CONNACK
the outbound QoS 1 messages the broker has not acknowledged are sent again (DUP set,
same packet id: [MQTT-4.4.0-1]) before any new one.

Inbound QoS 1 messages are acknowledged by the caller (``puback``) once it has done
with them; acknowledgements leave in the order the messages came ([MQTT-4.6.0-2]),
so ``puback`` on a later message only queues it behind the earlier ones.
A message the application is done with but whose PUBACK was lost with the connection
(or with a broker that stopped before reading it) comes back after reconnecting with
DUP and the same packet id; the session remembers the last ``DONE_MEMORY`` such
(packet id, digest of topic and payload) pairs and recognises it
(``Message.redelivered_done``), so it is not handled twice. Packet ids are reused only
after many other messages, and a new message under a remembered id arrives without DUP,
which makes the session forget the old one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass

from .mqtt.codec import Decoder, encode
from .mqtt.packets import (
    NO_PROPERTIES, ConnAck, Connect, Disconnect, PingReq, PingResp, Properties, ProtocolError, PubAck,
    Publish, PubRec, SubAck, Subscribe, Subscription,
)

MQTT_3_1_1 = 4
MQTT_5 = 5
DONE_MEMORY = 4096  # committed-but-unacknowledged packet ids remembered across a reconnect


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool
    properties: Properties


@dataclass(frozen=True, slots=True)
class Refused:
    reason_code: int  # 5.0 reason code (3.1.1 return codes mapped by the codec)
    reason: str


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    packet_id: int | None
    redelivered_done: bool = False  # handled before; the PUBACK was lost with the connection


@dataclass(frozen=True, slots=True)
class Subscribed:
    packet_id: int
    reason_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    reason_code: int
    reason: str


REFUSALS = {  # CONNACK reason codes (3.1.1 return codes arrive mapped onto these)
    0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error", 0x83: "implementation specific error",
    0x84: "unsupported protocol version", 0x85: "client identifier not valid", 0x86: "bad user name or password",
    0x87: "not authorized", 0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned",
    0x8C: "bad authentication method", 0x90: "topic name invalid", 0x95: "packet too large",
    0x97: "quota exceeded", 0x99: "payload format invalid", 0x9A: "retain not supported", 0x9B: "QoS not supported",
    0x9C: "use another server", 0x9D: "server moved", 0x9F: "connection rate exceeded",
}


def refusal(code: int) -> str:
    """``0x86 bad user name or password``: a CONNACK reason code for a log line."""
    return f"0x{code:02X} {REFUSALS.get(code, 'refused')}"


def _digest(topic: str, payload: bytes) -> bytes:
    return hashlib.blake2b(topic.encode() + b"\x00" + payload, digest_size=16).digest()


class ClientSession:
    def __init__(self, client_id: str, *, version: int = MQTT_5, keep_alive: int = 30,
                 username: str | None = None, password: bytes | None = None, session_expiry: int = 3600,
                 receive_maximum: int = 64, max_packet_size: int = 1 << 20) -> None:
        self.client_id = client_id
        self.version = version
        self.keep_alive = keep_alive
        self.username = username
        self.password = password
        self.session_expiry = session_expiry
        self.receive_maximum = receive_maximum
        self.max_packet_size = max_packet_size
        self.connected = False
        self.generation = 0  # one per connection: a late puback from an older one is ignored
        self.send_window = 65535  # the broker's receive maximum (5.0 CONNACK), else unlimited
        self._decoder: Decoder | None = None
        self._next_pid = 0
        self._out_inflight: OrderedDict[int, tuple[str, bytes]] = OrderedDict()  # pid -> (topic, payload)
        self._out_waiting: deque[tuple[str, bytes, int]] = deque()  # beyond the window, or while away
        self._in_order: deque[list] = deque()  # [pid, done, digest] in arrival order
        self._done: OrderedDict[int, bytes] = OrderedDict()  # pid -> digest: committed, PUBACK lost
        self._subscribing: set[int] = set()
        self.outbound_acked = 0

    # ---------------------------------------------------------------- connection start
    def connect_packet(self) -> bytes:
        """Bytes of the CONNECT opening a new connection (resets per-connection state)."""
        self._decoder = Decoder(server=False, version=self.version, max_packet_size=self.max_packet_size)
        self.connected = False
        self.generation += 1
        # Messages delivered on the old connection and not acknowledged yet come again: what was
        # done is remembered by packet id; what was not done will simply be handled again.
        for pid, done, digest in self._in_order:
            if done:
                self._remember_done(pid, digest)
        self._in_order.clear()
        props = NO_PROPERTIES
        if self.version == MQTT_5:
            props = Properties(session_expiry_interval=self.session_expiry, receive_maximum=self.receive_maximum)
        return encode(Connect(self.client_id, self.version, clean_start=False, keep_alive=self.keep_alive,
                              username=self.username, password=self.password, properties=props), self.version)

    def _remember_done(self, pid: int, digest: bytes) -> None:
        self._done[pid] = digest
        self._done.move_to_end(pid)
        while len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)

    # ---------------------------------------------------------------- bytes in
    def receive(self, data: bytes) -> tuple[list, bytes]:
        """Feed bytes from the broker: (events, bytes to send back now).
        Raises ``ProtocolError`` when the broker broke the protocol (close the connection)."""
        assert self._decoder is not None, "connect_packet() first"
        self._decoder.feed(data)
        events: list = []
        out: list[bytes] = []
        for p in self._decoder:
            if isinstance(p, Publish):
                self._on_publish(p, events, out)
            elif isinstance(p, PubAck):
                if self._out_inflight.pop(p.packet_id, None) is not None:
                    self.outbound_acked += 1
                    out.append(self._fill_window())
            elif isinstance(p, ConnAck):
                self._on_connack(p, events, out)
            elif isinstance(p, SubAck):
                self._subscribing.discard(p.packet_id)
                events.append(Subscribed(p.packet_id, tuple(p.reason_codes)))
            elif isinstance(p, PingResp):
                pass
            elif isinstance(p, Disconnect):
                reason = p.properties.reason_string or ""
                events.append(Closed(p.reason_code, reason or f"broker sent DISCONNECT 0x{p.reason_code:02X}"))
            elif isinstance(p, PubRec):  # kefu never publishes QoS 2
                raise ProtocolError(0x82, "PUBREC for a QoS 1 message")
            else:
                raise ProtocolError(0x82, f"unexpected {type(p).__name__} from the broker")
        return events, b"".join(out)

    def _on_connack(self, p: ConnAck, events: list, out: list) -> None:
        if p.reason_code:
            events.append(Refused(p.reason_code, p.properties.reason_string or ""))
            return
        self.connected = True
        if p.properties.receive_maximum:
            self.send_window = p.properties.receive_maximum
        if not p.session_present:
            self._done.clear()  # a new session redelivers nothing
        events.append(Connected(p.session_present, p.properties))
        # [MQTT-4.4.0-1]: unacknowledged PUBLISHes again, in their order, with DUP set.
        for pid, (topic, payload) in self._out_inflight.items():
            out.append(encode(Publish(topic, payload, 1, False, True, pid), self.version))
        out.append(self._fill_window())

    def _on_publish(self, p: Publish, events: list, out: list) -> None:
        if p.qos == 0:
            events.append(Message(p.topic, p.payload, 0, None))
            return
        if p.qos == 2:
            raise ProtocolError(0x9B, "QoS 2 PUBLISH on a QoS 1 subscription")
        pid = p.packet_id
        digest = _digest(p.topic, p.payload)
        again = p.dup and self._done.get(pid) == digest
        if again:
            del self._done[pid]
        else:
            self._done.pop(pid, None)  # the id is reused for a new message: forget the old one
        self._in_order.append([pid, again, digest])
        events.append(Message(p.topic, p.payload, 1, pid, redelivered_done=again))
        if again:
            out.append(self._release())

    # ---------------------------------------------------------------- bytes out
    def puback(self, packet_id: int, generation: int) -> bytes:
        """The application is done with inbound message ``packet_id`` received on connection
        ``generation`` (``self.generation`` when it arrived): the PUBACKs now due."""
        if generation != self.generation:
            return b""  # that connection is gone; the broker sends the message again
        for entry in self._in_order:
            if entry[0] == packet_id and not entry[1]:
                entry[1] = True
                break
        return self._release()

    def _release(self) -> bytes:
        out = []
        q = self._in_order
        while q and q[0][1]:
            pid, _, digest = q.popleft()
            # A PUBACK written may still be lost with the connection (or with a broker that
            # stops before reading it): remember the message, so a DUP of it is not handled again.
            self._remember_done(pid, digest)
            if self.connected:
                out.append(encode(PubAck(pid), self.version))
        return b"".join(out)

    def _alloc_pid(self) -> int:
        for _ in range(65535):
            self._next_pid = self._next_pid % 65535 + 1
            if self._next_pid not in self._out_inflight and self._next_pid not in self._subscribing:
                return self._next_pid
        raise RuntimeError("no free packet identifier")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bytes:
        """Queue a message; the bytes to send now (empty while away or the window is full)."""
        self._out_waiting.append((topic, payload, qos))
        return self._fill_window() if self.connected else b""

    def _fill_window(self) -> bytes:
        out = []
        while self._out_waiting and len(self._out_inflight) < self.send_window:
            topic, payload, qos = self._out_waiting.popleft()
            if qos == 0:
                out.append(encode(Publish(topic, payload, 0), self.version))
                continue
            pid = self._alloc_pid()
            self._out_inflight[pid] = (topic, payload)
            out.append(encode(Publish(topic, payload, 1, False, False, pid), self.version))
        return b"".join(out)

    @property
    def outbound_pending(self) -> int:
        """Messages for the broker not acknowledged by it yet (in flight or waiting)."""
        return len(self._out_inflight) + len(self._out_waiting)

    def drop_oldest_waiting(self) -> tuple[str, bytes] | None:
        if not self._out_waiting:
            return None
        topic, payload, _ = self._out_waiting.popleft()
        return topic, payload

    def subscribe(self, filters: list[str], qos: int = 1) -> tuple[int, bytes]:
        pid = self._alloc_pid()
        self._subscribing.add(pid)
        subs = tuple(Subscription(f, qos) for f in filters)
        return pid, encode(Subscribe(pid, subs), self.version)

    def ping(self) -> bytes:
        return encode(PingReq(), self.version)

    def disconnect(self) -> bytes:
        self.connected = False
        return encode(Disconnect(), self.version)

    def lost(self) -> None:
        """The connection ended (any way)."""
        self.connected = False
