"""Test harness for the sans-I/O broker: a Router and client connections as packets.

No trio, no sockets: ``Peer.send(packet, now=...)`` feeds encoded bytes into a
``Protocol`` and returns what the broker wrote back, decoded by a client-side
``Decoder``. Time only moves when a test says so.
"""

from __future__ import annotations

from kefu.broker.mqtt.codec import Decoder, encode
from kefu.broker.mqtt.packets import (
    MQTT_5,
    ConnAck,
    Connect,
    Properties,
    Publish,
    Subscribe,
    Subscription,
)
from kefu.broker.mqtt.session import Protocol
from kefu.broker.router import Router
from kefu.config import Config


def make_router(**mqtt) -> Router:
    cfg = Config()
    cfg.mqtt.sys_interval = 0
    for k, v in mqtt.items():
        if k.startswith("auth_"):
            setattr(cfg.auth, k[5:], v)
        else:
            setattr(cfg.mqtt, k, v)
    return Router(cfg)


class Peer:
    """One client connection to the router, driven with packets."""

    def __init__(self, router: Router, version: int = 4, peer: str = "test:1") -> None:
        self.router = router
        self.version = version
        self.proto = Protocol(router, router.limits, peer)
        self.proto.start(0.0)
        self.decoder = Decoder(server=False, version=version)

    def send_bytes(self, data: bytes, now: float = 0.0) -> list:
        self.proto.receive_bytes(data, now)
        return self.received()

    def send(self, *packets, now: float = 0.0) -> list:
        return self.send_bytes(b"".join(encode(p, self.version) for p in packets), now)

    def received(self) -> list:
        data = self.proto.take_all()
        self.decoder.feed(data)
        return list(self.decoder)

    def raw_output(self) -> bytes:
        return self.proto.take_all()

    def connect(self, client_id: str = "c", *, clean: bool = True, now: float = 0.0, **kw) -> ConnAck:
        props = kw.pop("properties", None)
        if props is None and self.version == MQTT_5 and kw:
            pkw = {k: kw.pop(k) for k in list(kw) if k in Properties.__dataclass_fields__}
            props = Properties(**pkw)
        c = Connect(client_id=client_id, protocol_level=self.version, clean_start=clean,
                    properties=props or Properties(), **kw)
        out = self.send(c, now=now)
        assert out and isinstance(out[0], ConnAck), out
        self.pending = out[1:]
        return out[0]

    def subscribe(self, *filters, qos: int = 0, pid: int = 1, now: float = 0.0, props=None, **opts) -> list:
        subs = tuple(f if isinstance(f, Subscription) else Subscription(f, qos, **opts) for f in filters)
        return self.send(Subscribe(pid, subs, props or Properties()), now=now)

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 0, pid: int | None = None,
                now: float = 0.0, **kw) -> list:
        if qos and pid is None:
            pid = 1
        return self.send(Publish(topic, payload, qos, packet_id=pid, **kw), now=now)

    @property
    def closed(self) -> bool:
        return self.proto.closed
