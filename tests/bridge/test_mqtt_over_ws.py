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
