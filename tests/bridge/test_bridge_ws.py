"""The WebSocket listener: paths, Origin allow-list, subprotocols, and the Stream adapter
that lets the MQTT connection driver run over WebSocket unchanged."""

from __future__ import annotations

import trio
import pytest
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from kefu.bridge import ws as wsmod
from kefu.config import from_dict


def _cfg(**ws):
    return from_dict({"listeners": {"ws": {"enabled": True, "host": "127.0.0.1", "port": 0, **ws}}})


async def _echo_packets(stream: trio.abc.Stream, info: wsmod.ConnInfo) -> None:
    """Stand-in MQTT driver: reads a byte stream, answers each 4-byte record reversed.

    Records straddle WebSocket messages on purpose (see the test), so this proves the
    adapter delivers a byte stream, not messages."""
    buf = b""
    while True:
        data = await stream.receive_some(3)  # small reads: the adapter must keep the rest
        if not data:
            return
        buf += data
        while len(buf) >= 4:
            rec, buf = buf[:4], buf[4:]
            await stream.send_all(rec[::-1])


async def _chat_echo(conn, info):
    await conn.send_message(f"hello {info.query.get('who', '?')} from {info.origin}")


@pytest.fixture
async def server(nursery):
    async def start(**ws):
        return await nursery.start(
            lambda task_status: wsmod.run(
                _cfg(**ws), mqtt_handler=_echo_packets, chat_handler=_chat_echo, task_status=task_status
            )
        )

    return start


async def test_mqtt_path_is_a_byte_stream_across_message_boundaries(server):
    lst = await server()
    async with open_websocket_url(f"{lst.url}/mqtt", subprotocols=["mqtt"]) as conn:
        assert conn.subprotocol == "mqtt"
        # Two records split over three messages: b"abcd" b"efgh" as b"ab", b"cdef", b"gh".
        for part in (b"ab", b"cdef", b"gh"):
            await conn.send_message(part)
        got = b""
        while len(got) < 8:
            got += await conn.get_message()
        assert got == b"dcbahgfe"


async def test_mqttv31_subprotocol_and_refusal_of_others(server):
    lst = await server()
    async with open_websocket_url(f"{lst.url}/mqtt", subprotocols=["mqttv3.1"]) as conn:
        assert conn.subprotocol == "mqttv3.1"
    with pytest.raises(ConnectionRejected) as e:
        async with open_websocket_url(f"{lst.url}/mqtt", subprotocols=["stomp"]):
            pass
    assert e.value.status_code == 400
    assert b"mqtt" in e.value.body


async def test_text_message_on_mqtt_closes_with_1003(server):
    lst = await server()
    async with open_websocket_url(f"{lst.url}/mqtt", subprotocols=["mqtt"]) as conn:
        await conn.send_message("not binary")
        with pytest.raises(ConnectionClosed) as e:
            await conn.get_message()
    assert e.value.reason.code == 1003


async def test_origin_allow_list(server):
    lst = await server(allowed_origins=["https://shop.example", "https://*.example.org"])
    ok = [("Origin", "https://shop.example")]
    async with open_websocket_url(f"{lst.url}/chat?who=ann", extra_headers=ok) as conn:
        assert await conn.get_message() == "hello ann from https://shop.example"
    async with open_websocket_url(f"{lst.url}/chat", extra_headers=[("Origin", "https://a.b.example.org")]) as conn:
        assert (await conn.get_message()).endswith("https://a.b.example.org")
    for bad in ("https://evil.example", "http://shop.example", "https://example.org"):
        with pytest.raises(ConnectionRejected) as e:
            async with open_websocket_url(f"{lst.url}/chat", extra_headers=[("Origin", bad)]):
                pass
        assert e.value.status_code == 403, bad
    # No Origin: a device or a tool, not a browser.
    async with open_websocket_url(f"{lst.url}/chat") as conn:
        assert (await conn.get_message()).endswith("from None")
    assert lst.stats.rejected == 3


async def test_unknown_path_is_404(server):
    lst = await server()
    with pytest.raises(ConnectionRejected) as e:
        async with open_websocket_url(f"{lst.url}/other"):
            pass
    assert e.value.status_code == 404


def test_origin_rules():
    assert wsmod.origin_allowed(None, ["https://a.example"])
    assert wsmod.origin_allowed("https://x.example", [])
    assert wsmod.origin_allowed("https://A.example/", ["https://a.example"])
    assert not wsmod.origin_allowed("https://a.example.evil", ["https://*.example"])
    assert not wsmod.origin_allowed("https://evilexample", ["https://*.example"])


async def test_busy_ports_name_the_key_to_change(nursery):
    from kefu.bridge import http as httpmod
    from kefu.broker.server import ListenError

    with trio.socket.socket() as busy:
        await busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ListenError) as e:
            await nursery.start(lambda task_status: wsmod.run(
                _cfg(port=port), mqtt_handler=None, chat_handler=None, task_status=task_status))
        assert str(e.value).startswith(f"cannot listen on 127.0.0.1:{port} (address in use): set listeners.ws.port "
                                       "to a free port")
        assert "kefu serve --config FILE" in str(e.value)
        cfg = from_dict({"listeners": {"http": {"enabled": True, "host": "127.0.0.1", "port": port}}})
        with pytest.raises(ListenError) as e:
            await nursery.start(lambda task_status: httpmod.run(
                httpmod.BridgeState(cfg, desk=None, ids=None), task_status=task_status))
        assert "set listeners.http.port to a free port" in str(e.value)
