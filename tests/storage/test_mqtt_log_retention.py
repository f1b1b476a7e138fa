"""Issue 12, item 6: QoS 1 messages nobody is owed are not kept an hour.

``storage.mqtt_log_seconds`` (default 60) is how long a stored MQTT message that no
persistent session holds stays before maintenance deletes it; messages still owed to a
session stay whatever their age. SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import replace

from kefu.config.model import Storage
from kefu.storage import StoredMessage, open_store


def test_default_is_a_minute():
    assert Storage().mqtt_log_seconds == 60.0


async def test_unowed_messages_go_after_mqtt_log_seconds(cfg, master):
    now = time.time()
    async with open_store(replace(cfg, mqtt_log_seconds=30.0), master=master, background=False) as store:
        await store.persist_publish(StoredMessage("t", b"a", created_at=now - 45))  # nobody owed it: older than 30 s
        await store.persist_publish(StoredMessage("t", b"b", created_at=now - 10))  # young: kept
        owed = await store.persist_publish(StoredMessage("t", b"c", created_at=now - 45), [("c", 1)])
        deleted = await store.prune(now)
        assert deleted["mqtt_messages"] == 1
        assert [q.message.id for q in await store.load_queue("c")] == [owed]
        assert await store.count_messages() == 2
