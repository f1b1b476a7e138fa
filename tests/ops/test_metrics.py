"""/metrics over a real socket, parsed with prometheus_client's own parser, after real traffic:
a paho device talking to the desk, an agent answering, CSAT, ACL refusals, a malformed packet."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from kefu.metrics import Metrics
from kefu.storage.base import AuditEntry
from ops_stack import OPERATOR_TOKEN, config, http_get, http_json, ops_stack

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict, family: str, sample: str | None = None, **labels) -> float:
    fam = fams[family]
    want = sample or family
    hits = [s.value for s in fam.samples if s.name == want and all(s.labels.get(k) == v for k, v in labels.items())]
    assert hits, f"no sample {want}{labels} in {family}"
    return sum(hits)


class Prediction:  # what the intent engine returns (nlp.classifier.Prediction), as far as the desk reads it
    def __init__(self, intent, confidence, out_of_scope=False, early_exit=False):
        self.intent, self.confidence, self.out_of_scope, self.early_exit = intent, confidence, out_of_scope, early_exit
        self.sentiment, self.sentiment_score, self.latency_ms, self.source = "neutral", 0.0, 1.0, "model"


async def classify(text: str):
    await trio.sleep(0)
    if "human" in text:
        return Prediction("talk_to_human", 0.4, out_of_scope=True)
    return Prediction("card_lost", 0.93, early_exit=True)


def paho_client(port: int, client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


async def test_exposition_after_a_conversation(tmp_path):
    cfg = config(tmp_path, auth={"acl": [{"action": "publish", "topic": "forbidden/#", "permission": "deny"}]})
    async with ops_stack(cfg, classify=classify) as st:
        desk = st.desk
        await desk.agent_action("alice", "sign_in")
        assigned = trio.Event()
        desk.hooks.register("conversation_assigned", lambda payload: assigned.set())
        dev = await trio.to_thread.run_sync(paho_client, st.mqtt_port, "dev-1")
        try:
            # refused by the ACL; with QoS 1 the PUBACK says the broker has handled it
            info = dev.publish("forbidden/x", b"nope", qos=1)
            await trio.to_thread.run_sync(info.wait_for_publish, 10)
            # a device writes to its conversation topic over MQTT: the desk takes it from the broker
            info = dev.publish(desk.s.topics.customer_in("dev-1", "main"),
                               b'{"type": "message", "text": "I need a human please"}', qos=1)
            await trio.to_thread.run_sync(info.wait_for_publish, 10)
            with trio.fail_after(10):
                await assigned.wait()
            (conv,) = await desk.store.conversations()
            await desk.agent_action("alice", "accept", conv.id)
            await desk.agent_action("alice", "reply", conv.id, text="Hello, Alice here")
            await desk.agent_action("alice", "resolve", conv.id)
            await desk.customer_message("mqtt", "dev-1", "5")  # the CSAT answer
            await desk.customer_message("chat", "web-7", "I lost my card")  # answered by the bot
            # a malformed packet on a raw socket: counted, connection closed
            with socket.create_connection(("127.0.0.1", st.mqtt_port)) as s:
                s.sendall(b"\x10\x02\xff\xff")
                await trio.to_thread.run_sync(s.recv, 10)
            await st.store.audit(AuditEntry("test", "metrics"))

            status, body, ctype = await http_get(st.http + "/metrics")
            assert status == 200 and ctype.startswith("text/plain; version=")
            fams = families(body.decode())
        finally:
            dev.loop_stop()
            dev.disconnect()

    # conventional names, types and units
    for name, typ in [("kefu_messages_received", "counter"), ("kefu_messages_sent", "counter"),
                      ("kefu_message_latency_seconds", "histogram"), ("kefu_connections", "gauge"),
                      ("kefu_queue_length", "gauge"), ("kefu_queue_wait_seconds", "histogram"),
                      ("kefu_first_response_seconds", "histogram"), ("kefu_handle_seconds", "histogram"),
                      ("kefu_resolution_seconds", "histogram"), ("kefu_bot_containment_ratio", "gauge"),
                      ("kefu_bot_handoff_ratio", "gauge"), ("kefu_intents", "counter"),
                      ("kefu_intent_confidence", "histogram"), ("kefu_intent_latency_seconds", "histogram"),
                      ("kefu_csat_rating", "histogram"), ("kefu_sla_breaches", "counter"), ("kefu_agents", "gauge"),
                      ("kefu_agent_occupancy_ratio", "gauge"), ("kefu_messages_rejected", "counter"),
                      ("kefu_storage_write_seconds", "histogram"), ("kefu_mqtt_messages_received", "counter"),
                      ("process_resident_memory_bytes", "gauge")]:
        assert name in fams and fams[name].type == typ, name
    assert value(fams, "kefu_messages_received", "kefu_messages_received_total", channel="mqtt") == 2
    assert value(fams, "kefu_messages_received", "kefu_messages_received_total", channel="chat") == 1
    assert value(fams, "kefu_messages_sent", "kefu_messages_sent_total", channel="mqtt", sender="agent") == 1
    assert value(fams, "kefu_messages_sent", "kefu_messages_sent_total", channel="chat", sender="bot") == 1
    assert value(fams, "kefu_message_latency_seconds", "kefu_message_latency_seconds_count") == 2
    assert value(fams, "kefu_bot_handoffs", "kefu_bot_handoffs_total") == 1
    assert value(fams, "kefu_conversations_created", "kefu_conversations_created_total") == 2
    assert value(fams, "kefu_bot_handoff_ratio") == 0.5 and value(fams, "kefu_bot_containment_ratio") == 0.5
    assert value(fams, "kefu_queue_wait_seconds", "kefu_queue_wait_seconds_count", team="general") == 1
    assert value(fams, "kefu_first_response_seconds", "kefu_first_response_seconds_count", team="general") == 1
    assert value(fams, "kefu_handle_seconds", "kefu_handle_seconds_count", team="general") == 1
    assert value(fams, "kefu_resolution_seconds", "kefu_resolution_seconds_count", by="agent") == 1
    assert value(fams, "kefu_csat_rating", "kefu_csat_rating_sum") == 5
    assert value(fams, "kefu_intents", "kefu_intents_total", intent="out_of_scope") == 1
    assert value(fams, "kefu_intents", "kefu_intents_total", intent="card_lost") == 1
    assert value(fams, "kefu_intent_confidence", "kefu_intent_confidence_count") == 2
    assert value(fams, "kefu_intent_early_exit", "kefu_intent_early_exit_total") == 1
    assert value(fams, "kefu_intent_latency_seconds", "kefu_intent_latency_seconds_count") == 2
    assert value(fams, "kefu_connections", channel="mqtt", protocol="3.1.1") == 1  # the paho device
    assert value(fams, "kefu_messages_rejected", "kefu_messages_rejected_total", reason="acl") == 1
    assert value(fams, "kefu_messages_rejected", "kefu_messages_rejected_total", reason="malformed") == 1
    assert value(fams, "kefu_mqtt_messages_received", "kefu_mqtt_messages_received_total") >= 1
    assert value(fams, "kefu_agents", status="online") == 1 and value(fams, "kefu_agents", status="offline") == 1
    assert value(fams, "kefu_queue_length", team="general") == 0
    assert value(fams, "kefu_storage_write_seconds", "kefu_storage_write_seconds_count", op="audit") == 1
    assert value(fams, "kefu_storage_ready") == 1
    # every kefu family is documented (name, unit and labels live in docs/metrics.md)
    doc = DOCS.read_text(encoding="utf-8")
    for name in fams:
        if name.startswith("kefu_") and not name.endswith("_created"):
            assert re.search(rf"`{name}(_total)?[`{{]", doc), f"{name} missing from docs/metrics.md"


async def test_operator_access_guards_metrics_and_status(tmp_path):
    cfg = config(tmp_path, metrics={"access": "operator"})
    async with ops_stack(cfg) as st:
        status, _, _ = await http_get(st.http + "/metrics")
        assert status == 401
        status, body = await http_json(st.http + "/ops/status", [("Authorization", "Bearer tok-alice-0123456789")])
        assert status == 403 and "operator" in body["message"]
        status, body, _ = await http_get(st.http + "/metrics", [("Authorization", f"Bearer {OPERATOR_TOKEN}")])
        assert status == 200 and b"kefu_build_info" in body
        status, page, _ = await http_get(st.http + "/dashboard")  # the page itself holds no data
        assert status == 200 and b'<link rel="icon" href="/favicon.ico">' in page
        status, icon, _ = await http_get(st.http + "/favicon.ico")
        assert status == 200 and icon.startswith(b"\x00\x00\x01\x00")


async def test_status_names_listeners_storage_and_queues(tmp_path):
    cfg = config(tmp_path)
    async with ops_stack(cfg) as st:
        await st.desk.customer_message("mqtt", "cust-9", "hello?")  # no agent online: it waits
        status, s = await http_json(st.http + "/ops/status")
    assert status == 200
    names = {x["name"] for x in s["listeners"]}
    assert {"listeners.mqtt", "listeners.ws", "listeners.http"} <= names
    assert s["storage"]["backend"] == "sqlite" and s["storage"]["ready"] is True
    assert s["storage"]["rollups"] == "metric_rollups_1m (kefu roll-up job)"
    assert s["queues"]["general"]["waiting"] == 1 and s["queues"]["vip"]["waiting"] == 0
    assert s["agent_roster"]["alice"] == {"status": "offline", "load": 0, "capacity": 4}


def test_reject_reasons_are_a_closed_set():
    m = Metrics(process=False)
    m.reject("queue_overflow", 3)
    assert m.rejected()["queue_overflow"] == 3
    with pytest.raises(ValueError, match="unknown rejection reason"):
        m.reject("cosmic_rays")


def test_intent_service_counters_are_read_at_scrape_time():
    class Service:  # the attributes kefu.nlp.service.IntentService keeps
        queued, batches, messages = 3, 10, 42

    m = Metrics(process=False)
    m.attach_intent(Service())
    fams = families(m.exposition()[0].decode())
    assert value(fams, "kefu_intent_queue_length") == 3
    assert value(fams, "kefu_intent_batches", "kefu_intent_batches_total") == 10
    assert value(fams, "kefu_intent_batched_messages", "kefu_intent_batched_messages_total") == 42


async def test_attaching_twice_counts_once(tmp_path):
    from kefu.desk import Desk
    from kefu.ops import Ops
    from ops_stack import desk_settings

    ops = Ops(config(tmp_path))
    desk = Desk(desk_settings())
    ops.attach(desk=desk)
    ops.attach(desk=desk)  # as kefu/app.py may, once by itself and once through Ops.start
    await desk.customer_message("chat", "cust-1", "hello")
    fams = families(ops.metrics.exposition()[0].decode())
    assert value(fams, "kefu_messages_received", "kefu_messages_received_total", channel="chat") == 1
    with pytest.raises(ValueError, match="another desk"):
        ops.attach(desk=Desk(desk_settings()))
