"""Issue 12, item 2: nobody may speak as a customer they are not.

Real paho-mqtt clients against the whole app. ``-i user-2001`` (an anonymous client
naming a signed-in visitor's id as its client id) could read that visitor's replies and
inject messages stored as theirs; now an anonymous client is the customer
``anon:<client id>`` and nothing else, a configured user's name works only with its
password, and a client id held by someone else is neither taken over nor inherited.
"""

from __future__ import annotations

import json
import queue

import pytest

from secstack import DEVICE_PASSWORD, SecStack, recv_until, sec_config, signed
from realclients import Paho

NOT_AUTHORIZED = 0x87
BAD_LOGIN = 0x86
OK = (0x00, 0x10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with SecStack(sec_config(tmp_path_factory.mktemp("ident"))) as s:
        yield s


def test_client_id_of_a_signed_in_visitor_reads_and_writes_nothing_of_theirs(stack):
    ws, ready = stack.visitor(**signed("user-2001"))
    assert ready["id"] == "user-2001"
    ws.send(json.dumps({"type": "message", "text": "my parcel is late", "ref": "m1"}))
    ack = recv_until(ws, lambda f: f.get("ref") == "m1")
    conv = ack["conversation"]["id"]

    spy = Paho(stack.mqtt, "user-2001", version=5)  # mosquitto_sub -i user-2001
    try:
        assert spy.connect()[1] == 0
        for f in ["kefu/c/user-2001/web/out", "kefu/c/user-2001/#", "kefu/c/user-2001/web/events"]:
            assert spy.subscribe(f, qos=1) == [NOT_AUTHORIZED], f
        assert spy.publish("kefu/c/user-2001/web/in", b"refund me to IBAN XX00", qos=1) == NOT_AUTHORIZED
        # what it may do: be the anonymous customer anon:user-2001, another conversation
        assert spy.subscribe("kefu/c/anon:user-2001/web/out", qos=1) == [1]
        assert spy.publish("kefu/c/anon:user-2001/web/in", b"hello", qos=1) in OK
        spy.get()  # the bot answers the anonymous customer in its own conversation
    finally:
        spy.disconnect()
    msgs, _ = stack.acall(lambda: stack.app.desk.messages(conv, before=None, limit=50, include_private=True))
    assert [m["text"] for m in msgs if m["author"]["kind"] == "customer"] == ["my parcel is late"]
    ws.close()
    stack.alive()


def test_a_configured_users_name_only_with_its_password(stack):
    for kw in ({"username": "user-2001"}, {"username": "user-2001", "password": "guess"}):
        c = Paho(stack.mqtt, "x-" + str(len(kw)), version=5, **kw)
        assert c.connect()[1] == BAD_LOGIN
        c.disconnect()
    real = Paho(stack.mqtt, "phone-of-2001", version=5, username="user-2001", password=DEVICE_PASSWORD)
    assert real.connect()[1] == 0
    assert real.subscribe("kefu/c/user-2001/web/out", qos=1) == [1]
    real.disconnect()


def test_widget_cannot_sign_an_anonymous_id(stack):
    ws = stack.chat()
    ws.send(json.dumps({"type": "auth", "role": "visitor", "site": "pk_shop", "ref": "a", **signed("anon:meter-7")}))
    f = recv_until(ws, lambda f: f.get("type") == "error")
    assert f["code"] == "auth_failed"
    ws.close()


def test_client_id_in_use_by_a_user_is_not_taken_over_or_inherited(stack):
    owner = Paho(stack.mqtt, "meter-7", version=5, clean=False, session_expiry=300,
                 username="meter-7", password=DEVICE_PASSWORD)
    assert owner.connect()[1] == 0
    assert owner.subscribe("kefu/c/meter-7/main/out", qos=1) == [1]
    # while it is online an anonymous client naming its client id is refused ...
    thief = Paho(stack.mqtt, "meter-7", version=5, clean=False, session_expiry=300)
    assert thief.connect()[1] == NOT_AUTHORIZED
    thief.disconnect()
    assert owner.publish("kefu/c/meter-7/main/in", b"first", qos=1) in OK
    owner.get()  # ... and the owner is still connected and served
    owner.disconnect()
    # offline, its persistent session (and what is queued for it) is not handed over
    stack.acall(_bot_says, stack, "meter-7", "queued for meter-7")
    thief = Paho(stack.mqtt, "meter-7", version=5, clean=False, session_expiry=300)
    flags, rc = thief.connect()
    assert rc == 0 and not flags.session_present
    with pytest.raises(queue.Empty):
        thief.get(timeout=1.0)
    thief.disconnect()


async def _bot_says(stack, customer: str, text: str) -> None:
    await stack.app.desk.publish(f"kefu/c/{customer}/main/out", json.dumps({"type": "message", "text": text}).encode())


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory):
    """No [[auth.users]] at all: the broker admits any username, unverified."""
    cfg = sec_config(tmp_path_factory.mktemp("open"), auth={"users": []})
    with SecStack(cfg) as s:
        yield s


def test_unverified_username_is_an_anonymous_customer(open_stack):
    ws, ready = open_stack.visitor(**signed("user-2001"))
    c = Paho(open_stack.mqtt, "sneaky", version=5, username="user-2001")  # accepted: anonymous broker
    try:
        assert c.connect()[1] == 0
        assert c.subscribe("kefu/c/user-2001/#", qos=1) == [NOT_AUTHORIZED]
        assert c.publish("kefu/c/user-2001/web/in", b"x", qos=1) == NOT_AUTHORIZED
        assert c.subscribe("kefu/c/anon:sneaky/#", qos=1) == [1]
    finally:
        c.disconnect()
        ws.close()
    open_stack.alive()
