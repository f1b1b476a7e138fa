"""Attach mode: the desk on a broker kefu does not run (``[broker] mode = "external"``).

Devices stay on the broker their operators already run (Mosquitto, EMQX, HiveMQ ...).
kefu connects to it as one MQTT client per node (``kefu.broker.client.ClientSession``
driven over a trio TCP or TLS stream) and:

* subscribes the desk's filters as a shared subscription, ``$share/<group>/kefu/c/+/+/in``
  and the agent and alarm filters, so that N kefu nodes split the customer messages and
  each message reaches one node; QoS 1, persistent session (5.0: clean start off and a
  session expiry; 3.1.1: clean session off), so messages that arrive while a node is
  away wait for it on the broker;
* hands each message to the desk's ordered lanes (``DeskGlue.ingest``) and sends the
  PUBACK only after the desk is done with it -- after the commit -- in arrival order. A
  message whose commit failed on storage is not acknowledged: the connection is closed
  and the broker sends it again after the reconnect;
* publishes what the desk publishes (replies, events, offers) to the external broker,
  QoS 1, kept and sent again across reconnects until the broker acknowledges it;
* reconnects by itself with doubling waits (``reconnect_min`` .. ``reconnect_max``, with
  jitter); while it is away ``/readyz`` reports ``broker: false`` and the log says why.

Browsers still reach this node's own bridge (/chat, the console, the HTTP API): their
traffic goes through the local bus (``AttachedBus``) and is not sent to the external broker
when it is for the desk (the desk would otherwise get it twice).
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import ssl
from pathlib import Path
from typing import Awaitable, Callable

import trio

from .bridge.bus import RouterBus
from .broker.client import (
    MQTT_3_1_1, MQTT_5, ClientSession, Closed, Connected, Message, Refused, Subscribed, refusal,
)
from .broker.mqtt.packets import ProtocolError
from .broker.topics import TopicTrie

log = logging.getLogger("kefu.attach")

CONNECT_TIMEOUT = 10.0  # seconds for TCP, TLS and CONNACK
MAX_OUTBOUND = 100_000  # messages for the broker kept while it is away; beyond, the oldest go (counted)

# Handler: (topic, payload, done) where done(exc | None) is called once the desk is done.
Handler = Callable[[str, bytes, Callable[[BaseException | None], None] | None], Awaitable[None]]


class LinkDown(Exception):
    """This connection to the external broker is over (the reason is the message)."""


class _Fallback(Exception):
    """The broker does not speak MQTT 5.0: try 3.1.1."""


def default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:58] or "node"
    return f"kefu-{host}"


def password_of(b) -> bytes | None:
    if b.password_file:
        lines = Path(b.password_file).read_text(encoding="utf-8").splitlines()
        return (lines[0] if lines else "").encode()
    env = os.environ.get("KEFU_BROKER_PASSWORD")
    if env is not None:
        return env.encode()
    return b.password.encode() if b.password else None


def tls_context(b) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=b.cafile or None)
    if b.certfile:
        ctx.load_cert_chain(b.certfile, b.keyfile)
    return ctx


class ExternalLink:
    """One node's connection to the external broker, kept up until cancelled."""

    def __init__(self, b, filters: list[str], handler: Handler | None = None, *,
                 is_storage_error: Callable[[BaseException], bool] = lambda e: False) -> None:
        self.cfg = b
        self.host = b.host
        self.port = b.port or (8883 if b.tls else 1883)
        self.filters = [f"$share/{b.share_group}/{f}" if b.share_group else f for f in filters]
        self.handler = handler
        self.is_storage_error = is_storage_error
        self.version = MQTT_3_1_1 if b.protocol == "3.1.1" else MQTT_5
        self.session = ClientSession(
            b.client_id or default_client_id(), version=self.version, keep_alive=b.keepalive,
            username=b.username or None, password=password_of(b), session_expiry=b.session_expiry,
            receive_maximum=b.receive_maximum)
        self.connected = False
        self.reason = "not connected yet"
        self.connects = 0
        self.received = 0
        self.duplicates_skipped = 0
        self.outbound_dropped = 0
        self._stream: trio.abc.Stream | None = None
        self._send_lock = trio.Lock()
        self._acks_send, self._acks_recv = trio.open_memory_channel(float("inf"))
        self._out_send, self._out_recv = trio.open_memory_channel(float("inf"))  # bounded by MAX_OUTBOUND
        self._busy = 0
        self._idle = trio.Event()
        self._idle.set()
        self._subscribed = trio.Event()
        self._pending: list = []  # events decoded but not handled yet
        self._last_rx = 0.0
        self.down_since: float | None = None

    @property
    def ready(self) -> bool:
        """Connected and subscribed: the node takes its share of the customer messages."""
        return self.connected and self._subscribed.is_set()

    @property
    def address(self) -> str:
        return f"{'mqtts' if self.cfg.tls else 'mqtt'}://{self.host}:{self.port}"

    # ------------------------------------------------------------------ the loop
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, reconnect; ``started(self)`` at once (kefu starts while the broker is down)."""
        wait = self.cfg.reconnect_min
        async with trio.open_nursery() as n:
            n.start_soon(self._ack_loop)
            n.start_soon(self._writer)
            task_status.started(self)
            while True:
                was_up = False
                try:
                    await self._connection()
                except _Fallback as e:
                    self.version = self.session.version = MQTT_3_1_1
                    log.warning("external broker %s: %s; using MQTT 3.1.1", self.address, e)
                    continue
                except LINK_ERRORS as e:
                    self.reason = _describe(e)
                    was_up = self._subscribed.is_set()
                finally:
                    was_connected = self.connected
                    self.connected = False
                    self.session.lost()
                    self._subscribed = trio.Event()
                    if self._stream is not None:
                        await trio.aclose_forcefully(self._stream)
                        self._stream = None
                if was_connected or was_up:
                    wait = self.cfg.reconnect_min
                # Messages handed to the desk on the lost connection finish first: their outcome
                # decides what the session treats as done when the broker sends them again.
                await self._idle.wait()
                delay = wait * random.uniform(0.5, 1.0)
                if self.down_since is None:
                    self.down_since = trio.current_time()
                    log.warning("external broker %s is down (%s): no device messages until it is back; "
                                "retrying in %.1f s", self.address, self.reason, delay)
                else:
                    log.info("external broker %s still down (%s); retrying in %.1f s", self.address, self.reason, delay)
                await trio.sleep(delay)
                wait = min(wait * 2, self.cfg.reconnect_max)

    async def _open(self) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(self.host, self.port)
        if not self.cfg.tls:
            return tcp
        stream = trio.SSLStream(tcp, tls_context(self.cfg), server_hostname=self.cfg.server_name or self.host)
        await stream.do_handshake()
        return stream

    async def _connection(self) -> None:
        s = self.session
        with trio.fail_after(CONNECT_TIMEOUT):
            self._stream = stream = await self._open()
            self._pending = []
            await stream.send_all(s.connect_packet())
            events = await self._until(lambda e: isinstance(e, (Connected, Refused)), fallback=True)
        first = events[-1]
        if isinstance(first, Refused):
            if s.version == MQTT_5 and first.reason_code in (0x84, 0x01) and self.cfg.protocol == "auto":
                raise _Fallback(f"refused MQTT 5.0 (0x{first.reason_code:02X})")
            raise LinkDown(f"connection refused: {refusal(first.reason_code)} {first.reason}".strip())
        self.connected = True
        self.connects += 1
        version = "5.0" if s.version == MQTT_5 else "3.1.1"
        with trio.fail_after(CONNECT_TIMEOUT):
            pid, data = s.subscribe([f for f in self.filters])
            await self._write(data)
            subacks = await self._until(lambda e: isinstance(e, Subscribed) and e.packet_id == pid)
        codes = subacks[-1].reason_codes
        refused = [f for f, c in zip(self.filters, codes) if c >= 0x80]
        if refused:
            raise LinkDown(f"subscription refused by the broker's ACL: {', '.join(refused)}")
        self.reason = ""
        if self.down_since is not None:
            log.warning("external broker %s is back after %.1f s", self.address, trio.current_time() - self.down_since)
            self.down_since = None
        self._subscribed.set()  # ready: /readyz turns 200
        log.info("attached to external broker %s (MQTT %s, client id %s, session %s, share group %r)",
                 self.address, version, s.client_id, "resumed" if first.session_present else "new",
                 self.cfg.share_group)
        # events that came with the CONNACK/SUBACK (messages of a resumed session)
        for e in events[:-1] + subacks[:-1]:
            await self._event(e)
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._keepalive)
                await self._read_loop()
                n.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the reader's or the pinger's end of this connection
            _, rest = group.split(LINK_ERRORS)
            if rest is not None:
                raise
            raise _leaf(group) from None

    async def _until(self, want, *, fallback: bool = False) -> list:
        """Read until an event ``want`` accepts; the events read so far, that one last."""
        got: list = []
        while True:
            while self._pending:
                e = self._pending.pop(0)
                got.append(e)
                if want(e):
                    return got
            data = await self._receive()
            events, reply = self._feed(data, fallback)
            if reply:
                await self._write(reply)
            self._pending.extend(events)

    def _feed(self, data: bytes, fallback: bool):
        try:
            return self.session.receive(data)
        except ProtocolError as e:
            if fallback and self.session.version == MQTT_5 and self.cfg.protocol == "auto":
                raise _Fallback(f"answered MQTT 5.0 with something else ({e})") from None
            raise

    async def _receive(self) -> bytes:
        data = await self._stream.receive_some(65536)
        if not data:  # (not a reason to fall back to 3.1.1: a broker going down does this too)
            raise LinkDown("the broker closed the connection")
        self._last_rx = trio.current_time()
        return data

    async def _read_loop(self) -> None:
        pending, self._pending = self._pending, []
        for e in pending:
            await self._event(e)
        while True:
            data = await self._receive()
            events, reply = self._feed(data, False)
            if reply:
                await self._write(reply)
            for e in events:
                await self._event(e)

    async def _keepalive(self) -> None:
        k = self.cfg.keepalive
        self._last_rx = trio.current_time()
        while True:
            await trio.sleep(k / 2)
            if trio.current_time() - self._last_rx > k * 1.5:
                raise LinkDown(f"no answer from the broker for {k * 1.5:.0f} s")
            await self._write(self.session.ping())

    async def _write(self, data: bytes) -> None:
        if not data or self._stream is None:
            return
        async with self._send_lock:
            await self._stream.send_all(data)

    # ------------------------------------------------------------------ messages in
    async def _event(self, e) -> None:
        if isinstance(e, Message):
            self.received += 1
            if e.redelivered_done:
                self.duplicates_skipped += 1
                return
            if self.handler is None:
                raise LinkDown("no desk to hand messages to")
            if e.qos == 0:
                await self.handler(e.topic, e.payload, None)
                return
            gen = self.session.generation
            pid = e.packet_id
            self._busy += 1
            self._idle = trio.Event() if self._idle.is_set() else self._idle
            enqueued = False
            try:
                await self.handler(e.topic, e.payload, lambda exc: self._acks_send.send_nowait((pid, gen, exc)))
                enqueued = True
            finally:
                if not enqueued:
                    self._settle()
        elif isinstance(e, Closed):
            raise LinkDown(e.reason)
        elif isinstance(e, Refused):
            raise LinkDown(f"refused: {refusal(e.reason_code)}")

    def _settle(self) -> None:
        self._busy -= 1
        if self._busy == 0:
            self._idle.set()

    async def _ack_loop(self) -> None:
        async for pid, gen, exc in self._acks_recv:
            if exc is not None and self.is_storage_error(exc):
                # Not committed: no PUBACK. Drop the connection so the broker sends it again.
                self._settle()
                log.error("external broker: message not committed (%s); reconnecting to have it again", exc)
                if self._stream is not None and gen == self.session.generation:
                    await trio.aclose_forcefully(self._stream)
                continue
            data = self.session.puback(pid, gen)  # marked done before the reconnect may go on
            self._settle()
            try:
                await self._write(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the reader notices; the broker sends the message again

    # ------------------------------------------------------------------ messages out
    async def publish(self, topic: str, payload: bytes) -> None:
        """Queue a message for the external broker; never waits for the network (the desk's
        publishing must not stall on a slow broker). QoS 1, kept until the broker acknowledges it."""
        s = self.session
        while s.outbound_pending >= MAX_OUTBOUND:
            dropped = s.drop_oldest_waiting()
            if dropped is None:
                break
            self.outbound_dropped += 1
            log.error("external broker away too long: dropped a message for %s (kept %d)", dropped[0], MAX_OUTBOUND)
        data = s.publish(topic, payload, 1)
        if data:
            self._out_send.send_nowait((s.generation, data))
        await trio.lowlevel.checkpoint()

    async def _writer(self) -> None:
        async for gen, data in self._out_recv:
            if gen != self.session.generation or not self.connected:
                continue  # written for a connection now gone: the session sends it again (DUP) on CONNACK
            try:
                await self._write(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the reader notices the broken connection; the message stays in flight

    def health(self) -> dict:
        return {"mode": "external", "address": self.address, "connected": self.connected, "ready": self.ready,
                "reason": self.reason, "outbound_pending": self.session.outbound_pending}


LINK_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, ProtocolError, LinkDown,
               trio.TooSlowError)


def _leaf(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


def _describe(e: BaseException) -> str:
    if isinstance(e, trio.BrokenResourceError) and e.__cause__ is not None:
        e = e.__cause__  # e.g. the TLS handshake's ssl.SSLCertVerificationError
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate was not accepted: {e.verify_message}"
    if isinstance(e, trio.TooSlowError):
        return f"no answer within {CONNECT_TIMEOUT:.0f} s"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


class AttachedBus(RouterBus):
    """The node's local bus (bridge sessions, the desk), and the external broker for the rest.

    What the desk publishes goes to local subscribers (browsers on this node) and to the
    external broker (devices). A publish the desk itself consumes (a browser visitor's
    ``.../in``) stays local: it reaches the desk here, not through the shared subscription.
    """

    def __init__(self, broker, link: ExternalLink, desk_filters: list[str], **kw) -> None:
        super().__init__(broker, **kw)
        self.link = link
        self._desk = TopicTrie()
        for f in desk_filters:
            self._desk.add(f, "desk")

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        await super().publish(topic, payload, qos=qos)
        if not self._desk.match(topic):
            await self.link.publish(topic, payload)
