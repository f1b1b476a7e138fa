"""The reference device (examples/sm4_device.py) interoperates with kefu's keyring: sealed
uplinks through kefu's own MQTT broker are opened by kefu, kefu's sealed downlinks are
opened by the device, replays and tampering are refused on both sides."""

from __future__ import annotations

import importlib.util
import queue
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trio

from kefu.broker.server import Broker
from kefu.config.load import from_dict
from kefu.storage import open_store
from kefu.storage.crypto import AuthenticationFailed, ReplayDetected

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sm4_device.py"


@pytest.fixture(scope="module")
def device():
    spec = importlib.util.spec_from_file_location("sm4_device_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def test_envelopes_interoperate_both_ways(device, sqlite_cfg, master, tmp_path):
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        rec, key = await store.keys.new_device("dev-1")
        state = device.CounterState(str(tmp_path / "dev.state"))
        up = device.seal(key, rec.key_id, state.take(), "dev-1", "d/dev-1/up", b'{"temp": 21.5}')
        assert (await store.keys.open_from_device("dev-1", "d/dev-1/up", up)).payload == b'{"temp": 21.5}'
        with pytest.raises(ReplayDetected):
            await store.keys.open_from_device("dev-1", "d/dev-1/up", up)
        with pytest.raises(AuthenticationFailed):  # same bytes, another topic
            await store.keys.open_from_device("dev-1", "d/dev-1/other",
                                              device.seal(key, rec.key_id, state.take(), "dev-1", "d/dev-1/up", b"x"))
        down = await store.keys.seal_for_device("dev-1", "d/dev-1/down", b"set temp 22")
        kid, counter, payload = device.open_envelope(key, "dev-1", "d/dev-1/down", down)
        assert (kid, payload) == (rec.key_id, b"set temp 22") and state.accept_downlink(counter)
        assert not state.accept_downlink(counter)  # the device refuses a replayed downlink
        with pytest.raises(ValueError):
            device.open_envelope(key, "dev-1", "d/dev-1/down", down[:-1] + bytes([down[-1] ^ 1]))


def test_device_counter_survives_reboot(device, tmp_path):
    path = str(tmp_path / "dev.state")
    s = device.CounterState(path)
    used = [s.take() for _ in range(5)]
    rebooted = device.CounterState(path)  # power loss after those five
    assert rebooted.take() > max(used)


async def test_whole_flow_over_kefu_broker(device, sqlite_cfg, master, tmp_path, nursery):
    cfg = from_dict({"listeners": {"mqtt": {"host": "127.0.0.1", "port": 0}}})
    broker = Broker(cfg)
    port = (await nursery.start(broker.serve))[0].port
    async with open_store(sqlite_cfg, master=master, background=False) as store:
        rec, key = await store.keys.new_device("dev-1")
        # the kefu side of the flow: open uplinks, answer each with a sealed downlink
        inbox: queue.Queue = queue.Queue()
        app = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="kefu-app")
        subscribed = queue.Queue()
        app.on_subscribe = lambda *a: subscribed.put(True)
        app.on_message = lambda cl, ud, m: inbox.put((m.topic, m.payload))
        app.connect("127.0.0.1", port)
        app.loop_start()
        app.subscribe("d/+/up", qos=1)
        await trio.to_thread.run_sync(subscribed.get, True, 10)
        opened = []

        async def kefu_side():
            while len(opened) < 3:
                topic, data = await trio.to_thread.run_sync(inbox.get, True, 10)
                client = topic.split("/")[1]
                msg = await store.keys.open_from_device(client, topic, data)
                opened.append(msg.payload)
                reply = await store.keys.seal_for_device(client, f"d/{client}/down", b"ack " + msg.payload)
                app.publish(f"d/{client}/down", reply, qos=1)

        state = device.CounterState(str(tmp_path / "dev.state"))
        msgs = [b"seq=%d" % i for i in range(3)]
        async with trio.open_nursery() as n:
            n.start_soon(kefu_side)
            downlinks = await trio.to_thread.run_sync(
                lambda: device.run("127.0.0.1", port, "dev-1", key, rec.key_id, state, msgs,
                                   "d/dev-1/up", "d/dev-1/down", wait_downlinks=3))
        app.loop_stop()
        app.disconnect()
        assert opened == msgs
        assert downlinks == [b"ack " + m for m in msgs]
    await broker.stop()
