"""A few seconds of tests/fuzz/fuzz_edges.py against the whole kefu in this process.

Every listener gets hostile input (MQTT over TCP and /mqtt, /chat frames, REST bodies,
config files); the invariants: the server thread is alive and serving, no REST answer is a
500, no config file raises anything but ConfigError, and the bystanders (an MQTT echo and
a /chat ping) were answered throughout. The long run is ``python tests/fuzz/fuzz_edges.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE))
from fuzz_edges import run_all  # noqa: E402
from secstack import OPERATOR, SecStack, sec_config  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with SecStack(sec_config(tmp_path_factory.mktemp("fuzz"))) as s:
        yield s


@pytest.mark.parametrize("seed", [1, 2])
def test_bounded_fuzz_every_listener(stack, tmp_path, seed):
    host = "127.0.0.1"
    rep = run_all(host, stack.mqtt, stack.ws, stack.http, OPERATOR, seed=seed, mqtt=3000, mqtt_ws=200, chat=300,
                  rest=60, config=200, tmpdir=str(tmp_path), alive=lambda: stack.k._thread.is_alive())
    summary = rep.summary()
    assert rep.crashes == [], summary
    assert summary["bystander_mqtt_rtt_ms"]["n"] > 0 and summary["bystander_chat_rtt_ms"]["n"] > 0, summary
    stack.alive()
