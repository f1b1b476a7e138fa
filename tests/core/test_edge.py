"""kefu/edge.py: JSON and text at the edge, the per-connection boundary, rate-limited logs."""

from __future__ import annotations

import logging

import pytest
import trio

from kefu import edge
from kefu.bridge.bus import LocalBus


@pytest.mark.parametrize("raw, code", [
    ('["' * 1000 + "]" * 1000, "bad_json"),  # the frame: a syntax error (after 2 levels)
    ("[" * 5000 + "]" * 5000, "too_deep"),  # json.loads: RecursionError
    ("[" * 40 + "]" * 40, "too_deep"),
    ('{"a":"\\ud800"}', "bad_text"),
    ('{"\\udfff":1}', "bad_text"),
    ('["ok", ["\\udc00"]]', "bad_text"),
    (b'{"a":"\xff"}', "bad_json"),
    ("{", "bad_json"),
    ("x" * 101, "too_large"),
])
def test_loads_refuses(raw, code):
    with pytest.raises(edge.EdgeError) as e:
        edge.loads(raw, max_bytes=100 if code == "too_large" else 10_000)
    assert e.value.code == code


def test_loads_keeps_valid_text_and_surrogate_pairs():
    assert edge.loads('{"t":"\\ud83d\\ude00 你好","n":[1,[2,[3]]]}', max_bytes=100) == {"t": "😀 你好", "n": [1, [2, [3]]]}


def test_lenient_replaces_lone_surrogates_everywhere():
    doc = edge.loads_lenient('{"text":"hi \\ud800","m":{"\\udc00k":["\\udfff"]}}', max_bytes=1000)
    assert doc == {"text": "hi \ufffd", "m": {"\ufffdk": ["\ufffd"]}}
    assert edge.dumps_text(doc).encode("utf-8")


def test_dumps_text_is_always_utf8():
    s = edge.dumps_text({"t": "a\ud800b", "c": "中"})
    s.encode("utf-8")  # would raise on a lone surrogate
    assert "\\ud800" in s


def test_display_safe_shows_bidi_and_invisible_characters():
    assert edge.display_safe("invoice\u202efdp.exe") == "invoice\u27e6U+202E\u27e7fdp.exe"
    assert edge.display_safe("pay\u200bpal") == "pay\u27e6U+200B\u27e7pal"
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    assert edge.display_safe(family) == family  # ZWJ emoji sequences are left alone


def test_rate_limited_log_summarises_the_rest(caplog):
    now = [0.0]
    rl = edge.RateLimitedLog(logging.getLogger("kefu.test.rl"), per_minute=3, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="kefu.test.rl"):
        for i in range(100):
            rl(logging.WARNING, "bad client %d", i)
        now[0] = 61.0
        rl(logging.WARNING, "bad client %d", 100)
    lines = [r.getMessage() for r in caplog.records if r.name == "kefu.test.rl"]
    assert len(lines) == 4 and "97 similar suppressed" in lines[-1]


async def test_contain_ends_one_connection_and_lets_cancellation_through():
    async def boom():
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    closed = []
    assert await edge.contain("test", "peer", boom, lambda e: _note(closed, e)) is False
    assert isinstance(closed[0], UnicodeEncodeError)

    async def group():
        async with trio.open_nursery() as n:
            n.start_soon(boom)

    assert await edge.contain("test", "peer", group) is False
    with trio.move_on_after(0.01) as cs:  # cancellation is not an error: it propagates
        await edge.contain("test", "peer", trio.sleep_forever)
    assert cs.cancelled_caught


async def _note(out, e):
    out.append(e)


async def test_local_bus_skips_a_closed_console_and_delivers_to_the_rest():
    bus = LocalBus()
    async with bus.subscribe(["t/#"]) as a, bus.subscribe(["t/#"]) as b, bus.subscribe(["t/#"]) as c:
        await b.aclose()  # a console closing under traffic
        await bus.publish("t/1", b"x")
        assert a.receive_nowait() == ("t/1", b"x")
        assert c.receive_nowait() == ("t/1", b"x")
