"""MQTT over WebSocket reaches the same broker as TCP: paho clients on both transports
exchange messages through kefu, on 3.1.1 and 5.0."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt
import pytest
import trio

from kefu.bridge import ws as wsmod
from kefu.broker.server import Broker
from kefu.config import from_dict


def _cfg():
    return from_dict({"listeners": {
        "mqtt": {"host": "127.0.0.1", "port": 0},
        "ws": {"enabled": True, "host": "127.0.0.1", "port": 0},
    }})


@pytest.fixture
async def kefu(nursery):
    cfg = _cfg()
    broker = Broker(cfg)
    addrs = await nursery.start(broker.serve)
    lst = await nursery.start(lambda task_status: wsmod.run(
        cfg, mqtt_handler=lambda stream, info: broker.handle_stream(stream, info.remote),
        chat_handler=None, task_status=task_status))
    yield addrs[0].port, lst.port
    await broker.stop()


def _client(cid, proto, transport, port, inbox: queue.Queue):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto, transport=transport)
    if transport == "websockets":
        c.ws_set_options(path="/mqtt")
    connected = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props=None: connected.put(rc)
    c.on_message = lambda cl, ud, m: inbox.put((m.topic, m.payload, m.qos))
    c.on_subscribe = lambda cl, ud, mid, rcs, props=None: connected.put(("sub", rcs))
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    rc = connected.get(timeout=10)
    assert not rc.is_failure, rc
    return c, connected


@pytest.mark.parametrize("proto", [mqtt.MQTTv311, mqtt.MQTTv5])
async def test_paho_ws_and_tcp_clients_talk_through_one_broker(kefu, proto):
    tcp_port, ws_port = kefu

    def scenario():
        ws_in, tcp_in = queue.Queue(), queue.Queue()
        w, wq = _client("ws-dev", proto, "websockets", ws_port, ws_in)
        t, tq = _client("tcp-dev", proto, "tcp", tcp_port, tcp_in)
        try:
            w.subscribe("room/+/ws", qos=1)
            t.subscribe("room/+/tcp", qos=1)
            assert wq.get(timeout=10)[0] == "sub" and tq.get(timeout=10)[0] == "sub"
            big = bytes(range(256)) * 600  # 150 KiB: many WebSocket frames / TCP reads
            t.publish("room/1/ws", b"hello over tcp", qos=1).wait_for_publish(10)
            w.publish("room/1/tcp", big, qos=1).wait_for_publish(10)
            return ws_in.get(timeout=10), tcp_in.get(timeout=10)
        finally:
            for c in (w, t):
                c.disconnect()
                c.loop_stop()

    got_ws, got_tcp = await trio.to_thread.run_sync(scenario)
    assert got_ws == ("room/1/ws", b"hello over tcp", 1)
    assert got_tcp[0] == "room/1/tcp" and got_tcp[1] == bytes(range(256)) * 600


def _self_signed(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)


async def test_paho_over_wss(nursery, tmp_path):
    certfile, keyfile = _self_signed(tmp_path)
    cfg = from_dict({"listeners": {
        "mqtt": {"host": "127.0.0.1", "port": 0},
        "ws": {"enabled": True, "host": "127.0.0.1", "port": 0, "certfile": certfile, "keyfile": keyfile},
    }})
    broker = Broker(cfg)
    await nursery.start(broker.serve)
    lst = await nursery.start(lambda task_status: wsmod.run(
        cfg, mqtt_handler=lambda stream, info: broker.handle_stream(stream, info.remote),
        chat_handler=None, task_status=task_status))
    assert lst.url.startswith("wss://")

    def scenario():
        inbox = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="wss-dev", transport="websockets")
        c.ws_set_options(path="/mqtt")
        c.tls_set(ca_certs=certfile)
        subscribed = queue.Queue()
        c.on_subscribe = lambda *a: subscribed.put(True)
        c.on_message = lambda cl, ud, m: inbox.put((m.topic, m.payload))
        c.connect("localhost", lst.port)
        c.loop_start()
        try:
            c.subscribe("secure/#", qos=1)
            subscribed.get(timeout=10)
            c.publish("secure/1", b"over wss", qos=1).wait_for_publish(10)
            return inbox.get(timeout=10)
        finally:
            c.disconnect()
            c.loop_stop()

    assert await trio.to_thread.run_sync(scenario) == ("secure/1", b"over wss")
    await broker.stop()
