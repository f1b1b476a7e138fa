"""Issue 12, item 1: one frame must never stop kefu.

Every frame the probe used is sent over a real socket to the whole app. Each answer is
checked where a client sees it (an error frame, a close code, a 400), and after each
the process is still serving a bystander on MQTT, /chat and HTTP.
"""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import ConnectionClosed

from secstack import OPERATOR, SecStack, recv_until, sec_config, signed
from realclients import Paho

DEEP = "[" * 5000 + "]" * 5000  # json.loads -> RecursionError before the fix
DEEP_OBJ = '{"type":"message","text":"x","meta":' + '{"a":' * 2000 + "1" + "}" * 2001


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with SecStack(sec_config(tmp_path_factory.mktemp("edge"))) as s:
        yield s


def error_or_close(ws) -> dict | None:
    """The error frame the server answered with, or None when it closed the connection."""
    try:
        return recv_until(ws, lambda f: f.get("type") == "error")
    except ConnectionClosed:
        return None


@pytest.mark.parametrize("raw", [
    '["' * 1000 + "]" * 1000,  # the frame, verbatim
    DEEP,
    DEEP_OBJ,
    '{"type":"\\udfff"}',
    '{"type":"ping","ref":"\\ud800"}',
    '{"type":"auth","role":"agent","token":"\\udfff\\udfff"}',
    '{"type":"auth","role":"visitor","site":"pk_shop","profile":{"name":"\\ud800 Eve"}}',
    '{"\\udc00":1,"type":"ping"}',
])
def test_bad_frame_before_auth_answers_or_closes_only_that_connection(stack, raw):
    with stack.chat() as ws:
        ws.send(raw)
        err = error_or_close(ws)
        if err is not None:
            assert err["code"] in ("bad_json", "bad_text", "too_large"), err
            # ... and the connection still works afterwards
            ws.send('{"type":"ping","ref":"after"}')
            assert recv_until(ws, lambda f: f.get("ref") == "after")["type"] == "pong"
    stack.alive()


def test_visitor_text_with_lone_surrogate_is_refused_and_other_browsers_keep_going(stack):
    # An agent console listens to the desk events: before the fix, forwarding the
    # visitor's text to it raised UnicodeEncodeError and took the process down.
    agent = stack.agent("alice")
    ws, ready = stack.visitor(**signed("surrogate-visitor"))
    ws.send('{"type":"message","text":"hi \\ud800","ref":"m1"}')
    err = recv_until(ws, lambda f: f.get("type") == "error")
    assert err["code"] == "bad_text" and "surrogate" in err["message"]
    ws.send('{"type":"message","text":"hi again","ref":"m2"}')
    ack = recv_until(ws, lambda f: f.get("ref") == "m2")
    assert ack["type"] == "ack" and ack["message"]["text"] == "hi again"
    ws.close()
    agent.send('{"type":"ping","ref":"ap"}')
    assert recv_until(agent, lambda f: f.get("ref") == "ap")["type"] == "pong"
    agent.close()
    stack.alive()


def test_mqtt_payload_with_lone_surrogate_is_stored_with_a_replacement_character(stack):
    dev = Paho(stack.mqtt, "meter-7", version=5, username="meter-7", password="dev-pass-7")
    try:
        assert dev.connect()[1] == 0
        assert dev.subscribe("kefu/c/meter-7/main/out", qos=1) == [1]
        payload = b'{"type":"message","text":"valve \\ud800 stuck"}'
        assert dev.publish("kefu/c/meter-7/main/in", payload, qos=1) in (0, 16)
        out = json.loads(dev.get().payload)  # the bot's answer: the message was taken
        conv = out["message"]["conversation"]
    finally:
        dev.disconnect()
    msgs, _ = stack.acall(lambda: stack.app.desk.messages(conv, before=None, limit=50, include_private=True))
    texts = [m["text"] for m in msgs]
    assert "valve \ufffd stuck" in texts, texts
    stack.alive()


def test_mqtt_over_websocket_garbage_closes_only_that_connection(stack):
    from websockets.sync.client import connect

    with connect(stack.ws + "/mqtt", subprotocols=["mqtt"], open_timeout=10) as ws:
        ws.send("not binary")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    with connect(stack.ws + "/mqtt", subprotocols=["mqtt"], open_timeout=10) as ws:
        ws.send(b"\x10\xff\xff\xff\xff\x7f" + b"\x00" * 32)  # a CONNECT with a malformed length
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    stack.alive()


@pytest.mark.parametrize("body", [
    DEEP,
    '{"content":"' + "\\ud800" + '"}',
    b'{"content":"\xff\xfe"}',
    '{"a":' * 5000 + "1" + "}" * 5000,
])
def test_rest_bad_bodies_are_400_not_500(stack, body):
    r = stack.post("/api/v1/webhooks", body)
    assert r.status_code == 400, (r.status_code, r.text[:200])
    assert r.json()["error"] == "bad_request"
    stack.alive()


def test_webhook_url_is_checked_before_it_is_stored(stack):
    for url in ["https://x.example/\\ud800", "http://", "ftp://x.example/", "https://user:pw@x.example/",
                "https://x.example/a b", "https://x.example:99999/"]:
        r = stack.post("/api/v1/webhooks", '{"url":"%s","subscriptions":["message_created"]}' % url)
        assert r.status_code in (400, 422), (url, r.status_code, r.text[:200])
    r = stack.get("/api/v1/webhooks", OPERATOR)
    assert r.status_code == 200 and r.json()["data"]["payload"] == []
    stack.alive()
