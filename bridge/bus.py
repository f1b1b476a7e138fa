"""An in-process topic bus implementing ``deskport.Bus``.

The bridge's /chat sessions are in-process clients of the topic space. ``LocalBus``
fans a publish out to matching subscriptions (the broker's own subscription trie does
the matching) and to *taps* — callables that see every publish. ``RouterBus`` joins
the bus to the embedded broker: its subscriptions are the router's in-process
consumers (``Router.add_tap``). The bridge only sees the ``Bus`` Protocol.

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
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                # A console that closed under traffic: skip it, keep delivering to the rest.
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
        self.rec = None  # the stored message whose acknowledgement waits for this consumer
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
    * the bridge's subscriptions and the desk's consumers are registered in the router
      like subscriptions (``Router.add_tap``): the router decides once per topic whether
      a message concerns them, so traffic outside their filters costs them nothing
      (no per-message hook);
    * ``consume(filters, handler)`` runs ``handler(topic, payload)`` in order for every
      accepted message matching ``filters`` (how the desk hears ``.../in`` and agent
      topics), behind a bounded queue so a slow consumer cannot stall the broker: past
      ``queue`` messages waiting, further ones are counted in ``dropped`` and logged.
      With ``acks=True`` the handler gets a third argument, an ``Ack``: a stored QoS 1/2
      PUBLISH is acknowledged to its publisher only once every such consumer called
      ``ack.done()`` (the desk does after its own commit: acknowledged means committed);
      ``ack.done(False)`` closes the publisher's connection unacknowledged instead. The
      tap takes its hold while the router routes the message, before the persister can
      commit it (``Rec.gated``).
    """

    def __init__(self, broker, *, queue: int = 256, consume_queue: int = 10_000) -> None:
        super().__init__(queue=queue)
        self.router = broker.router
        self._consume_queue = consume_queue
        self.dropped = 0
        self._persister = getattr(self.router, "persister", None)

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        from kefu.broker.mqtt.packets import NO_PROPERTIES
        from kefu.broker.mqtt.session import Message

        validate_topic_name(topic)
        self.published += 1
        msg = Message(topic, payload, qos, False, NO_PROPERTIES, None, "")
        # Router._accept: the one path that runs the publish hook and routes (kefu-internal API).
        self.router._accept(msg, "", None, trio.current_time())
        await trio.lowlevel.checkpoint()

    @asynccontextmanager
    async def subscribe(self, filters: list[str]) -> AsyncIterator[trio.MemoryReceiveChannel]:
        for f in filters:
            validate_topic_filter(f)
        send, recv = trio.open_memory_channel(self._queue)
        sub = _Sub(send)

        def deliver(msg) -> None:
            if sub.overflowed:
                return
            try:
                send.send_nowait((msg.topic, msg.payload))
            except trio.WouldBlock:
                sub.overflowed = True
                self.overflows += 1
                send.close()
            except trio.ClosedResourceError:
                pass

        tap = self.router.add_tap(filters, deliver)
        try:
            async with recv:
                yield recv
        finally:
            self.router.remove_tap(tap)
            send.close()

    async def consume(self, filters: list[str], handler, *, acks: bool = False,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
        for f in filters:
            validate_topic_filter(f)
        send, recv = trio.open_memory_channel(self._consume_queue)
        persister = self._persister if acks else None

        def take(msg) -> None:
            rec = getattr(msg, "rec", None)
            # only a stored message whose acknowledgement is held for its commit is gated
            ack = Ack(persister, msg.topic) if persister is not None and rec is not None \
                and rec.proto is not None else None
            try:
                send.send_nowait((msg.topic, msg.payload, ack))
            except trio.WouldBlock:
                self.dropped += 1
                log.error("bus: consumer queue full, dropped a message on %s", msg.topic)
                return
            except trio.ClosedResourceError:
                return
            if ack is not None:
                ack.rec = rec
                rec.gated += 1

        tap = self.router.add_tap(filters, take)
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
            self.router.remove_tap(tap)
            send.close()
