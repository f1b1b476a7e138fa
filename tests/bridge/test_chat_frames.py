"""/chat frames: every bad frame gets an error naming the problem; the schemas are
the contract and the docs' examples obey them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kefu.bridge.frames import CLIENT_TYPES, SERVER_TYPES, FrameError, parse_client_frame, schema_names, validate_server_frame

DOC = Path(__file__).resolve().parents[2] / "docs" / "chat-protocol.md"


def err(raw, limit=1000) -> dict:
    with pytest.raises(FrameError) as e:
        parse_client_frame(raw, limit)
    return e.value.frame()


def test_every_frame_type_has_a_schema():
    names = set(schema_names())
    assert {f"client/{t}" for t in CLIENT_TYPES} <= names
    assert {f"server/{t}" for t in SERVER_TYPES} <= names


@pytest.mark.parametrize(
    "raw, code, field, words",
    [
        ("{", "bad_json", None, "not valid JSON"),
        (b"\xff\xfe", "bad_json", None, "not valid JSON"),
        ("[1]", "not_an_object", None, "JSON object"),
        ("{}", "missing_field", "type", "missing field type"),
        ('{"type": "shout"}', "unknown_type", "type", "unknown frame type shout"),
        ('{"type": 7}', "unknown_type", "type", "unknown frame type 7"),
        ('{"type": "message"}', "missing_field", "text", "missing field text"),
        ('{"type": "message", "text": ""}', "invalid_field", "text", "text"),
        ('{"type": "message", "text": "hi", "colour": "red"}', "unknown_field", "colour", "unknown field colour"),
        ('{"type": "typing", "on": "yes"}', "invalid_field", "on", "boolean"),
        ('{"type": "auth", "role": "agent"}', "missing_field", "token", "missing field token"),
        ('{"type": "auth", "role": "visitor"}', "missing_field", "site", "missing field site"),
        ('{"type": "auth", "role": "root"}', "invalid_field", "role", "agent, visitor"),
        ('{"type": "action", "action": "transfer", "conversation": "c1"}', "missing_field", "agent", "agent"),
        ('{"type": "history", "limit": 0}', "invalid_field", "limit", "limit"),
        ('{"type": "status", "status": "busy"}', "invalid_field", "status", "status"),
    ],
)
def test_bad_frames_name_the_problem(raw, code, field, words):
    e = err(raw)
    assert e["code"] == code
    assert e.get("field") == field
    assert words in e["message"]


def test_ref_is_echoed_in_errors():
    e = err('{"type": "message", "ref": "m-1"}')
    assert e["ref"] == "m-1" and e["code"] == "missing_field"


def test_oversized_frame_is_refused_before_parsing():
    e = err('{"type": "message", "text": "' + "x" * 100 + '"}', limit=64)
    assert e["code"] == "too_large" and "64 bytes" in e["message"]


def test_good_frames_pass():
    assert parse_client_frame('{"type":"message","text":"hi","ref":"a"}', 100)["text"] == "hi"
    ok = '{"type":"auth","role":"visitor","site":"demo","identity":{"id":"u1","hash":"' + "ab" * 32 + '"}}'
    assert parse_client_frame(ok, 1000)["identity"]["id"] == "u1"


def _doc_examples():
    text = DOC.read_text(encoding="utf-8")
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_docs_show_every_frame_type_and_their_examples_obey_the_schemas():
    examples = _doc_examples()
    seen_client, seen_server = set(), set()
    for ex in examples:
        direction = ex.pop("//", None)
        assert direction in ("client", "server"), f"example without a direction marker: {ex}"
        if direction == "client":
            parse_client_frame(json.dumps(ex), 1 << 20)
            seen_client.add(ex["type"])
        else:
            validate_server_frame(ex)
            seen_server.add(ex["type"])
    assert seen_client == set(CLIENT_TYPES)
    assert seen_server == set(SERVER_TYPES)
