"""The connection driver's write path over real TCP sockets (connection.py).

Memory streams (test_connection_driver.py) never refuse part of a write; a TCP
socket does. These tests make it refuse (a subscriber that stops reading, with a
small receive buffer, while megabytes are routed to it) and check that nothing is
lost, duplicated or reordered where a write came back short, and that a subscriber
whose connection is reset mid-write costs the publisher and the other subscribers
nothing.
"""

from __future__ import annotations

import socket
import struct

import trio

from kefu.broker.mqtt.codec import Decoder, encode
from kefu.broker.mqtt.packets import (
    ConnAck,
    Connect,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)
from kefu.broker.server import Broker
from kefu.config import Config

N = 20_000
PAYLOAD_SIZE = 200


def _config() -> Config:
    cfg = Config()
    cfg.listeners.mqtt.host = "127.0.0.1"
    cfg.listeners.mqtt.port = 0
    cfg.mqtt.sys_interval = 0
    return cfg


class Client:
    def __init__(self, stream: trio.SocketStream, version: int) -> None:
        self.stream = stream
        self.version = version
        self.decoder = Decoder(server=False, version=version)

    @classmethod
    async def open(cls, port: int, client_id: str, version: int = 4, rcvbuf: int | None = None) -> Client:
        sock = trio.socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", port))
        c = cls(trio.SocketStream(sock), version)
        await c.send(Connect(client_id, protocol_level=version))
        assert isinstance(await c.recv(), ConnAck)
        return c

    async def send(self, *packets) -> None:
        await self.stream.send_all(b"".join(encode(p, self.version) for p in packets))

    async def recv(self):
        while True:
            p = self.decoder.next_packet()
            if p is not None:
                return p
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise EOFError
            self.decoder.feed(data)

    async def subscribe(self, topic_filter: str) -> None:
        await self.send(Subscribe(1, (Subscription(topic_filter),)))
        assert await self.recv() == SubAck(1, (0,))


def numbered(i: int) -> bytes:
    return i.to_bytes(4, "big") + bytes(PAYLOAD_SIZE - 4)


async def test_a_subscriber_that_stops_reading_gets_everything_in_order_later():
    b = Broker(_config())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            [addr] = await nursery.start(b.serve)
            slow = await Client.open(addr.port, "slow", rcvbuf=4096)
            await slow.subscribe("n/#")
            pub = await Client.open(addr.port, "pub")
            # ~4.4 MB: far more than the socket buffers hold, far less than max_queued_bytes,
            # so the broker's writes come back short and the rest waits in the writer task.
            packets = [encode(Publish("n/x", numbered(i)), 4) for i in range(N)]
            for i in range(0, N, 500):
                await pub.stream.send_all(b"".join(packets[i:i + 500]))
            await pub.send(PingReq())
            assert await pub.recv() == PingResp()  # routed all of it, never held up
            for i in range(N):
                p = await slow.recv()
                assert isinstance(p, Publish) and p.payload == numbered(i), (i, p)
            assert b.router.stats.dropped == 0
            await b.stop()


async def test_a_subscriber_reset_mid_write_costs_the_others_nothing():
    b = Broker(_config())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            [addr] = await nursery.start(b.serve)
            doomed = await Client.open(addr.port, "doomed", rcvbuf=4096)
            await doomed.subscribe("n/#")
            good = await Client.open(addr.port, "good")
            await good.subscribe("n/#")
            pub = await Client.open(addr.port, "pub")
            packets = [encode(Publish("n/x", numbered(i)), 4) for i in range(N)]
            received = 0

            async def read_good():
                nonlocal received
                for i in range(N):
                    p = await good.recv()
                    assert p.payload == numbered(i), (i, p)
                    received += 1

            async with trio.open_nursery() as readers:
                readers.start_soon(read_good)
                for i in range(0, N, 500):
                    if i == N // 2:  # RST while the broker has output queued for it
                        doomed.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                        struct.pack("ii", 1, 0))
                        doomed.stream.socket.close()
                    await pub.stream.send_all(b"".join(packets[i:i + 500]))
            assert received == N
            await pub.send(PingReq())
            assert await pub.recv() == PingResp()
            await b.stop()


async def test_a_taken_over_subscriber_that_never_reads_is_closed_after_the_flush_timeout(monkeypatch):
    """The old connection of a takeover flushes what it can, for at most FLUSH_TIMEOUT, and
    then ends: its writer gives up and closing its socket stops its reader."""
    from kefu.broker import connection

    monkeypatch.setattr(connection, "FLUSH_TIMEOUT", 0.2)
    b = Broker(_config())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            [addr] = await nursery.start(b.serve)
            slow = await Client.open(addr.port, "slow", rcvbuf=4096)
            await slow.subscribe("n/#")
            pub = await Client.open(addr.port, "pub")
            packets = [encode(Publish("n/x", numbered(i)), 4) for i in range(N // 4)]
            await pub.stream.send_all(b"".join(packets))
            await pub.send(PingReq())
            assert await pub.recv() == PingResp()  # routed; most of it waits for "slow" to read
            assert len(b.connections) == 2
            again = await Client.open(addr.port, "slow")  # takeover: the old one must go
            while len(b.connections) > 2:  # the old connection ends although it never read
                await trio.sleep(0.05)
            await again.send(PingReq())
            assert await again.recv() == PingResp()
            await b.stop()
