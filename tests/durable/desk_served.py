"""``kefu serve`` with its desk, as a child process, and the three kinds of people who talk to it:
devices (paho MQTT), widget visitors (/chat WebSocket) and an agent (/chat to be online, the
REST API to reply). Every helper records what kefu *acknowledged* (PUBACK, the /chat ack, an
HTTP 2xx), which is what must still be there after a crash. Nothing sleeps to synchronise.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import threading
from pathlib import Path

import requests
from durable_served import WAIT, Client, Kefu, _toml
from websockets.sync.client import connect as ws_connect

ALICE_TOKEN = "kefu_desk_restart_alice_token"
OPS_TOKEN = "kefu_desk_restart_operator_token"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def desk_config(path: Path, storage: dict, *, state: str = "memory", accept_timeout: float = 0.0,
                extra: str = "") -> Path:
    lines = ['[listeners.mqtt]', 'host = "127.0.0.1"', 'port = 0',
             '[listeners.ws]', 'host = "127.0.0.1"', 'port = 0',
             '[listeners.http]', 'enabled = true', 'host = "127.0.0.1"', 'port = 0',
             '[desk]', 'enabled = true', f'state = "{state}"', f'accept_timeout = {accept_timeout}',
             'agent_keepalive = 0',
             '[nlp]', 'enabled = false', '[mqtt]', 'sys_interval = 0', 'max_offline_messages = 100000',
             '[widget]', 'demo_site = true',
             '[chat]', 'rate_per_second = 1000.0',
             '[storage]'] + [f"{k} = {_toml(v)}" for k, v in storage.items()]
    lines += ['[[teams]]', 'id = "general"',
              '[[agents]]', 'id = "alice"', 'name = "Alice"', 'teams = ["general"]', 'capacity = 100000',
              '[[api.tokens]]', 'name = "alice"', 'role = "agent"', 'agent = "alice"', f'token_sha256 = "{sha(ALICE_TOKEN)}"',
              '[[api.tokens]]', 'name = "ops"', 'role = "operator"', f'token_sha256 = "{sha(OPS_TOKEN)}"']
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


class DeskKefu(Kefu):
    """``Kefu`` that also knows its /chat URL."""

    chat = ""

    def start(self) -> "DeskKefu":
        self.port, self.http, self.chat = 0, "", ""
        super().start()  # returns once the HTTP line is read; /chat is printed before it
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            if m := re.match(r"kefu: browser chat protocol on (ws://\S+)", line):
                self.chat = m.group(1)
            self.lines.put(line)
        self.lines.put(None)

    def api(self, method: str, path: str, token: str = OPS_TOKEN, **kw):
        r = requests.request(method, f"{self.http}/api/v1{path}", headers={"api_access_token": token},
                             timeout=WAIT, **kw)
        return r

    def get(self, path: str, token: str = OPS_TOKEN):
        r = self.api("GET", path, token)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()["data"]

    def all_messages(self, conv_id: str) -> list[dict]:
        out: list[dict] = []
        before = None
        while True:
            q = f"?limit=200" + (f"&before={before}" if before else "")
            page = self.get(f"/conversations/{conv_id}/messages{q}")
            out = page["payload"] + out
            if not page["meta"]["more"] or not page["payload"]:
                return out
            before = page["payload"][0]["seq"]


class Chat:
    """One /chat WebSocket (a visitor, or an agent with a token): frames answered by ``ref``."""

    _refs = itertools.count(1)

    def __init__(self, url: str) -> None:
        self.ws = ws_connect(url, open_timeout=WAIT, close_timeout=1)
        self.frames: list[dict] = []

    def request(self, frame: dict) -> dict:
        ref = f"r{next(self._refs)}"
        self.ws.send(json.dumps({**frame, "ref": ref}))
        while True:
            f = json.loads(self.ws.recv(timeout=WAIT))
            self.frames.append(f)
            if f.get("ref") == ref:
                return f

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001 - the server may be gone
            pass


def visitor(url: str, token: str | None = None) -> tuple[Chat, dict]:
    c = Chat(url)
    auth = {"type": "auth", "role": "visitor", "site": "demo"}
    if token:
        auth["visitor_token"] = token
    ready = c.request(auth)
    assert ready["type"] == "ready", ready
    return c, ready


def agent(url: str, token: str = ALICE_TOKEN) -> Chat:
    c = Chat(url)
    ready = c.request({"type": "auth", "role": "agent", "token": token})
    assert ready["type"] == "ready", ready
    return c


class Load:
    """Devices, visitors and the agent talking at once, each in its own thread, until ``stop``.

    ``acked`` maps a customer id to the texts kefu acknowledged from it, ``replies`` holds the
    agent's replies that got a 2xx (conversation id, text)."""

    def __init__(self, kefu: DeskKefu, *, devices: int = 4, visitors: int = 4) -> None:
        self.kefu = kefu
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, list[str]] = {}
        self.sent: dict[str, list[str]] = {}
        self.replies: list[tuple[str, str]] = []
        self.tokens: dict[str, str] = {}  # visitor id -> visitor token
        self.errors: list[str] = []
        self.total = 0
        self.enough = threading.Event()
        self.want = 0
        self.threads = [threading.Thread(target=self._device, args=(i,), daemon=True) for i in range(devices)]
        self.threads += [threading.Thread(target=self._visitor, args=(i,), daemon=True) for i in range(visitors)]
        self.threads.append(threading.Thread(target=self._agent, daemon=True))

    def start(self, want: int) -> "Load":
        self.want = want
        for t in self.threads:
            t.start()
        return self

    def _count(self, who: str, text: str) -> None:
        with self.lock:
            self.acked.setdefault(who, []).append(text)
            self.total += 1
            if self.total >= self.want:
                self.enough.set()

    def _device(self, i: int) -> None:
        who = f"anon:dev-{i}"  # an anonymous device is the customer anon:<client id>
        c = Client(self.kefu.port, f"dev-{i}", inflight=10)
        pending = []
        try:
            c.connect()
            for n in itertools.count():
                if self.stop.is_set():
                    break
                text = f"{who} message {n}" if n else f"{who}: E5 error, I want to talk to a human"
                self.sent.setdefault(who, []).append(text)
                pending.append((text, c.c.publish(f"kefu/c/{who}/main/in", text.encode(), qos=1)))
                while len(pending) > 5:
                    t, info = pending[0]
                    if not info.is_published():
                        info.wait_for_publish(0.2)
                        if not info.is_published():
                            if self.stop.is_set():
                                break
                            continue
                    pending.pop(0)
                    self._count(who, t)
        except Exception as e:  # noqa: BLE001 - the server was killed under us
            self.errors.append(f"{who}: {e!r}")
        finally:
            for t, info in pending:
                try:
                    published = info.is_published()
                except RuntimeError:  # paho: the connection is gone and this one was never acknowledged
                    published = False
                if published:
                    self._count(who, t)
            c.stop()

    def _visitor(self, i: int) -> None:
        try:
            c, ready = visitor(self.kefu.chat)
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"visitor {i}: {e!r}")
            return
        who = ready["id"]
        with self.lock:
            self.tokens[who] = ready["visitor_token"]
        try:
            for n in itertools.count():
                if self.stop.is_set():
                    break
                text = f"visitor {i} line {n}" if n else f"visitor {i}: talk to a human please"
                self.sent.setdefault(who, []).append(text)
                ans = c.request({"type": "message", "text": text})
                if ans.get("type") == "ack":
                    self._count(who, text)
        except Exception as e:  # noqa: BLE001 - the server was killed under us
            self.errors.append(f"visitor {i}: {e!r}")
        finally:
            c.close()

    def _agent(self) -> None:
        try:
            a = agent(self.kefu.chat)  # online while this socket is open
        except Exception as e:  # noqa: BLE001
            self.errors.append(f"agent: {e!r}")
            return
        try:
            for n in itertools.count():
                if self.stop.is_set():
                    break
                mine = self.kefu.get("/conversations?assignee=me&status=assigned", ALICE_TOKEN)["payload"]
                if not mine:
                    a.request({"type": "ping"})
                    continue
                conv = mine[n % len(mine)]["id"]
                text = f"alice reply {n}"
                r = self.kefu.api("POST", f"/conversations/{conv}/messages", ALICE_TOKEN, json={"content": text})
                if 200 <= r.status_code < 300:
                    with self.lock:
                        self.replies.append((conv, text))
        except Exception as e:  # noqa: BLE001 - the server was killed under us
            self.errors.append(f"agent: {e!r}")
        finally:
            a.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(WAIT)
