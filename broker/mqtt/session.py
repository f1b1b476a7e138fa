"""The per-client MQTT protocol machine (sans-I/O: bytes and ``now`` in, bytes out).

Two objects, because a session outlives its network connections:

* ``SessionState`` is what MQTT calls the session: client id, subscriptions,
  outgoing QoS 1/2 messages in flight, incoming QoS 2 packet ids awaiting PUBREL, the
  queue of messages waiting for an inflight slot (also the offline queue while the
  client is away) and the session expiry. The router keeps it by client id.
* ``Protocol`` is one network connection: the decoder, the CONNECT handshake,
  keepalive, topic aliases, the will, and the output buffer the driver (trio,
  ``kefu.broker.connection``) writes to the socket. It talks to the router through
  the small ``BrokerPort`` interface below, synchronously, so the whole broker below
  the trio driver is deterministic and testable with packets alone.

Every inbound packet goes through one table per state (``_BEFORE_CONNECT``,
``_CONNECTED``): a packet type missing from the table is a protocol error.

QoS flows
---------
Inbound QoS 1: the message is routed, then PUBACK (5.0: 0x10 "no matching
subscribers" or 0x87 "not authorized" when that is what happened).

Inbound QoS 2 (exactly once, "method A" of the spec): the first PUBLISH with a packet
id is routed at once and the id is remembered in ``SessionState.qos2_in``; PUBREC is
sent. A PUBLISH with the same id (DUP redelivery) before PUBREL is *not* routed
again, only PUBREC'd again. PUBREL forgets the id and is answered with PUBCOMP
(5.0: 0x92 when the id was unknown). ``qos2_in`` belongs to the session, so
exactly-once holds across a reconnect. More than our receive maximum of ids
awaiting PUBREL is 0x93 (receive maximum exceeded).

Outbound QoS 1/2 and the inflight window: a message for a subscriber gets a packet
id only when it is actually written; at most ``send_quota`` (the client's receive
maximum, capped by ``mqtt.receive_maximum``) are unacknowledged at a time
(``SessionState.inflight``: packet id -> delivery). The rest wait in
``SessionState.pending`` (bounded by ``mqtt.max_offline_messages``, the drop policy
decides what goes when it is full) and are released in order as PUBACKs/PUBCOMPs
free slots. For QoS 2 a PUBREC turns the inflight entry into ``RELEASED`` and a
PUBREL goes out; PUBCOMP frees the slot. Nothing is resent on a live connection
([MQTT-4.4.0-1]); on a reconnect with a present session every unacknowledged
PUBLISH is resent with DUP set and every RELEASED id gets its PUBREL again.

QoS 0 to a connected client is written straight into the output buffer, which is
bounded in bytes (``mqtt.max_queued_bytes``); a full buffer drops per policy and
counts. QoS 0 is not queued for an offline session.

Acknowledgement after commit (``kefu.broker.persist``): when ``broker.publish``
returns None the message is routed but not yet stored, so its PUBACK/PUBREC is
*held*: ``held`` keeps every acknowledgement owed, in the order the PUBLISHes came
([MQTT-4.6.0-2]); one that is decided at once (an ACL refusal) but follows a held one
waits behind it. ``release_held(codes, now)`` is the "committed" input: it fills in the
oldest undecided entries and writes every decided one at the front. ``unavailable(now)``
is the "cannot store" input: nothing held is acknowledged and the connection closes
(5.0: DISCONNECT 0x89 server busy) so the client sends those messages again after
reconnecting. A held QoS 2 id counts as seen at once (a DUP is not routed twice).
Deliveries and acknowledgements of stored messages to persistent sessions are told to
the broker (``delivery_sent``, ``delivery_pubrec``, ``delivery_done``,
``inbound_released``) so it can keep the stored queue in step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from .codec import Decoder, UnsupportedProtocolVersion, encode
from .message import Limits, Message, Stats
from .packets import (
    MQTT_5,
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    Properties,
    ProtocolError,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode as RC,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)

__all__ = ["Limits", "Message", "Protocol", "SessionState", "Stats", "RELEASED"]

# Protocol states.
CONNECTING, AUTHENTICATING, CONNECTED, CLOSED = "connecting", "authenticating", "connected", "closed"

NEVER_EXPIRES = 0xFFFFFFFF
RELEASED = "released"  # an inflight QoS 2 id after PUBREC: PUBREL sent, PUBCOMP awaited
MAX_WRITE_BATCH = 256 * 1024


class SessionState:
    """The persistent part of a client: survives reconnects while it has not expired."""

    __slots__ = (
        "client_id", "username", "subscriptions", "inflight", "pending", "qos2_in", "expiry",
        "next_pid", "proto", "dropped", "limits", "stats", "will", "will_at", "expires_at",
        "throttled", "last_ack", "queued_bytes", "__weakref__",
    )

    def __init__(self, client_id: str, limits: Limits, stats: Stats) -> None:
        self.client_id = client_id
        self.username: str | None = None
        # filter as sent -> (granted qos, no local, retain as published, subscription ids)
        self.subscriptions: dict = {}
        # packet id -> (msg, qos, retain, sub_ids, packet bytes, encoding tag) or RELEASED;
        # the tag (True: 5.0, False: 3.x, "alias") says whether a resume must re-encode.
        self.inflight: dict = {}
        # Created on first use (most sessions never need them: memory per connection).
        self.pending: deque | None = None  # (msg, qos, retain, sub_ids) waiting for a slot
        self.qos2_in: set[int] | None = None
        self.expiry = 0  # session expiry interval in seconds (NEVER_EXPIRES: never)
        self.next_pid = 1
        self.proto: Protocol | None = None
        self.dropped = 0
        self.limits = limits
        self.stats = stats
        self.will: tuple | None = None  # (Will, username) waiting for its delay (router timers)
        self.will_at: float | None = None
        self.expires_at: float | None = None  # set while disconnected
        # Publishers paused because this session's queue is long (router back-pressure),
        # and when its client last acknowledged a QoS 1/2 delivery (or, when nothing
        # was in flight, when the next one went out): "now - last_ack" is how long it
        # has owed an acknowledgement.
        self.throttled: list | None = None
        self.last_ack = float("-inf")
        self.queued_bytes = 0  # payload bytes in ``pending`` (mqtt.max_queued_stored_bytes)

    def __repr__(self) -> str:
        return f"SessionState({self.client_id!r}, connected={self.proto is not None})"

    def release_throttled(self) -> None:
        """Let the publishers paused for this session read again."""
        paused = self.throttled
        if paused:
            self.throttled = None
            for p in paused:
                if p.paused_by is self:
                    p.paused_by = None
                    p.resume()

    def alloc_pid(self) -> int:
        pid = self.next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid % 65535 + 1
        self.next_pid = pid % 65535 + 1
        return pid

    def deliver(self, msg: Message, qos: int, retain: bool, sub_ids, now) -> None:
        """Hand one message to this session (connected or not) at the given QoS."""
        proto = self.proto
        if qos == 0:
            if proto is not None:
                proto.send0(msg, retain, sub_ids, now)
            return
        if proto is not None and not self.pending and len(self.inflight) < proto.send_quota:
            proto.send_qos(msg, qos, retain, sub_ids, now)
            return
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        limits = self.limits
        cap = limits.max_stored_bytes
        size = len(msg.payload)
        if len(pending) >= limits.max_offline_messages or (cap and self.queued_bytes + size > cap):
            # Full in messages or in bytes (mqtt.max_queued_stored_bytes): the drop policy.
            if not limits.drop_oldest or not pending or (cap and size > cap):
                self.dropped += 1
                self.stats.dropped += 1
                return
            while pending and (len(pending) >= limits.max_offline_messages
                               or (cap and self.queued_bytes + size > cap)):
                self.unhold(pending.popleft()[0])
                self.dropped += 1
                self.stats.dropped += 1
        pending.append((msg, qos, retain, sub_ids))
        self.hold(msg)

    def hold(self, msg: Message) -> None:
        """Count a message that entered ``pending`` (this session's and its publisher's bytes)."""
        size = len(msg.payload)
        self.queued_bytes += size
        origin = msg.origin
        if origin:
            held = self.stats.held_by_origin
            held[origin] = held.get(origin, 0) + size

    def unhold(self, msg: Message) -> None:
        """The reverse of ``hold``: a message left ``pending`` (sent, dropped, session ended)."""
        size = len(msg.payload)
        self.queued_bytes -= size
        origin = msg.origin
        if origin:
            held = self.stats.held_by_origin
            left = held.get(origin, 0) - size
            if left > 0:
                held[origin] = left
            else:
                held.pop(origin, None)

    def clear_pending(self) -> None:
        """Forget the queue (the session ended), releasing what it held."""
        pending = self.pending
        if pending:
            for entry in pending:
                self.unhold(entry[0])
        self.pending = None
        self.queued_bytes = 0


def _ack(b0: int, pid: int, rc: int, v5: bool) -> bytes:
    if rc and v5:
        return bytes((b0, 3, pid >> 8, pid & 0xFF, rc))
    return bytes((b0, 2, pid >> 8, pid & 0xFF))


class BrokerPort:
    """What the machine needs from the router (``kefu.broker.router.Router`` implements it).

    Documented as a class so tests can see the contract; the router is duck-typed.
    """

    stats: Stats

    def new_client_id(self) -> str: ...
    def authenticate(self, proto: Protocol, connect: Connect) -> int | None:
        """0 accept, a reason code to refuse, or None: call ``proto.auth_request`` later."""
    def attach(self, proto: Protocol, now: float) -> tuple[SessionState, bool]:
        """Bind the session for ``proto.client_id`` (takeover, clean start); -> (session, present)."""
    def publish(self, proto: Protocol, topic: str, payload: bytes, qos: int, retain: bool,
                props, now: float, pid: int | None = None) -> int | None:
        """The PUBACK/PUBREC code, or None: hold it until ``proto.release_held``."""
    def delivery_sent(self, session: SessionState, msg: Message, pid: int) -> None:
        """A stored message went out to a persistent session with this packet id."""
    def delivery_pubrec(self, session: SessionState, pid: int) -> None: ...
    def delivery_done(self, session: SessionState, pid: int) -> None:
        """PUBACK / PUBCOMP (or a refusing PUBREC) from a persistent session."""
    def inbound_released(self, session: SessionState, pid: int) -> None:
        """PUBREL from a persistent session for an inbound QoS 2 message."""
    def subscribe(self, proto: Protocol, subscriptions, sub_id, now: float) -> tuple[list, list]: ...
    def unsubscribe(self, proto: Protocol, filters, now: float) -> list: ...
    def connected(self, proto: Protocol, session_present: bool, now: float) -> None:
        """CONNACK sent (hooks, statistics)."""
    def detach(self, proto: Protocol, now: float) -> None:
        """The connection ended (will, session expiry, hooks)."""


class Protocol:
    """One client connection's protocol machine. See the module docstring."""

    __slots__ = (
        "broker", "limits", "stats", "peer", "decoder", "state", "_handlers", "version", "v5",
        "session", "client_id", "username", "clean_start", "keep_alive", "session_expiry",
        "connect_expiry", "will", "will_delay", "send_quota", "client_max_packet", "aliases",
        "alias_out_max", "aliases_out", "_pinned", "deadline", "_ka_window", "out", "queued",
        "writing", "wake", "dropped", "error", "close_reason", "disconnect_code", "auth_request",
        "pub_acl", "_pending", "held", "_undecided", "paused_by", "resume", "__weakref__",
    )

    def __init__(self, broker, limits: Limits, peer: str = "") -> None:
        self.broker = broker
        self.limits = limits
        self.stats: Stats = broker.stats
        self.peer = peer
        self.decoder = Decoder(server=True, max_packet_size=limits.max_packet_size)
        self.state = CONNECTING
        self._handlers = self._BEFORE_CONNECT
        self.version: int | None = None
        self.v5 = False
        self.session: SessionState | None = None
        self.client_id = ""
        self.username: str | None = None
        self.clean_start = True
        self.keep_alive = 0
        self.session_expiry = 0
        self.connect_expiry = 0
        self.will: Will | None = None
        self.will_delay = 0
        self.send_quota = limits.receive_maximum
        self.client_max_packet = 1 << 28
        self.aliases: dict[int, str] | None = None  # inbound: alias -> topic
        self.alias_out_max = 0  # the client's topic alias maximum (5.0); 0: none sent
        self.aliases_out: dict[str, int] | None = None  # a dict when alias_out_max > 0
        self._pinned: set[int] | None = None
        self.deadline: float | None = None
        self._ka_window: float | None = None
        # Output: chunks not yet taken by the writer, their size, and bytes being written.
        self.out: list[bytes] = []
        self.queued = 0
        self.writing = 0
        self.wake = _noop  # the driver's "output available" callback
        self.dropped = 0
        # Why the connection ended (for the driver's one log line).
        self.error: ProtocolError | None = None
        self.close_reason = ""
        self.disconnect_code: int | None = None
        self.auth_request: Connect | None = None
        self.pub_acl = None  # per-connection cache of publish decisions: topic -> bool
        self._pending = None
        self.held: deque | None = None  # [qos, packet id, code or None] owed, in PUBLISH order
        self._undecided: deque | None = None  # the entries of ``held`` waiting for their commit
        # Back-pressure: the subscriber session whose queue this publisher must wait for
        # (the router sets it; input stops after the current packet until ``resume()``).
        self.paused_by: SessionState | None = None
        self.resume = _noop  # the driver's "read again" callback

    def __repr__(self) -> str:
        return f"Protocol({self.client_id!r}, {self.state}, peer={self.peer!r})"

    # ------------------------------------------------------------------ input
    def start(self, now: float) -> None:
        """The connection opened: CONNECT must arrive within ``limits.connect_timeout``."""
        self.deadline = now + self.limits.connect_timeout

    def receive_bytes(self, data, now: float) -> None:
        """Process received bytes: replies go to ``out``, routing happens synchronously."""
        if self.state is CLOSED or self.state is AUTHENTICATING:
            if self.state is AUTHENTICATING and data:
                self.decoder.feed(data)
            return
        decoder = self.decoder
        if data:
            decoder.feed(data)
        got = False
        try:
            while True:
                packet = decoder.next_packet()
                if packet is None:
                    break
                got = True
                handler = self._handlers.get(type(packet))
                if handler is None:
                    self._unexpected(packet)
                handler(self, packet, now)
                if self.state is not CONNECTED or self.paused_by is not None:
                    break
        except UnsupportedProtocolVersion as e:
            self.error = e
            self._write(encode(ConnAck(reason_code=RC.UNSUPPORTED_PROTOCOL_VERSION), 4))
            self._finish(now, "unsupported protocol version")
            return
        except ProtocolError as e:
            self.protocol_error(e, now)
            return
        if got and self._ka_window is not None and self.state is CONNECTED:
            self.deadline = now + self._ka_window

    def _unexpected(self, packet) -> None:
        name = type(packet).__name__.upper()
        if self.state is CONNECTING:
            raise ProtocolError(RC.PROTOCOL_ERROR, f"first packet must be CONNECT, got {name} [MQTT-3.1.0-1]")
        if isinstance(packet, Connect):
            raise ProtocolError(RC.PROTOCOL_ERROR, "second CONNECT on one connection [MQTT-3.1.0-2]")
        raise ProtocolError(RC.PROTOCOL_ERROR, f"{name} may not be sent by a client")

    def protocol_error(self, e: ProtocolError, now: float) -> None:
        """The peer broke the protocol: 5.0 gets CONNACK/DISCONNECT with the code, 3.x a close."""
        if self.state is CLOSED:
            return
        self.error = e
        self.stats.malformed += 1
        if self.v5:
            if self.state is CONNECTED:
                self._write(encode(Disconnect(e.reason_code), MQTT_5))
            elif e.reason_code in _CONNACK_OK:
                self._write(encode(ConnAck(reason_code=e.reason_code), MQTT_5))
        self._finish(now, "protocol error")

    # ------------------------------------------------------------------ CONNECT
    def _on_connect(self, c: Connect, now: float) -> None:
        lim = self.limits
        v = c.protocol_level
        self.version = v
        self.v5 = v5 = v == MQTT_5
        props = c.properties
        if v5 and props.authentication_method is not None:
            return self._refuse(RC.BAD_AUTHENTICATION_METHOD, now, "enhanced authentication is not supported")
        client_id = c.client_id
        assigned = None
        if not client_id:
            if not v5 and not c.clean_start:  # [MQTT-3.1.3-8]
                return self._refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, now, "empty client id needs clean session")
            client_id = self.broker.new_client_id()
            if v5:
                assigned = client_id
        ka = c.keep_alive
        server_ka = None
        if lim.max_keepalive and (ka == 0 or ka > lim.max_keepalive):
            if v5:  # told in CONNACK (Server Keep Alive), as Mosquitto does
                ka = server_ka = lim.max_keepalive
            elif ka:  # 3.1.1 cannot be told: refuse (keep alive 0, "none", is accepted as is)
                return self._refuse(RC.CLIENT_IDENTIFIER_NOT_VALID, now,
                                    f"keep alive {ka} above mqtt.max_keepalive {lim.max_keepalive}")
        if v5:
            expiry = props.session_expiry_interval or 0
        else:
            expiry = 0 if c.clean_start else NEVER_EXPIRES
        capped = min(expiry, lim.max_session_expiry)
        will = c.will
        if will is not None:
            wqos, wretain = will.qos, will.retain
            if wqos > lim.maximum_qos:
                if v5:
                    return self._refuse(RC.QOS_NOT_SUPPORTED, now, f"will QoS {wqos} above mqtt.maximum_qos")
                wqos = lim.maximum_qos
            if wretain and not lim.retain_available:
                if v5:
                    return self._refuse(RC.RETAIN_NOT_SUPPORTED, now, "retained will but retain is off")
                wretain = False
            will = Will(will.topic, will.payload, wqos, wretain, will.properties)
        self.client_id = client_id
        self.username = c.username
        self.clean_start = c.clean_start
        self.keep_alive = ka
        self.session_expiry = capped
        self.connect_expiry = expiry
        self._pending = (c, will, assigned, server_ka, expiry != capped and v5)
        rc = self.broker.authenticate(self, c)
        if rc is None:
            self.state = AUTHENTICATING
            self.auth_request = c
            return
        self._complete_connect(rc, now)

    def auth_result(self, rc: int, now: float) -> None:
        """The driver's answer to ``auth_request`` (authentication run off the event loop)."""
        if self.state is not AUTHENTICATING:
            return
        self.auth_request = None
        self.state = CONNECTING
        self._complete_connect(rc, now)
        if self.state is CONNECTED and self.decoder.pending:
            self.receive_bytes(b"", now)

    def _complete_connect(self, rc: int, now: float) -> None:
        c, will, assigned, server_ka, expiry_changed = self._pending
        self._pending = None
        if rc:
            return self._refuse(rc, now, "authentication refused")
        v5 = self.v5
        lim = self.limits
        props = c.properties
        if will is not None:
            self.will = will  # the router turns it into a Message when it is published
            self.will_delay = (will.properties.will_delay_interval or 0) if v5 else 0
        if v5:
            rm = props.receive_maximum
            self.send_quota = min(rm, lim.receive_maximum) if rm else lim.receive_maximum
            if props.maximum_packet_size:
                self.client_max_packet = props.maximum_packet_size
            self.alias_out_max = props.topic_alias_maximum or 0
            if self.alias_out_max:
                self.aliases_out = {}
        self._ka_window = self.keep_alive * 1.5 if self.keep_alive else None
        self.deadline = now + self._ka_window if self._ka_window else None
        session, present = self.broker.attach(self, now)
        self.session = session
        self.state = CONNECTED
        self._handlers = self._CONNECTED
        self.stats.connected += 1
        if v5:
            cp = {}
            if assigned is not None:
                cp["assigned_client_identifier"] = assigned
            if server_ka is not None:
                cp["server_keep_alive"] = server_ka
            if expiry_changed:
                cp["session_expiry_interval"] = self.session_expiry
            if lim.receive_maximum != 65535:
                cp["receive_maximum"] = lim.receive_maximum
            if lim.topic_alias_maximum:
                cp["topic_alias_maximum"] = lim.topic_alias_maximum
            if lim.maximum_qos < 2:
                cp["maximum_qos"] = lim.maximum_qos
            if not lim.retain_available:
                cp["retain_available"] = 0
            cp["maximum_packet_size"] = lim.max_packet_size
            if props.request_response_information:
                cp["response_information"] = lim.response_prefix + self.client_id
            ack = ConnAck(present, 0, NO_PROPERTIES if not cp else Properties(**cp))
            self._write(encode(ack, MQTT_5))
        else:
            self._write(encode(ConnAck(present, 0), self.version))
        if present:
            self._resume(now)
        self.broker.connected(self, present, now)

    def _refuse(self, rc: int, now: float, why: str) -> None:
        self._write(encode(ConnAck(False, rc), self.version if self.version in (3, 4, 5) else 4))
        self.error = ProtocolError(rc, why)
        self._finish(now, "connect refused")

    def _resume(self, now: float) -> None:
        """Session present: resend unacknowledged messages (DUP), PUBRELs, then the queue."""
        s = self.session
        v5 = self.v5
        for pid, entry in list(s.inflight.items()):
            if entry is RELEASED:
                self._write(bytes((0x62, 2, pid >> 8, pid & 0xFF)))
                continue
            msg, qos, retain, sub_ids, packet, was_v5 = entry
            if was_v5 != v5:  # the client came back speaking another version: re-encode
                # Delivery already started, so expiry no longer removes it (spec 3.3.2.3.3).
                when = now if not msg.expired(now) else msg.expires_at - 1
                prefix, suffix = msg.encoded(v5, qos, retain, sub_ids, when)
                packet = prefix + pid.to_bytes(2, "big") + suffix
                s.inflight[pid] = (msg, qos, retain, sub_ids, packet, v5)
            self._write(bytes((packet[0] | 0x08,)) + packet[1:])  # [MQTT-3.3.1-1] DUP
            self.stats.messages_sent += 1
        self.fill_window(now)

    # ------------------------------------------------------------------ PUBLISH in
    def _on_publish(self, p: Publish, now: float) -> None:
        self.stats.messages_received += 1
        qos = p.qos
        topic = p.topic
        props = p.properties
        if props is not NO_PROPERTIES:
            alias = props.topic_alias
            if alias is not None:
                if alias > self.limits.topic_alias_maximum:  # 0 is rejected by the codec
                    raise ProtocolError(RC.TOPIC_ALIAS_INVALID,
                                        f"topic alias {alias} above our maximum {self.limits.topic_alias_maximum}")
                aliases = self.aliases
                if aliases is None:
                    aliases = self.aliases = {}
                if topic:
                    aliases[alias] = topic
                else:
                    topic = aliases.get(alias)
                    if topic is None:
                        raise ProtocolError(RC.PROTOCOL_ERROR, f"topic alias {alias} was never set")
                props = replace(props, topic_alias=None)
        if qos:
            if qos > self.limits.maximum_qos and self.v5:  # [MQTT-3.2.2-11]
                raise ProtocolError(RC.QOS_NOT_SUPPORTED, f"PUBLISH QoS {qos} above maximum QoS")
            pid = p.packet_id
            if qos == 2:
                s = self.session
                if s.qos2_in is None:
                    s.qos2_in = set()
                if pid in s.qos2_in:  # a redelivery before PUBREL: do not route twice
                    if self.held:  # its first PUBREC may still be waiting for the commit
                        if not any(e[1] == pid and e[0] == 2 for e in self._undecided):
                            self._hold(2, pid, RC.SUCCESS)
                        return
                    self._write(bytes((0x50, 2, pid >> 8, pid & 0xFF)))
                    return
                if len(s.qos2_in) >= self.limits.receive_maximum:
                    raise ProtocolError(RC.RECEIVE_MAXIMUM_EXCEEDED,
                                        f"more than {self.limits.receive_maximum} QoS 2 messages unacknowledged")
        retain = p.retain
        if retain and not self.limits.retain_available:
            if self.v5:  # [MQTT-3.3.1-14]
                raise ProtocolError(RC.RETAIN_NOT_SUPPORTED, "retained PUBLISH but retain is off")
            retain = False  # 3.1.1 cannot be told: deliver it, do not keep it
        rc = self.broker.publish(self, topic, p.payload, qos, retain, props, now, p.packet_id)
        if not qos:
            return
        if rc is None or self.held:  # stored later, or behind one that is: in order
            if self.state is CONNECTED:
                self._hold(qos, pid, rc)
        elif qos == 1:
            self._write(_ack(0x40, pid, rc, self.v5))
        else:
            if rc < 0x80:
                self.session.qos2_in.add(pid)
            self._write(_ack(0x50, pid, rc, self.v5))

    def _hold(self, qos: int, pid: int, rc) -> None:
        held = self.held
        if held is None:
            held = self.held = deque()
            self._undecided = deque()
        entry = [qos, pid, rc]
        held.append(entry)
        if rc is None:
            self._undecided.append(entry)
        if qos == 2 and (rc is None or rc < 0x80):
            self.session.qos2_in.add(pid)  # seen: a DUP before the commit is not routed again

    def release_held(self, codes, now: float) -> None:
        """Input: the oldest ``len(codes)`` held PUBLISHes are committed (codes 0x00 / 0x10);
        write every acknowledgement now decided at the front of ``held``."""
        undecided = self._undecided
        if undecided is None or self.state is not CONNECTED:
            return  # closed meanwhile: nothing is written any more
        for rc in codes:
            undecided.popleft()[2] = rc
        held = self.held
        v5 = self.v5
        while held and held[0][2] is not None:
            qos, pid, rc = held.popleft()
            self._write(_ack(0x40 if qos == 1 else 0x50, pid, rc, v5))

    def unavailable(self, now: float) -> None:
        """Input: what is held cannot be stored now. Acknowledge none of it, forget the held
        QoS 2 ids (so their resends are routed and stored), and close: the client sends
        the messages again after reconnecting (5.0: DISCONNECT 0x89 server busy)."""
        held = self.held
        if held:
            q2 = self.session.qos2_in if self.session is not None else None
            if q2:
                for qos, pid, rc in held:
                    if qos == 2 and rc is None:
                        q2.discard(pid)
            held.clear()
            self._undecided.clear()
        self.close(RC.SERVER_BUSY, now)

    def _on_pubrel(self, p: PubRel, now: float) -> None:
        pid = p.packet_id
        s = self.session.qos2_in
        if s and pid in s:
            s.discard(pid)
            if self.session.expiry:
                self.broker.inbound_released(self.session, pid)
            self._write(bytes((0x70, 2, pid >> 8, pid & 0xFF)))
        else:
            self._write(_ack(0x70, pid, RC.PACKET_IDENTIFIER_NOT_FOUND, self.v5))

    # ------------------------------------------------------------------ PUBLISH out
    def _alias_for(self, topic: str) -> tuple[int, bool]:
        """Outbound topic alias for ``topic``: (alias or 0, newly assigned?)."""
        alias = self.aliases_out.get(topic)
        if alias is not None:
            return alias, False
        n = len(self.aliases_out)
        if n >= self.alias_out_max:
            return 0, False
        return n + 1, True

    def send0(self, msg: Message, retain: bool, sub_ids, now) -> None:
        if self.alias_out_max:
            alias, new = self._alias_for(msg.topic)
            data = msg.encoded(True, 0, retain, sub_ids, now, alias, new)
        else:
            new = False
            data = msg.encoded(self.v5, 0, retain, sub_ids, now)
        if data is None:
            return
        n = len(data)
        if n > self.client_max_packet:  # [MQTT-3.1.2-25]: discard
            return
        if self.queued + self.writing + n > self.limits.max_queued_bytes and not self._make_room(n):
            self.dropped += 1
            self.stats.dropped += 1
            return
        if new:  # the alias exists for the client only once this packet is on its way
            self.aliases_out[msg.topic] = alias
            if self._pinned is None:
                self._pinned = set()
            self._pinned.add(id(data))
        self.stats.messages_sent += 1
        out = self.out
        out.append(data)
        self.queued += n
        if len(out) == 1:
            self.wake()

    def send_qos(self, msg: Message, qos: int, retain: bool, sub_ids, now) -> bool:
        """Write a QoS 1/2 delivery with a fresh packet id (the caller checked the window)."""
        if self.alias_out_max:
            alias, new = self._alias_for(msg.topic)
            tmpl = msg.encoded(True, qos, retain, sub_ids, now, alias, new)
        else:
            alias = 0
            tmpl = msg.encoded(self.v5, qos, retain, sub_ids, now)
        if tmpl is None:
            return False
        s = self.session
        pid = s.alloc_pid()
        packet = tmpl[0] + pid.to_bytes(2, "big") + tmpl[1]
        if len(packet) > self.client_max_packet:
            return False
        if alias and new:
            self.aliases_out[msg.topic] = alias
        # The tag says how it was encoded: an aliased packet is re-encoded on resume,
        # aliases do not survive the connection [MQTT-3.3.2-7].
        if not s.inflight:
            s.last_ack = now  # nothing was owed: the client is not behind before now
        s.inflight[pid] = (msg, qos, retain, sub_ids, packet, "alias" if alias else self.v5)
        if msg.rec is not None and s.expiry:
            self.broker.delivery_sent(s, msg, pid)
        self.stats.messages_sent += 1
        out = self.out
        out.append(packet)
        self.queued += len(packet)
        if len(out) == 1:
            self.wake()
        return True

    def fill_window(self, now) -> None:
        """Move queued QoS 1/2 messages into free inflight slots, in order."""
        s = self.session
        pending = s.pending
        inflight = s.inflight
        quota = self.send_quota
        while pending and len(inflight) < quota:
            msg, qos, retain, sub_ids = pending.popleft()
            s.unhold(msg)
            self.send_qos(msg, qos, retain, sub_ids, now)
        if s.throttled and len(pending) <= self.limits.max_offline_messages // 4:
            s.release_throttled()

    def _on_puback(self, p: PubAck, now: float) -> None:
        s = self.session
        entry = s.inflight.get(p.packet_id)
        if entry is None or entry is RELEASED or entry[1] != 1:
            return  # unknown id: nothing to do (spec 4.4 leaves it to us)
        del s.inflight[p.packet_id]
        s.last_ack = now
        if entry[0].rec is not None and s.expiry:
            self.broker.delivery_done(s, p.packet_id)
        if s.pending:
            self.fill_window(now)

    def _on_pubrec(self, p: PubRec, now: float) -> None:
        s = self.session
        pid = p.packet_id
        entry = s.inflight.get(pid)
        if entry is None or (entry is not RELEASED and entry[1] != 2):
            self._write(_ack(0x62, pid, RC.PACKET_IDENTIFIER_NOT_FOUND, self.v5))
            return
        stored = entry is not RELEASED and entry[0].rec is not None and s.expiry
        if p.reason_code >= 0x80:  # the client refused it: the flow ends here
            del s.inflight[pid]
            if stored:
                self.broker.delivery_done(s, pid)
            if s.pending:
                self.fill_window(now)
            return
        if stored:
            self.broker.delivery_pubrec(s, pid)
        s.inflight[pid] = RELEASED
        self._write(bytes((0x62, 2, pid >> 8, pid & 0xFF)))

    def _on_pubcomp(self, p: PubComp, now: float) -> None:
        s = self.session
        if s.inflight.get(p.packet_id) is RELEASED:
            del s.inflight[p.packet_id]
            s.last_ack = now
            if s.expiry:
                self.broker.delivery_done(s, p.packet_id)
            if s.pending:
                self.fill_window(now)

    # ------------------------------------------------------------------ the rest
    def _on_subscribe(self, p: Subscribe, now: float) -> None:
        ids = p.properties.subscription_identifiers
        sub_id = ids[0] if ids else None
        codes, retained = self.broker.subscribe(self, p.subscriptions, sub_id, now)
        self._write(encode(SubAck(p.packet_id, tuple(codes)), self.version))
        if retained:
            session = self.session
            for msg, qos, sub_ids in retained:
                session.deliver(msg, qos, True, sub_ids, now)

    def _on_unsubscribe(self, p: Unsubscribe, now: float) -> None:
        codes = self.broker.unsubscribe(self, p.topic_filters, now)
        self._write(encode(UnsubAck(p.packet_id, tuple(codes) if self.v5 else ()), self.version))

    def _on_pingreq(self, p: PingReq, now: float) -> None:
        self._write(b"\xd0\x00")

    def _on_disconnect(self, p: Disconnect, now: float) -> None:
        self.disconnect_code = rc = p.reason_code
        if self.v5:
            se = p.properties.session_expiry_interval
            if se is not None:
                if self.connect_expiry == 0 and se != 0:  # [MQTT-3.14.2-2]
                    raise ProtocolError(RC.PROTOCOL_ERROR, "DISCONNECT sets a session expiry after 0 at CONNECT")
                self.session_expiry = min(se, self.limits.max_session_expiry)
                self.session.expiry = self.session_expiry
        if rc == 0:  # [MQTT-3.1.2-10]: a normal disconnect deletes the will (0x04 keeps it)
            self.will = None
        self._finish(now, "client disconnected")

    def _on_auth(self, p: Auth, now: float) -> None:
        raise ProtocolError(RC.PROTOCOL_ERROR, "AUTH without an authentication method at CONNECT")

    _BEFORE_CONNECT = {Connect: _on_connect}
    _CONNECTED = {
        Publish: _on_publish,
        PubAck: _on_puback,
        PubRec: _on_pubrec,
        PubRel: _on_pubrel,
        PubComp: _on_pubcomp,
        Subscribe: _on_subscribe,
        Unsubscribe: _on_unsubscribe,
        PingReq: _on_pingreq,
        Disconnect: _on_disconnect,
        Auth: _on_auth,
    }

    # ------------------------------------------------------------------ closing
    def keepalive_expired(self, now: float) -> None:
        """The driver's deadline passed without a packet ([MQTT-3.1.2-24]: 1.5x keep alive)."""
        if self.state is CLOSED:
            return
        if self.state is CONNECTED and self.v5:
            self._write(encode(Disconnect(RC.KEEP_ALIVE_TIMEOUT), MQTT_5))
        self.close_reason = "keep alive timeout" if self.state is CONNECTED else "no CONNECT in time"
        self._finish(now, self.close_reason)

    def close(self, reason_code: int, now: float, *, will: bool = True) -> None:
        """Server-initiated close (takeover 0x8E, shutdown 0x8B, admin): DISCONNECT for 5.0."""
        if self.state is CLOSED:
            return
        if not will:
            self.will = None
        if self.state is CONNECTED and self.v5:
            self._write(encode(Disconnect(reason_code), MQTT_5))
        self._finish(now, f"closed by the server (0x{reason_code:02X})")

    def connection_lost(self, now: float) -> None:
        """The transport closed or broke (EOF, reset): the will applies."""
        if self.state is not CLOSED:
            self._finish(now, "connection lost")

    def _finish(self, now: float, why: str) -> None:
        if not self.close_reason:
            self.close_reason = why
        was_connected = self.state is CONNECTED
        self.state = CLOSED
        self._handlers = {}
        self.deadline = None
        if was_connected:
            self.stats.connected -= 1
            self.broker.detach(self, now)
        self.wake()

    @property
    def closed(self) -> bool:
        return self.state is CLOSED

    # ------------------------------------------------------------------ output
    def _write(self, data: bytes) -> None:
        out = self.out
        out.append(data)
        self.queued += len(data)
        if len(out) == 1:
            self.wake()

    def _make_room(self, n: int) -> bool:
        """Queue over its byte limit: drop_oldest evicts queued QoS 0 PUBLISHes (to 90%)."""
        if not self.limits.drop_oldest:
            return False
        target = self.limits.max_queued_bytes * 9 // 10 - n - self.writing
        keep = []
        size = self.queued
        evicted = 0
        pinned = self._pinned or ()
        for chunk in self.out:
            # A QoS 0 PUBLISH, unless it sets up an outbound topic alias others rely on.
            if size > target and (chunk[0] & 0xF6) == 0x30 and id(chunk) not in pinned:
                size -= len(chunk)
                evicted += 1
                continue
            keep.append(chunk)
        self.out[:] = keep
        self.queued = size
        self.dropped += evicted
        self.stats.dropped += evicted
        return size + self.writing + n <= self.limits.max_queued_bytes

    def take_output(self) -> bytes:
        """Everything queued (up to a batch limit) as one buffer, for one send_all."""
        out = self.out
        if not out:
            return b""
        if self.queued <= MAX_WRITE_BATCH:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            if self._pinned:
                self._pinned.clear()
        else:
            size = 0
            i = 0
            for chunk in out:
                size += len(chunk)
                i += 1
                if size >= MAX_WRITE_BATCH:
                    break
            data = b"".join(out[:i])
            del out[:i]
        n = len(data)
        self.queued -= n
        self.writing += n
        return data

    def output_sent(self, n: int) -> None:
        """The driver finished writing ``n`` bytes returned by ``take_output``."""
        self.writing -= n
        self.stats.bytes_sent += n

    def take_all(self) -> bytes:
        """Tests and tools: all output at once, marked as sent."""
        chunks = []
        while self.out:
            data = self.take_output()
            self.output_sent(len(data))
            chunks.append(data)
        return b"".join(chunks)


def _noop() -> None:
    pass


_CONNACK_OK = frozenset({0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C,
                         0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F})
