"""Issue 12, item 7: the low findings, each where a user sees it.

Pages carry CSP / X-Frame-Options / nosniff; kefu.db is created owner-only; with
``metrics.access = "operator"`` /metrics and /ops/status need an operator token and show
the refused logins; ``$SYS/#`` can be closed to anonymous clients with one ACL rule;
a flood of bad connections is logged a bounded number of times.
"""

from __future__ import annotations

import logging
import os
import socket
import stat

import pytest

from secstack import OPERATOR, TOKENS, SecStack, sec_config
from realclients import Paho


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hard")
    cfg = sec_config(tmp, metrics={"access": "operator"},
                     auth={"acl": [{"permission": "deny", "action": "subscribe", "topic": "$SYS/#"}]})
    with SecStack(cfg) as s:
        s.tmp = tmp
        yield s


def test_pages_have_security_headers(stack):
    for path in ("/console", "/", "/demo", "/dashboard"):
        r = stack.get(path, None)
        assert r.status_code == 200, path
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert r.headers["X-Frame-Options"] == "DENY"
        assert r.headers["X-Content-Type-Options"] == "nosniff"
    r = stack.get("/api/v1/profile", TOKENS["alice"])
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "sessionStorage" in stack.get("/static/console.js", None).text  # the token is not kept across sessions


def test_database_is_owner_only(stack):
    mode = stat.S_IMODE(os.stat(stack.tmp / "kefu.db").st_mode)
    assert mode == 0o600, oct(mode)


def test_ops_endpoints_need_an_operator_token_and_count_refused_logins(stack):
    c = Paho(stack.mqtt, "guess", version=5, username="meter-7", password="wrong")
    assert c.connect()[1] == 0x86
    c.disconnect()
    for path in ("/metrics", "/ops/status"):
        assert stack.get(path, None).status_code == 401
        assert stack.get(path, TOKENS["alice"]).status_code == 403
        assert stack.get(path, OPERATOR).status_code == 200
    body = stack.get("/metrics", OPERATOR).text
    assert 'kefu_auth_failures_total{reason="bad_password"} 1.0' in body
    assert "kefu_connection_errors_total" in body


def test_sys_topics_closed_by_one_acl_rule(stack):
    c = Paho(stack.mqtt, "curious", version=5)
    assert c.connect()[1] == 0
    assert c.subscribe("$SYS/#", qos=0) == [0x87]
    c.disconnect()


def test_a_flood_of_bad_connections_is_logged_a_bounded_number_of_times(stack, caplog):
    with caplog.at_level(logging.INFO, logger="kefu.broker"):
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", stack.mqtt), timeout=5) as s:
                s.sendall(b"\x10\x02\x00\x00garbage")  # a malformed CONNECT
                s.recv(16)  # the broker closes (or answers) and closes
    lines = [r for r in caplog.records if r.name == "kefu.broker"]
    assert 1 <= len(lines) <= 121, len(lines)  # before: one line per connection
    stack.alive()
