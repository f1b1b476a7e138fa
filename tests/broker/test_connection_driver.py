"""connection.py and server.py timers over trio memory streams, with the autojump clock.

Keepalive, CONNECT timeout, will delay, session expiry and $SYS intervals are all
driven by trio time here, so a 60-second expiry takes no wall time.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from kefu.broker.mqtt.codec import Decoder, encode
from kefu.broker.mqtt.packets import (
    ConnAck,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Properties,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from kefu.broker.server import KEEPALIVE_SWEEP, Broker
from kefu.config import Config


class StreamClient:
    """A minimal MQTT client over any trio stream (packets in, packets out)."""

    def __init__(self, stream, version: int) -> None:
        self.stream = stream
        self.version = version
        self.decoder = Decoder(server=False, version=version)

    async def send(self, *packets) -> None:
        await self.stream.send_all(b"".join(encode(p, self.version) for p in packets))

    async def recv(self):
        while True:
            p = self.decoder.next_packet()
            if p is not None:
                return p
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.decoder.feed(data)

    async def until_closed(self) -> list:
        """Every packet until the broker closes the connection."""
        got = []
        while True:
            try:
                got.append(await self.recv())
            except (EOFError, trio.BrokenResourceError):
                return got

    async def connect(self, client_id: str, **kw) -> ConnAck:
        props = kw.pop("properties", Properties())
        await self.send(Connect(client_id, protocol_level=self.version, properties=props, **kw))
        ack = await self.recv()
        assert isinstance(ack, ConnAck), ack
        return ack


def _config(**mqtt) -> Config:
    cfg = Config()
    cfg.listeners.mqtt.enabled = False
    cfg.mqtt.sys_interval = 0
    for k, v in mqtt.items():
        setattr(cfg.mqtt, k, v)
    return cfg


@pytest.fixture
async def broker(nursery):
    b = Broker(_config())
    await nursery.start(b.serve)
    yield b
    await b.stop()


def open_client(broker: Broker, nursery, version: int = 4) -> StreamClient:
    client_end, server_end = trio.testing.memory_stream_pair()
    nursery.start_soon(broker.handle_stream, server_end, "memory")
    return StreamClient(client_end, version)


async def test_keepalive_timeout_closes_after_one_and_a_half(broker, nursery, autojump_clock):
    c = open_client(broker, nursery, 5)
    await c.connect("k", keep_alive=10)
    t0 = trio.current_time()
    assert await c.until_closed() == [Disconnect(0x8D)]
    assert 15.0 <= trio.current_time() - t0 <= 15.0 + KEEPALIVE_SWEEP


async def test_pings_keep_the_connection_alive(broker, nursery, autojump_clock):
    c = open_client(broker, nursery, 4)
    await c.connect("k", keep_alive=10)
    for _ in range(10):
        await trio.sleep(9)
        await c.send(PingReq())
        assert await c.recv() == PingResp()
    assert broker.router.stats.connected == 1


async def test_no_connect_in_time_closes(nursery, autojump_clock):
    b = Broker(_config(connect_timeout=5))
    await nursery.start(b.serve)
    c = open_client(b, nursery)
    t0 = trio.current_time()
    assert await c.until_closed() == []
    assert 5.0 <= trio.current_time() - t0 <= 5.0 + KEEPALIVE_SWEEP
    await b.stop()


async def test_will_delay_then_published(broker, nursery, autojump_clock):
    watcher = open_client(broker, nursery)
    await watcher.connect("w")
    await watcher.send(Subscribe(1, (Subscription("will/#"),)))
    assert await watcher.recv() == SubAck(1, (0,))
    dev = open_client(broker, nursery, 5)
    await dev.connect("dev", clean_start=False, properties=Properties(session_expiry_interval=300),
                      will=Will("will/dev", b"offline", properties=Properties(will_delay_interval=30)))
    t0 = trio.current_time()
    await dev.stream.aclose()  # abrupt: no DISCONNECT
    msg = await watcher.recv()
    assert (msg.topic, msg.payload) == ("will/dev", b"offline")
    assert trio.current_time() - t0 == pytest.approx(30.0, abs=0.01)


async def test_session_expiry_removes_session(broker, nursery, autojump_clock):
    dev = open_client(broker, nursery, 5)
    await dev.connect("dev", clean_start=False, properties=Properties(session_expiry_interval=60))
    await dev.send(Subscribe(1, (Subscription("x"),)))
    await dev.recv()
    await dev.send(Disconnect())
    await dev.until_closed()
    await trio.sleep(59)
    assert "dev" in broker.router.sessions
    await trio.sleep(2)
    assert "dev" not in broker.router.sessions
    assert broker.router.subscription_count == 0


async def test_malformed_packet_closes_only_that_connection(broker, nursery, autojump_clock):
    good = open_client(broker, nursery, 4)
    await good.connect("good")
    await good.send(Subscribe(1, (Subscription("t"),)))
    await good.recv()
    bad = open_client(broker, nursery, 5)
    await bad.connect("bad")
    await bad.stream.send_all(b"\x30\x04\x00\x09ab")  # topic length beyond the packet
    assert await bad.until_closed() == [Disconnect(0x81)]
    sender = open_client(broker, nursery, 4)
    await sender.connect("sender")
    await sender.send(Publish("t", b"still here"))
    assert (await good.recv()).payload == b"still here"


async def test_garbage_3_1_1_plain_close(broker, nursery, autojump_clock):
    c = open_client(broker, nursery, 4)
    await c.connect("g")
    await c.stream.send_all(b"\x00\x00\x00")
    assert await c.until_closed() == []


async def test_takeover_over_streams(broker, nursery, autojump_clock):
    old = open_client(broker, nursery, 5)
    await old.connect("same")
    new = open_client(broker, nursery, 5)
    await new.connect("same")
    assert await old.until_closed() == [Disconnect(0x8E)]
    await new.send(PingReq())
    assert await new.recv() == PingResp()


async def test_writes_are_batched(broker, nursery, autojump_clock):
    sub = open_client(broker, nursery, 4)
    await sub.connect("sub")
    await sub.send(Subscribe(1, (Subscription("t"),)))
    await sub.recv()
    pub = open_client(broker, nursery, 4)
    await pub.connect("pub")
    await pub.stream.send_all(encode(Publish("t", b"m"), 4) * 200)
    first = await sub.stream.receive_some(1 << 20)
    # All 200 PUBLISHes routed from one read arrive in one write.
    assert len(first) == 200 * len(encode(Publish("t", b"m"), 4))


async def test_graceful_stop_sends_0x8b_without_wills(nursery, autojump_clock):
    b = Broker(_config())
    await nursery.start(b.serve)
    c5 = open_client(b, nursery, 5)
    await c5.connect("c5", will=Will("will/x", b"no"))
    c4 = open_client(b, nursery, 4)
    await c4.connect("c4")
    t0 = trio.current_time()
    with trio.fail_after(2):
        await b.stop()
    assert trio.current_time() - t0 < 2
    assert await c5.until_closed() == [Disconnect(0x8B)]
    assert await c4.until_closed() == []


async def test_sys_published_every_interval(nursery, autojump_clock):
    b = Broker(_config(sys_interval=10))
    await nursery.start(b.serve)
    c = open_client(b, nursery, 4)
    await c.connect("s")
    await c.send(Subscribe(1, (Subscription("$SYS/broker/uptime"),)))
    assert await c.recv() == SubAck(1, (0,))
    first = await c.recv()  # retained, sent on subscribe
    assert first.retain
    t0 = trio.current_time()
    nxt = await c.recv()
    assert nxt.topic == "$SYS/broker/uptime" and not nxt.retain
    assert 0 < trio.current_time() - t0 <= 10.01
    await b.stop()


async def test_flood_to_a_subscriber_that_never_reads_is_bounded_and_counted(nursery, autojump_clock):
    b = Broker(_config(max_queued_bytes=50_000))
    await nursery.start(b.serve)
    client_end, server_end = trio.testing.lockstep_stream_pair()  # no buffering at all
    nursery.start_soon(b.handle_stream, server_end, "stuck")
    stuck = StreamClient(client_end, 4)
    await stuck.connect("stuck")
    await stuck.send(Subscribe(1, (Subscription("flood/#"),)))
    assert await stuck.recv() == SubAck(1, (0,))
    pub = open_client(b, nursery, 4)
    await pub.connect("pub")
    packet = encode(Publish("flood/x", b"x" * 1000), 4)
    for _ in range(20):
        await pub.stream.send_all(packet * 100)
    await pub.send(PingReq())
    assert await pub.recv() == PingResp()  # the publisher is never held up
    [conn] = [c for c in b.connections if c.proto.client_id == "stuck"]
    assert conn.proto.queued + conn.proto.writing <= 50_000
    assert b.router.stats.dropped >= 2000 - 50
    await b.stop()
