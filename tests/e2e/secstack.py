"""The whole kefu (``kefu.app.run``) in a background thread for the security tests.

config/demo.toml as shipped (agents, teams, routing), every listener on port 0, SQLite in
a temporary folder, the intent model off (these tests are about the edges, not intents).
Clients are real: paho-mqtt, ``websockets``' blocking client, ``requests``. ``SecStack``
is a context manager; ``alive()`` is what every test asserts at the end: the process is
still serving MQTT, /chat and HTTP to clients that did nothing wrong.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import requests
from websockets.sync.client import connect as ws_connect

from kefu.bridge.identity import sha256_hex, sign_identity
from kefu.broker.auth import hash_password
from kefu.config import from_dict

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "config"
sys.path.insert(0, str(ROOT / "tests" / "broker"))
from realclients import KefuThread, Paho  # noqa: E402

TOKENS = {"alice": "tok-alice-sec-0123456789", "vera": "tok-vera-sec-0123456789",
          "chen": "tok-chen-sec-0123456789"}  # chen: a supervisor here (sees every team)
OPERATOR = "tok-operator-sec-0123456789"
SITE_SECRET = "shop-secret-for-sec-tests"
DEVICE_PASSWORD = "dev-pass-7"
_HASH = hash_password(DEVICE_PASSWORD, log_n=4)  # cheap for tests; the format is the same
WAIT = 10.0


def sec_config(tmp: Path, **sections):
    data = tomllib.loads((CONFIG_DIR / "demo.toml").read_text())
    data["listeners"] = {
        "mqtt": {"host": "127.0.0.1", "port": 0},
        "ws": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
    }
    data["storage"] = {"backend": "sqlite", "path": str(tmp / "kefu.db")}
    data.setdefault("mqtt", {})["sys_interval"] = 0
    data["nlp"] = {"enabled": False}
    data["bot"]["answers_file"] = str(CONFIG_DIR / "answers.toml")
    for a in data["agents"]:
        if a["id"] == "chen":
            a["supervisor"] = True
    data["api"] = {"tokens": [
        *({"name": a, "token_sha256": sha256_hex(t), "role": "agent", "agent": a} for a, t in TOKENS.items()),
        {"name": "ops", "token_sha256": sha256_hex(OPERATOR), "role": "operator"},
    ]}
    data.setdefault("widget", {})["sites"] = [
        {"name": "Shop", "public_token": "pk_shop", "identity_secret": SITE_SECRET}]
    data.setdefault("auth", {})["users"] = [
        {"username": "meter-7", "password_hash": _HASH},
        {"username": "user-2001", "password_hash": _HASH},
    ]
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return from_dict(data)


class SecStack:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.k = KefuThread(cfg)

    def __enter__(self) -> "SecStack":
        self.k.start()
        app = self.k.app
        self.app = app
        self.mqtt = app.port("mqtt")
        self.ws = app.bridge.ws_url
        self.http = app.bridge.http_url
        return self

    def __exit__(self, *exc) -> None:
        self.k.stop()

    def acall(self, afn, *args):
        """Run an async function on kefu's trio thread (read the desk's state)."""
        import trio

        return trio.from_thread.run(afn, *args, trio_token=self.k._token)

    # --- clients ------------------------------------------------------------------------
    def chat(self, **kw):
        return ws_connect(self.ws + "/chat", open_timeout=WAIT, close_timeout=2, **kw)

    def visitor(self, **auth):
        """A signed-in (identity=...) or anonymous visitor: (websocket, ready frame)."""
        ws = self.chat()
        ws.send(json.dumps({"type": "auth", "role": "visitor", "site": "pk_shop", "ref": "a", **auth}))
        ready = recv_until(ws, lambda f: f.get("ref") == "a")
        assert ready["type"] == "ready", ready
        return ws, ready

    def agent(self, name: str):
        ws = self.chat()
        ws.send(json.dumps({"type": "auth", "role": "agent", "token": TOKENS[name], "ref": "a"}))
        ready = recv_until(ws, lambda f: f.get("ref") == "a")
        assert ready["type"] == "ready", ready
        return ws

    def get(self, path: str, token: str | None = OPERATOR, **kw):
        h = {"api_access_token": token} if token else {}
        return requests.get(self.http + path, headers=h, timeout=WAIT, **kw)

    def post(self, path: str, data: bytes | str, token: str | None = OPERATOR):
        h = {"Content-Type": "application/json", **({"api_access_token": token} if token else {})}
        return requests.post(self.http + path, data=data, headers=h, timeout=WAIT)

    def alive(self) -> None:
        """Other clients are still served: an MQTT round trip, a /chat ping, an HTTP answer."""
        p = Paho(self.mqtt, "bystander-probe", version=5)
        try:
            assert p.connect()[1] == 0
            assert p.subscribe("probe/#", qos=1) == [1]
            p.publish("probe/x", b"still here", qos=1)
            assert p.get(WAIT).payload == b"still here"
        finally:
            p.disconnect()
        with self.chat() as ws:
            ws.send('{"type":"ping","ref":"p"}')
            assert recv_until(ws, lambda f: f.get("ref") == "p")["type"] == "pong"
        assert requests.get(self.http + "/healthz", timeout=WAIT).status_code == 200
        assert self.k.error is None and self.k._thread.is_alive()


def recv_until(ws, pred, timeout: float = WAIT) -> dict:
    while True:
        f = json.loads(ws.recv(timeout=timeout))
        if pred(f):
            return f


def signed(uid: str) -> dict:
    return {"identity": {"id": uid, "hash": sign_identity(SITE_SECRET, uid)}}


def ws_port(url: str) -> int:
    return urlparse(url).port
