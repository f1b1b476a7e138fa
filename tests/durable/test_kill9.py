"""THE durability test: ``kefu serve`` killed with SIGKILL in the middle of a QoS 1 load.

Every PUBLISH kefu acknowledged (paho saw its PUBACK) must afterwards be in storage AND
reach the persistent subscriber that was subscribed before the kill and reconnects
after it (received before the kill, or delivered after the restart). The retained
message and the session survive too. Run on SQLite and on the real PostgreSQL.
"""

from __future__ import annotations

import queue
import threading
import uuid

import pytest
import trio
from durable_served import WAIT, Client, Kefu, stop_all, write_config

from kefu.config.model import Storage
from kefu.storage import open_store

PUBLISHERS = 4
ACKED_BEFORE_KILL = 3000


@pytest.fixture(params=["sqlite", "postgres"])
def storage_options(request, tmp_path):
    if request.param == "sqlite":
        yield {"backend": "sqlite", "path": str(tmp_path / "kefu.db")}
        return
    from durable_harness import drop_schema

    dsn = request.getfixturevalue("postgres_dsn")
    schema = "kefu_kill9_" + uuid.uuid4().hex[:10]
    yield {"backend": "postgres", "dsn": dsn, "pg_schema": schema}
    drop_schema(dsn, schema)


def stored_payloads(options: dict) -> set[bytes]:
    async def read():
        async with open_store(Storage(**options), background=False) as store:
            rows = await store.run_in_writer(lambda c: c.execute("SELECT payload FROM mqtt_messages").fetchall())
            return {bytes(r[0]) for r in rows}

    return trio.run(read)


def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path, storage_options):
    # The subscriber may fall behind four publishers: the queue must hold what it is owed
    # (the default bound, 1000, drops the oldest by policy, which is not what is tested here).
    config = write_config(tmp_path / "kefu.toml", storage_options, mqtt={"max_offline_messages": 1_000_000})
    kefu = Kefu(config).start()
    clients: list[Client] = []
    try:
        sub = Client(kefu.port, "durable-sub", clean=False)
        clients.append(sub)
        sub.connect()
        assert [rc.value for rc in sub.subscribe("load/#", qos=1)] == [1]  # granted QoS 1
        status = Client(kefu.port, "status")
        clients.append(status)
        status.connect()
        status.c.publish("status/kefu", b"online", qos=1, retain=True).wait_for_publish(WAIT)

        enough = threading.Event()
        lock = threading.Lock()
        total = [0]

        def counted(*_a):
            with lock:
                total[0] += 1
                if total[0] >= ACKED_BEFORE_KILL:
                    enough.set()

        pubs = []
        for i in range(PUBLISHERS):
            p = Client(kefu.port, f"pub-{i}", inflight=100)
            p.c.on_publish = counted
            p.connect()
            pubs.append(p)
            clients.append(p)
        sent: list[list] = [[] for _ in pubs]
        stop = threading.Event()

        def load(i: int) -> None:
            n = 0
            while not stop.is_set():
                payload = f"{i}:{n}".encode()
                sent[i].append((payload, pubs[i].c.publish(f"load/{i}", payload, qos=1)))
                n += 1
                if n > 400:  # keep at most ~400 unacknowledged per publisher: load, not a backlog
                    sent[i][n - 400][1].wait_for_publish(0.2)

        threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(PUBLISHERS)]
        for t in threads:
            t.start()
        assert enough.wait(WAIT), f"only {total[0]} acknowledged"
        kefu.kill9()  # mid-stream: publishers are waiting for acknowledgements right now
        stop.set()
        for t in threads:
            t.join(WAIT)
        acked = {payload for rows in sent for payload, info in rows if info.is_published()}
        unacked = sum(1 for rows in sent for _, info in rows if not info.is_published())
        assert len(acked) >= ACKED_BEFORE_KILL and unacked > 0  # killed mid-stream, not after the load
        received = set()
        while not sub.messages.empty():
            received.add(sub.messages.get().payload)
        stop_all(clients)
        clients.clear()

        kefu = Kefu(config).start()  # restart on the same database
        sub = Client(kefu.port, "durable-sub", clean=False)
        clients.append(sub)
        assert sub.connect().session_present  # the session survived
        missing = acked - received
        while missing:
            try:
                received.add(sub.messages.get(timeout=WAIT).payload)
            except queue.Empty:
                break
            missing = acked - received
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages never delivered, " \
                            f"e.g. {sorted(missing)[:5]}"
        fresh = Client(kefu.port, "fresh")
        clients.append(fresh)
        fresh.connect()
        fresh.subscribe("status/#", qos=1)
        m = fresh.messages.get(timeout=WAIT)
        assert (m.topic, m.payload, m.retain) == ("status/kefu", b"online", True)
        stored = stored_payloads(storage_options)
        lost = acked - stored
        assert not lost, f"{len(lost)} acknowledged messages not in storage, e.g. {sorted(lost)[:5]}"
    finally:
        stop_all(clients)
        kefu.stop()
