"""An in-process topic bus implementing ``deskport.Bus``.

The bridge's /chat sessions are in-process clients of the topic space. ``LocalBus``
fans a publish out to matching subscriptions (the broker's own subscription trie does
the matching) and to *taps* — callables that see every publish, which is how the
broker's router or the desk is fed when the bridge runs beside them. ``kefu/app.py``
may instead hand the bridge an adapter over the broker's router; the bridge only sees
the ``Bus`` Protocol.

Each subscription has a bounded channel. A subscriber that falls that far behind is
not allowed to stall publishers: it is marked ``overflowed`` and its channel is
closed, so its connection ends and the browser reconnects and re-reads history (a
browser never silently misses a message in the middle of a thread).
"""

from __future__ import annotations

import itertools
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import trio

from kefu.broker.topics import TopicTrie, validate_topic_filter, validate_topic_name

Tap = Callable[[str, bytes], Awaitable[None]]
log = logging.getLogger("kefu.bridge.bus")


class _Sub:
    __slots__ = ("send", "overflowed")

    def __init__(self, send: trio.MemorySendChannel) -> None:
        self.send = send
        self.overflowed = False


class LocalBus:
    def __init__(self, *, queue: int = 256) -> None:
        self._trie = TopicTrie()
        self._subs: dict[int, _Sub] = {}
        self._ids = itertools.count(1)
        self._queue = queue
        self.taps: list[Tap] = []
        self.published = 0
        self.overflows = 0

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        validate_topic_name(topic)
        self.published += 1
        self.deliver(topic, payload)
        for tap in list(self.taps):
            await tap(topic, payload)

    def deliver(self, topic: str, payload: bytes) -> None:
        """Hand a message to local subscribers only (what a router-side tap calls)."""
        seen: set[int] = set()
        for key, _value, _filt in self._trie.match(topic):
            if key in seen:
                continue
            seen.add(key)
            sub = self._subs.get(key)
            if sub is None or sub.overflowed:
                continue
            try:
                sub.send.send_nowait((topic, payload))
            except trio.WouldBlock:
                sub.overflowed = True
                self.overflows += 1
                sub.send.close()
            except trio.ClosedResourceError:
                pass

    @asynccontextmanager
    async def subscribe(self, filters: list[str]) -> AsyncIterator[trio.MemoryReceiveChannel]:
        for f in filters:
            validate_topic_filter(f)
        key = next(self._ids)
        send, recv = trio.open_memory_channel(self._queue)
        self._subs[key] = _Sub(send)
        for f in filters:
            self._trie.add(f, key)
        try:
            async with recv:
                yield recv
        finally:
            for f in filters:
                self._trie.remove(f, key)
            self._subs.pop(key, None)
            send.close()


class Ack:
    """A consumer's hold on one stored PUBLISH's acknowledgement (see ``RouterBus``)."""

    __slots__ = ("persister", "topic", "rec", "finished")

    def __init__(self, persister, topic: str) -> None:
        self.persister = persister
        self.topic = topic
        self.rec = None  # set when the persister stores the message and holds its acknowledgement
        self.finished = False

    def done(self, ok: bool = True) -> None:
        if self.finished:
            return
        self.finished = True
        if self.rec is not None and self.persister is not None:
            self.persister.ungate(self.rec, ok)


NO_ACK = Ack(None, "")


class RouterBus(LocalBus):
    """The bus joined to the embedded broker: one topic space for devices and browsers.

    * ``publish`` injects the message into the broker's router as the broker itself
      (client id ""): retained handling, the ``on_message_published`` hook and delivery
      to MQTT subscribers happen exactly as for a device's PUBLISH;
    * every message the router accepts — from devices, from the desk, from the bridge —
      is seen through the ``on_message_published`` hook and handed to the bridge's
      subscriptions (``LocalBus.deliver``) without blocking the router;
    * ``consume(filters, handler)`` runs ``handler(topic, payload)`` in order for every
      accepted message matching ``filters`` (how the desk hears ``.../in`` and agent
      topics), behind a bounded queue so a slow consumer cannot stall the broker: past
      ``queue`` messages waiting, further ones are counted in ``dropped`` and logged.
      With ``acks=True`` the handler gets a third argument, an ``Ack``: a stored QoS 1/2
      PUBLISH is acknowledged to its publisher only once every such consumer called
      ``ack.done()`` (the desk does after its own commit: acknowledged means committed);
      ``ack.done(False)`` closes the publisher's connection unacknowledged instead.
    """

    def __init__(self, broker, *, queue: int = 256, consume_queue: int = 10_000) -> None:
        super().__init__(queue=queue)
        self.router = broker.router
        self._consumers: list[tuple[TopicTrie, trio.MemorySendChannel]] = []
        self._consume_queue = consume_queue
        self.dropped = 0
        self._fresh: list[Ack] = []  # acks handed out for the message being accepted right now
        self._persister = getattr(self.router, "persister", None)
        if self._persister is not None:
            self._persister.gate = self._gate
        broker.hooks.register("on_message_published", self._seen)

    def _gate(self, topic: str, rec) -> int:
        """The persister asks, while accepting the message ``_seen`` just saw: how many
        consumers must finish with it before its acknowledgement."""
        fresh, self._fresh = self._fresh, []
        n = 0
        for ack in fresh:
            if ack.topic == topic and not ack.finished:
                ack.rec = rec
                n += 1
        return n

    def _seen(self, event) -> None:
        self.deliver(event.topic, event.payload)
        self._fresh = []
        for trie, send, acks in self._consumers:
            if trie.match(event.topic):
                ack = None
                if acks and self._persister is not None:
                    ack = Ack(self._persister, event.topic)
                try:
                    send.send_nowait((event.topic, event.payload, ack))
                    if ack is not None:
                        self._fresh.append(ack)
                except trio.WouldBlock:
                    self.dropped += 1
                    log.error("bus: consumer queue full, dropped a message on %s", event.topic)
                except trio.ClosedResourceError:
                    pass

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        from kefu.broker.mqtt.packets import NO_PROPERTIES
        from kefu.broker.mqtt.session import Message

        validate_topic_name(topic)
        self.published += 1
        msg = Message(topic, payload, qos, False, NO_PROPERTIES, None, "")
        # Router._accept: the one path that runs the publish hook and routes (kefu-internal API).
        self.router._accept(msg, "", None, trio.current_time())
        await trio.lowlevel.checkpoint()

    async def consume(self, filters: list[str], handler, *, acks: bool = False,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
        trie = TopicTrie()
        for f in filters:
            validate_topic_filter(f)
            trie.add(f, "consumer")
        send, recv = trio.open_memory_channel(self._consume_queue)
        entry = (trie, send, acks)
        self._consumers.append(entry)
        try:
            task_status.started()
            async with recv:
                async for topic, payload, ack in recv:
                    try:
                        if acks:
                            await handler(topic, payload, ack or NO_ACK)
                        else:
                            await handler(topic, payload)
                    except Exception:  # noqa: BLE001 - one bad message must not stop the consumer
                        log.exception("bus: consumer failed on %s", topic)
                        if ack is not None:
                            ack.done()
        finally:
            self._consumers.remove(entry)
            send.close()
