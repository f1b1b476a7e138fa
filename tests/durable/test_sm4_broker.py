"""SM4 device wire inside the broker (real router, persister, store and keyring; sans-I/O
clients): sealing waits for a reserved counter block, what an offline device is owed is
sealed again after a restart, a revoked device never gets plaintext, non-devices speak
plaintext, and a device provisioned while kefu runs is known from its next envelope."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from durable_harness import Peer, broker_cfg, durable_broker

from kefu.broker.mqtt.packets import MQTT_5, PubAck, Publish
from kefu.storage import open_store
from kefu.storage.crypto import MasterKey

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sm4_device.py"


@pytest.fixture(scope="module")
def device():
    spec = importlib.util.spec_from_file_location("sm4_device_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def master():
    return MasterKey(os.urandom(16), "test")


def sm4_cfg(sqlite_storage):
    cfg = broker_cfg(sqlite_storage)
    cfg.sm4.device_topics = ["d/#"]
    return cfg


def publishes(packets) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


async def test_first_downlink_waits_for_its_counter_block_then_goes_out_sealed(sqlite_storage, master, device):
    cfg = sm4_cfg(sqlite_storage)
    async with open_store(cfg.storage, master=master, background=False) as store:
        rec, key = await store.keys.new_device("dev-1")
        async with durable_broker(cfg, store) as (broker, _):
            wire = broker.router.sm4
            dev = Peer(broker.router)
            dev.connect("dev-1", clean=False)
            dev.subscribe("d/dev-1/down", qos=1)
            desk = Peer(broker.router)
            desk.connect("desk")
            desk.publish("d/dev-1/down", b"first", qos=0)  # no counter reserved yet: it waits, in order
            desk.publish("d/dev-1/down", b"second", qos=1, pid=1)
            assert publishes(dev.received()) == []
            await wire.settle()
            got = publishes(dev.received())
            opened = [device.open_envelope(key, "dev-1", m.topic, m.payload) for m in got]
            assert [p for _, _, p in opened] == [b"first", b"second"]
            assert opened[0][1] < opened[1][1]  # counters rise
            assert (await store.load_keys())[0].tx_next > opened[1][1]  # reserved in the database first


async def test_what_an_offline_device_is_owed_is_sealed_after_a_restart(sqlite_storage, master, device):
    cfg = sm4_cfg(sqlite_storage)
    async with open_store(cfg.storage, master=master, background=False) as store:
        rec, key = await store.keys.new_device("dev-1")
        async with durable_broker(cfg, store) as (broker, _):
            dev = Peer(broker.router)
            dev.connect("dev-1", clean=False)
            dev.subscribe("d/dev-1/down", qos=1)
            dev.drop()
            desk = Peer(broker.router)
            desk.connect("desk")
            desk.publish("d/dev-1/down", b"while you were away", qos=1, pid=1)
            await broker.persister.flush()
            assert desk.received() == [PubAck(1)]
    async with open_store(cfg.storage, master=master, background=False) as store:  # kefu restarted
        async with durable_broker(cfg, store) as (broker, _):
            dev = Peer(broker.router)
            assert dev.connect("dev-1", clean=False).session_present
            [m] = publishes(dev.pending + dev.received())
            assert device.open_envelope(key, "dev-1", m.topic, m.payload)[2] == b"while you were away"
            stored = await store.load_queue("dev-1")
            assert [q.message.payload for q in stored] == [b"while you were away"]  # plaintext inside kefu only


async def test_revoked_device_gets_nothing_and_plain_clients_use_plaintext(sqlite_storage, master, device):
    cfg = sm4_cfg(sqlite_storage)
    async with open_store(cfg.storage, master=master, background=False) as store:
        rec, key = await store.keys.new_device("dev-1")
        async with durable_broker(cfg, store) as (broker, _):
            wire = broker.router.sm4
            dev = Peer(broker.router)
            dev.connect("dev-1")
            dev.subscribe("d/#", qos=0)
            plain = Peer(broker.router)
            plain.connect("service")
            plain.subscribe("d/#", qos=0)
            echo = plain.publish("d/service/up", b"plain text", qos=0)  # not a device: plaintext passes
            assert [m.payload for m in publishes(echo)] == [b"plain text"]
            await wire.settle()
            [m] = publishes(dev.received())
            assert device.open_envelope(key, "dev-1", m.topic, m.payload)[2] == b"plain text"
            await store.keys.revoke(rec.key_id)
            assert [m.payload for m in publishes(plain.publish("d/service/up", b"secret", qos=0))] == [b"secret"]
            assert publishes(dev.received()) == []  # never in plaintext to a revoked device
            assert wire.dropped == 1


async def test_device_provisioned_while_running_is_known_from_its_next_envelope(sqlite_storage, master, device):
    cfg = sm4_cfg(sqlite_storage)
    async with open_store(cfg.storage, master=master, background=False) as store:
        async with durable_broker(cfg, store) as (broker, _):
            wire = broker.router.sm4
            watcher = Peer(broker.router)
            watcher.connect("watcher")
            watcher.subscribe("d/#", qos=0)
            async with open_store(cfg.storage, master=master, background=False) as cli:  # `kefu keys new-device`
                rec, key = await cli.keys.new_device("dev-9")
            dev = Peer(broker.router, MQTT_5)
            dev.connect("dev-9")
            first = device.seal(key, rec.key_id, 1, "dev-9", "d/dev-9/up", b"one")
            assert dev.publish("d/dev-9/up", first, qos=1, pid=1) == [PubAck(1, 0x99)]  # not known yet: refused
            await wire.settle()  # the refusal reloaded the keys
            second = device.seal(key, rec.key_id, 2, "dev-9", "d/dev-9/up", b"two")
            dev.publish("d/dev-9/up", second, qos=1, pid=2)
            await broker.persister.flush()
            assert dev.received() == [PubAck(2)]
            assert [m.payload for m in publishes(watcher.received())] == [b"two"]
            assert wire.rejects.totals["unknown_key"] == 1
