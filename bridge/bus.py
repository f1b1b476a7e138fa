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
from contextlib import asynccontextmanager
from typing import AsyncIterator, Awaitable, Callable

import trio

from kefu.broker.topics import TopicTrie, validate_topic_filter, validate_topic_name

Tap = Callable[[str, bytes], Awaitable[None]]


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
