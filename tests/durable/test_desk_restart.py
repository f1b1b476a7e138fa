"""The desk survives SIGTERM and ``kill -9``: ``kefu serve`` as a child process while devices
(paho MQTT), widget visitors (/chat) and an agent (/chat + REST) talk; killed at a random
moment; started again on the same database. Every message kefu acknowledged (PUBACK, /chat
ack, HTTP 2xx) is in its conversation, nothing is duplicated, conversations, tickets,
contacts, the API-added webhook and the visitors' identities are back, and ids continue.
SQLite with the in-memory live state; PostgreSQL with Redis as the live state (a schema and
a key prefix of its own)."""

from __future__ import annotations

import random
import uuid
from collections import Counter

import pytest
from desk_served import DeskKefu, Load, desk_config, visitor
from durable_served import WAIT, Client


@pytest.fixture(params=["sqlite", "postgres+redis"])
def backend(request, tmp_path):
    if request.param == "sqlite":
        yield {"storage": {"backend": "sqlite", "path": str(tmp_path / "kefu.db")}, "state": "memory"}
        return
    from durable_harness import drop_schema

    dsn = request.getfixturevalue("postgres_dsn")
    redis_url = request.getfixturevalue("redis_url")
    schema = "kefu_desk_" + uuid.uuid4().hex[:10]
    prefix = f"kefu-desk-test-{uuid.uuid4().hex[:10]}:"
    yield {"storage": {"backend": "postgres", "dsn": dsn, "pg_schema": schema, "redis_url": redis_url,
                       "redis_prefix": prefix}, "state": "redis"}
    drop_schema(dsn, schema)
    import redis

    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])


def _snapshot(kefu: DeskKefu) -> dict:
    convs = {c["id"]: c for c in kefu.get("/conversations")["payload"]}
    return {
        "conversations": convs,
        "messages": {cid: kefu.all_messages(cid) for cid in convs},
        "tickets": {t["id"]: t for t in kefu.get("/tickets")["payload"]},
        "contacts": {c["id"] for c in kefu.get("/contacts")["payload"]},
        "webhooks": {w["id"]: w for w in kefu.get("/webhooks")["payload"]},
    }


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_restart_keeps_every_acknowledged_message_and_the_desk(tmp_path, backend, how):
    config = desk_config(tmp_path / "kefu.toml", backend["storage"], state=backend["state"])
    kefu = DeskKefu(config).start()
    load = None
    try:
        hook = kefu.api("POST", "/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["ticket_created"]})
        assert hook.status_code in (200, 201), hook.text
        load = Load(kefu, devices=4, visitors=4).start(want=random.randint(150, 400))
        assert load.enough.wait(WAIT * 2), f"only {load.total} acknowledged: {load.errors}"
        if how == "kill9":
            kefu.kill9()  # mid-stream: devices, visitors and the agent are all waiting on kefu now
        else:
            assert kefu.stop() == 0
        load.finish()
    finally:
        if load is not None:
            load.stop.set()
        kefu.stop()

    kefu = DeskKefu(config).start()  # the same database (and Redis prefix)
    try:
        after = _snapshot(kefu)
        convs = after["conversations"]
        by_customer: dict[str, list[str]] = {}
        for c in convs.values():
            by_customer.setdefault(c["customer"], []).append(c["id"])
        # One conversation per customer thread, and every acknowledged line in it exactly once.
        for who, texts in load.acked.items():
            assert len(by_customer.get(who, [])) == 1, (who, by_customer.get(who))
            cid = by_customer[who][0]
            lines = [m["text"] for m in after["messages"][cid] if m["author"]["kind"] == "customer"]
            missing = [t for t in texts if t not in lines]
            assert not missing, f"{who}: {len(missing)} acknowledged lines lost, e.g. {missing[:3]}"
            dup = [t for t, n in Counter(lines).items() if n > 1]
            assert not dup, f"{who}: duplicated {dup[:3]}"
            sent = set(load.sent.get(who, []))
            assert set(lines) <= sent, f"{who}: lines nobody sent: {set(lines) - sent}"  # nothing invented
        for cid, text in load.replies:
            assert text in [m["text"] for m in after["messages"][cid]], (cid, text)
        for cid, msgs in after["messages"].items():
            seqs = [m["seq"] for m in msgs]
            assert seqs == sorted(set(seqs)), (cid, seqs)
        # The desk's decisions: handed off, assigned to alice (in the record, offline now), ticketed.
        for who in load.acked:
            c = convs[by_customer[who][0]]
            assert c["status"] == "assigned" and c["assignee"] == "alice", c
            assert c["ticket_id"] in after["tickets"], c
            assert who in after["contacts"]
        assert [w["url"] for w in after["webhooks"].values()] == ["http://127.0.0.1:9/hook"]

        # A visitor reloading the page keeps its identity and the whole history.
        who, token = next(iter(load.tokens.items()))
        chat, ready = visitor(kefu.chat, token)
        try:
            assert ready["id"] == who
            cid = ready["conversation"]["id"]
            assert cid == by_customer[who][0]
            texts: list[str] = []
            page = {"type": "history", "conversation": cid}
            while True:
                hist = chat.request(page)
                assert hist["type"] == "history", hist
                texts = [m["text"] for m in hist["messages"] if m["author"]["kind"] == "customer"] + texts
                if not hist["more"]:
                    break
                page = {**page, "before": hist["messages"][0]["id"]}
            assert [t for t in load.acked[who] if t not in texts] == []
        finally:
            chat.close()

        # Ids continue after the stored ones, on every live state.
        newest = max(int(i.split("-")[1]) for i in convs)
        dev = Client(kefu.port, "dev-new")
        dev.connect()
        try:
            dev.c.publish("kefu/c/anon:dev-new/main/in", b"hello, talk to a human", qos=1).wait_for_publish(WAIT)
        finally:
            dev.stop()
        new = [c for c in kefu.get("/conversations?customer=anon:dev-new")["payload"]]
        assert len(new) == 1 and int(new[0]["id"].split("-")[1]) == newest + 1, (new, newest)
        tickets = sorted(int(t.split("-")[1]) for t in after["tickets"])
        assert new[0]["ticket_id"] == f"tk-{tickets[-1] + 1}"
    finally:
        kefu.stop()
