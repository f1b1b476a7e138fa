"""A sans-I/O client for the durability tests: packets in, the broker's packets out.

The broker's protocol machine runs against the real router with a real store attached;
only the socket is left out, so a test sees exactly when an acknowledgement is written
(before or after the commit) without timing anything.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import trio

from kefu.broker.mqtt.codec import Decoder, encode
from kefu.broker.mqtt.packets import MQTT_5, ConnAck, Connect, Properties, Publish, Subscribe, Subscription
from kefu.broker.mqtt.session import Protocol
from kefu.broker.persist import attach_storage
from kefu.broker.server import Broker
from kefu.config import Config
from kefu.storage import open_store


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def broker_cfg(storage: Storage, **mqtt) -> Config:
    cfg = Config()
    cfg.listeners.mqtt.host = "127.0.0.1"
    cfg.listeners.mqtt.port = 0
    cfg.listeners.ws.enabled = False
    cfg.listeners.http.enabled = False
    cfg.desk.enabled = False
    cfg.nlp.enabled = False
    cfg.mqtt.sys_interval = 0
    for k, v in mqtt.items():
        setattr(cfg.mqtt, k, v)
    cfg.storage = storage
    return cfg


class Peer:
    def __init__(self, router, version: int = 4) -> None:
        self.router = router
        self.version = version
        self.proto = Protocol(router, router.limits, "test:1")
        self.proto.start(trio.current_time())
        self.decoder = Decoder(server=False, version=version)

    def send(self, *packets) -> list:
        self.proto.receive_bytes(b"".join(encode(p, self.version) for p in packets), trio.current_time())
        return self.received()

    def received(self) -> list:
        self.decoder.feed(self.proto.take_all())
        return list(self.decoder)

    def connect(self, client_id: str, *, clean: bool = True, expiry: int | None = None) -> ConnAck:
        props = Properties(session_expiry_interval=expiry) if self.version == MQTT_5 and expiry else Properties()
        out = self.send(Connect(client_id=client_id, protocol_level=self.version, clean_start=clean, properties=props))
        assert out and isinstance(out[0], ConnAck) and out[0].reason_code == 0, out
        self.pending = out[1:]
        return out[0]

    def subscribe(self, topic_filter: str, qos: int = 1, pid: int = 1) -> list:
        return self.send(Subscribe(pid, (Subscription(topic_filter, qos),), Properties()))

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 1, pid: int | None = None, **kw) -> list:
        return self.send(Publish(topic, payload, qos, packet_id=pid if qos else None, **kw))

    def drop(self) -> None:
        """The network connection breaks."""
        self.proto.connection_lost(trio.current_time())

    @property
    def closed(self) -> bool:
        return self.proto.closed


@asynccontextmanager
async def durable_broker(cfg, store=None):
    """A broker (not listening) with ``cfg.storage`` attached: restored, persisting."""
    if store is None:
        async with open_store(cfg.storage, background=False) as store:
            async with durable_broker(cfg, store) as out:
                yield out
        return
    async with trio.open_nursery() as nursery:
        broker = Broker(cfg)
        broker.persister = await attach_storage(broker, store, nursery, cfg)
        yield broker, store
        nursery.cancel_scope.cancel()


class Proxy:
    """A TCP proxy in front of PostgreSQL that a test takes down (every connection cut,
    new ones refused) and brings back on the same port: to kefu, the database server
    going away and returning. The machine's PostgreSQL itself is never touched."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._scope: trio.CancelScope | None = None

    async def _pipe(self, src, dst) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _handle(self, client) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as n:
            n.start_soon(self._pipe, client, upstream)
            n.start_soon(self._pipe, upstream, client)

    async def _serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    async def start(self, nursery) -> None:
        await nursery.start(self._serve)

    def stop(self) -> None:
        self._scope.cancel()
