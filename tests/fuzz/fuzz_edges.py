"""Fuzz every listener of a running kefu over real sockets; other clients are measured meanwhile.

What is sent (seeded, reproducible):

* ``mqtt``: MQTT 3.1.1 and 5.0 packets over TCP -- mostly well-formed packets with hostile
  content (topics and payloads with lone surrogates encoded as UTF-8, NUL, wildcards where
  none may be, deep JSON, random bytes, kefu's own topics), a share corrupted (flipped bytes,
  cut, random remaining length, garbage). A connection the broker closes is replaced.
* ``mqtt_ws``: the same packets in binary WebSocket messages on ``/mqtt``, a share sent as
  text messages (which must close that connection).
* ``chat``: ``/chat`` frames before and after a visitor's ``auth``: JSON from a grammar of nasty
  values (lone surrogate escapes, deep nesting, huge numbers, every frame type with wrong
  fields), and non-JSON text.
* ``rest``: REST bodies and headers on the routes that take a body.
* ``config``: mutated TOML through ``kefu.config.load`` (in this process): it must raise
  ``ConfigError`` or load, nothing else.

Invariants checked: the server never exits (``alive()``), a bad input only closes or answers
its own connection, a bystander keeps getting MQTT round trips and /chat pongs (their latency
is recorded: p50/p99 during the fuzz), and, for a server in its own process, RSS before, at its
peak, right after the fuzz and ``--settle`` seconds later (memory given back).

``python tests/fuzz/fuzz_edges.py --help`` runs it long against a fresh ``kefu serve`` child
process; tests/fuzz/test_fuzz_bounded.py runs a few seconds of it against an in-process kefu.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

# --------------------------------------------------------------------------- hostile values

NASTY_STR = [
    "", "a", "\u202egnp.exe", "zero\u200bwidth", "中文 客服", "😀", "\x00", "x" * 70000, "%s%n", "../../etc/passwd",
    "<script>alert(1)</script>", "kefu/c/user-2001/web/in", "#", "+", "$SYS/broker", "anon:x", "agent:alice",
]
SURROGATE_ESCAPES = ["\\ud800", "\\udfff", "\\udc00\\ud800", "a\\ud83d", "\\ud83d\\ude00"]  # the last is valid


def nasty_json_text(rng: random.Random, depth: int = 0) -> str:
    """A JSON text (mostly valid syntax) built from hostile values."""
    r = rng.random()
    if depth > 3 or r < 0.3:
        c = rng.random()
        if c < 0.3:
            return '"' + rng.choice(SURROGATE_ESCAPES) + rng.choice(["", "x", " hi"]) + '"'
        if c < 0.55:
            return json.dumps(rng.choice(NASTY_STR)[:2000], ensure_ascii=rng.random() < 0.5)
        if c < 0.7:
            return rng.choice(["1e999999", "-0", "123456789012345678901234567890", "NaN", "true", "null", "1.5"])
        if c < 0.8:
            n = rng.choice([50, 500, 5000])
            return "[" * n + "]" * n
        return json.dumps(rng.randint(-2**63, 2**63))
    if r < 0.65:
        keys = ["type", "text", "ref", "role", "site", "token", "conversation", "identity", "profile", "id", "hash",
                "name", "limit", "before", "on", "up_to", "rating", "comment", "action", "status", "private",
                "\\ud800", "", "x" * 100]
        items = [f'"{rng.choice(keys)}":{nasty_json_text(rng, depth + 1)}' for _ in range(rng.randint(0, 5))]
        return "{" + ",".join(items) + "}"
    return "[" + ",".join(nasty_json_text(rng, depth + 1) for _ in range(rng.randint(0, 4))) + "]"


FRAME_TYPES = ["auth", "message", "typing", "read", "history", "action", "status", "csat", "ping", "\\udfff", "x"]


def chat_frame(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.6:
        t = rng.choice(FRAME_TYPES)
        body = nasty_json_text(rng)
        if body.startswith("{") and body != "{}":
            return '{"type":"' + t + '",' + body[1:]
        return '{"type":"' + t + '","text":' + body + "}"
    if r < 0.9:
        return nasty_json_text(rng)
    return "".join(chr(rng.randint(1, 0xD7FF)) for _ in range(rng.randint(0, 40)))


# --------------------------------------------------------------------------- MQTT packets


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b: bytes) -> bytes:
    return struct.pack(">H", len(b) & 0xFFFF) + b[:0xFFFF]


def packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str, v5: bool) -> bytes:
    body = s16(b"MQTT") + bytes([5 if v5 else 4, 0x02]) + struct.pack(">H", 30)
    if v5:
        body += b"\x00"
    return packet(0x10, body + s16(client_id.encode()))


def hostile_topic(rng: random.Random) -> bytes:
    c = rng.random()
    if c < 0.2:
        return b"kefu/c/anon:fz/main/in"
    if c < 0.3:
        return b"kefu/c/x\xed\xa0\x80/main/in"  # a surrogate encoded as UTF-8: invalid
    if c < 0.4:
        return b"a/" * rng.randint(1, 100) + b"b"
    if c < 0.5:
        return rng.choice([b"#", b"+/x", b"$SYS/x", b"a\x00b", b"", b"\xff\xfe", b"kefu/desk/events"])
    return "/".join(rng.choice(NASTY_STR)[:30] for _ in range(rng.randint(1, 4))).encode("utf-8", "surrogatepass")


def hostile_payload(rng: random.Random) -> bytes:
    c = rng.random()
    if c < 0.4:
        return nasty_json_text(rng).encode("utf-8", "surrogatepass")[:60000]
    if c < 0.6:
        return b'{"type":"message","text":"hi \\ud800"}'
    if c < 0.8:
        return rng.randbytes(rng.randint(0, 300))
    return rng.choice(NASTY_STR).encode("utf-8", "surrogatepass")[:60000]


def mqtt_case(rng: random.Random, v5: bool, pid: int) -> bytes:
    c = rng.random()
    props = b"\x00" if v5 else b""
    if c < 0.45:
        qos = rng.choice([0, 1, 1, 2])
        retain = rng.random() < 0.1
        body = s16(hostile_topic(rng)) + (struct.pack(">H", pid) if qos else b"")
        if v5:
            body += rng.choice([b"\x00", b"\x02\x01\x01", b"\x05\x02\x00\x00\x00\x05", b"\x03\x23\x00\x01"])
        p = packet(0x30 | qos << 1 | retain, body + hostile_payload(rng))
    elif c < 0.6:
        filt = hostile_topic(rng) if rng.random() < 0.7 else rng.choice([b"#", b"kefu/#", b"$share/g/kefu/c/+/main/out"])
        p = packet(0x82, struct.pack(">H", pid) + props + s16(filt) + bytes([rng.choice([0, 1, 2, 3, 0x2E])]))
    elif c < 0.65:
        p = packet(0xA2, struct.pack(">H", pid) + props + s16(hostile_topic(rng)))
    elif c < 0.7:
        p = b"\xc0\x00"
    elif c < 0.75:
        p = packet(rng.choice([0x40, 0x50, 0x62, 0x70]), struct.pack(">H", rng.randint(0, 65535)))
    else:
        p = None
    if p is None or rng.random() < 0.2:  # corrupt
        base = p or connect("x", v5)
        k = rng.random()
        if k < 0.3:
            b = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            p = bytes(b)
        elif k < 0.5:
            p = base[: rng.randint(1, max(1, len(base) - 1))] + rng.randbytes(3)
        elif k < 0.7:
            p = bytes([base[0]]) + b"\xff\xff\xff\x7f" + base[2:]
        else:
            p = rng.randbytes(rng.randint(1, 64))
    return p


# --------------------------------------------------------------------------- the run


@dataclass
class Report:
    cases: dict = field(default_factory=lambda: {"mqtt": 0, "mqtt_ws": 0, "chat": 0, "rest": 0, "config": 0})
    connections: dict = field(default_factory=lambda: {"mqtt": 0, "mqtt_ws": 0, "chat": 0})
    crashes: list = field(default_factory=list)  # what broke an invariant
    rtt_mqtt: list = field(default_factory=list)
    rtt_chat: list = field(default_factory=list)
    seconds: float = 0.0
    phase_seconds: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def pct(xs, q):
            if not xs:
                return None
            xs = sorted(xs)
            return round(xs[min(len(xs) - 1, int(q / 100 * len(xs)))] * 1000, 2)

        return {"cases": self.cases, "connections": self.connections, "crashes": self.crashes,
                "seconds": round(self.seconds, 1), "phase_seconds": self.phase_seconds,
                "bystander_mqtt_rtt_ms": {"n": len(self.rtt_mqtt), "p50": pct(self.rtt_mqtt, 50),
                                          "p99": pct(self.rtt_mqtt, 99)},
                "bystander_chat_rtt_ms": {"n": len(self.rtt_chat), "p50": pct(self.rtt_chat, 50),
                                          "p99": pct(self.rtt_chat, 99)}}


def _drain(sock: socket.socket) -> bool:
    """Read what is there without waiting; False once the peer closed."""
    try:
        while True:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
            if not data:
                return False
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False


def fuzz_mqtt(host: str, port: int, n: int, rng: random.Random, rep: Report) -> None:
    sock = None
    pid = 1
    v5 = True
    sent_on_conn = 0
    i = 0
    while i < n:
        if sock is None or sent_on_conn > 2000:
            if sock is not None:
                sock.close()
            sock = socket.create_connection((host, port), timeout=5)
            rep.connections["mqtt"] += 1
            v5 = rng.random() < 0.6
            sock.sendall(connect(f"fz-{rng.randrange(10**6)}", v5))
            sent_on_conn = 0
        batch = b"".join(mqtt_case(rng, v5, (pid + k) % 65535 + 1) for k in range(min(50, n - i)))
        pid = (pid + 50) % 65535
        try:
            sock.sendall(batch)
            i += min(50, n - i)
            sent_on_conn += 50
            if not _drain(sock):
                sock.close()
                sock = None
        except OSError:
            sock.close()
            sock = None
            i += 1
    if sock is not None:
        sock.close()
    rep.cases["mqtt"] += n


def fuzz_mqtt_ws(ws_url: str, n: int, rng: random.Random, rep: Report) -> None:
    from websockets.sync.client import connect as ws_connect

    ws = None
    i = 0
    while i < n:
        try:
            if ws is None:
                ws = ws_connect(ws_url + "/mqtt", subprotocols=["mqtt"], open_timeout=10, close_timeout=1)
                rep.connections["mqtt_ws"] += 1
                ws.send(connect(f"fzw-{rng.randrange(10**6)}", True))
            if rng.random() < 0.02:
                ws.send("text is not MQTT")  # must close this connection
            else:
                ws.send(b"".join(mqtt_case(rng, True, k + 1) for k in range(10)))
            i += 10
        except Exception:  # noqa: BLE001 - closed by the server: expected for bad input
            try:
                ws.close()
            except Exception:  # noqa: BLE001
                pass
            ws = None
            i += 1
    if ws is not None:
        ws.close()
    rep.cases["mqtt_ws"] += n


def fuzz_chat(ws_url: str, n: int, rng: random.Random, rep: Report) -> None:
    from websockets.sync.client import connect as ws_connect

    ws = None
    i = 0
    while i < n:
        try:
            if ws is None:
                ws = ws_connect(ws_url + "/chat", open_timeout=10, close_timeout=1, max_size=2**22)
                rep.connections["chat"] += 1
                if rng.random() < 0.5:
                    ws.send(json.dumps({"type": "auth", "role": "visitor", "site": "pk_shop"}))
            ws.send(chat_frame(rng))
            i += 1
            while True:  # read what came back without waiting long
                ws.recv(timeout=0 if rng.random() < 0.9 else 0.05)
        except TimeoutError:
            continue
        except Exception:  # noqa: BLE001 - closed (too many bad frames, rate limit): a new connection
            try:
                ws.close()
            except Exception:  # noqa: BLE001
                pass
            ws = None
    if ws is not None:
        ws.close()
    rep.cases["chat"] += n


REST_ROUTES = [("POST", "/api/v1/webhooks"), ("POST", "/api/v1/conversations/cv-1/messages"),
               ("POST", "/api/v1/conversations/cv-1/assignments"), ("POST", "/api/v1/conversations/cv-1/labels"),
               ("POST", "/api/v1/conversations/cv-1/toggle_status"), ("GET", "/api/v1/search"),
               ("POST", "/api/v1/agents/alice/status"), ("GET", "/api/v1/conversations")]


def fuzz_rest(http: str, token: str, n: int, rng: random.Random, rep: Report) -> None:
    import requests

    s = requests.Session()
    for _ in range(n):
        method, path = rng.choice(REST_ROUTES)
        body = nasty_json_text(rng).encode("utf-8", "surrogatepass") if rng.random() < 0.9 else rng.randbytes(50)
        headers = {"Content-Type": "application/json"}
        if rng.random() < 0.9:
            headers["api_access_token"] = token if rng.random() < 0.8 else rng.choice(NASTY_STR)[:100].encode(
                "latin-1", "replace").decode("latin-1")
        params = {"q": rng.choice(NASTY_STR)[:200], "limit": rng.choice(["1", "-1", "x", "99999"])}
        try:
            r = s.request(method, http + path, data=body, headers=headers, params=params, timeout=10)
        except requests.RequestException:
            # A kept-alive connection the server closed (after answering a request whose body it
            # did not read, say) races with the next request: ask again on a fresh connection.
            s = requests.Session()
            try:
                r = s.request(method, http + path, data=body, headers=headers, params=params, timeout=10)
            except requests.RequestException as e:
                rep.crashes.append(f"rest {method} {path}: no answer: {e}")
                continue
        if r.status_code >= 500:
            rep.crashes.append(f"rest {method} {path}: {r.status_code} {r.text[:120]}")
    rep.cases["rest"] += n


CONFIG_SEED = """
[listeners.mqtt]
port = 1883
[mqtt]
max_packet_size = 1048576
[auth]
allow_anonymous = true
[[auth.users]]
username = "dev"
password_hash = "scrypt$14$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
[[agents]]
id = "alice"
teams = ["general"]
[widget]
thread = "web"
"""


def fuzz_config(n: int, rng: random.Random, rep: Report, tmpdir: str) -> None:
    from kefu.config import ConfigError, load

    path = os.path.join(tmpdir, "fuzz.toml")
    tokens = ["=", "[", "]", "\"", "'", "\n", "[[", "]]", "{", "}", ",", "true", "1e9999", "-1", "\ud800", "\x00",
              "max_packet_size", "port", "users", "\\u0000", "\"\"\"", "\u202e", "9" * 40]
    for _ in range(n):
        text = list(CONFIG_SEED)
        for _ in range(rng.randint(1, 6)):
            k = rng.randrange(len(text) + 1)
            op = rng.random()
            if op < 0.4:
                text.insert(k, rng.choice(tokens))
            elif op < 0.7 and text:
                del text[min(k, len(text) - 1)]
            elif text:
                text[min(k, len(text) - 1)] = chr(rng.randint(0, 0x2FFF))
        try:
            with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write("".join(text))
            load(path)
        except ConfigError:
            pass
        except Exception as e:  # noqa: BLE001 - the invariant: bad config is a ConfigError
            rep.crashes.append(f"config: {type(e).__name__}: {str(e)[:160]}")
    rep.cases["config"] += n


class Bystander:
    """A well-behaved MQTT client and /chat client; their round trips are timed."""

    def __init__(self, host: str, mqtt_port: int, ws_url: str, rep: Report) -> None:
        self.host, self.port, self.ws_url, self.rep = host, mqtt_port, ws_url, rep
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._mqtt, daemon=True),
                        threading.Thread(target=self._chat, daemon=True)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def _mqtt(self) -> None:
        import queue

        import paho.mqtt.client as mqtt

        got: queue.Queue = queue.Queue()
        subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bystander-mqtt", protocol=mqtt.MQTTv5)
        c.on_message = lambda cl, u, m: got.put(m.payload)
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect(self.host, self.port)
        c.loop_start()
        c.subscribe("bystander/echo", qos=1)
        if not subscribed.wait(10):
            self.errors.append("mqtt bystander: no SUBACK")
            return
        k = 0
        while not self.stop.is_set():
            k += 1
            t0 = time.perf_counter()
            c.publish("bystander/echo", str(k).encode(), qos=1)
            try:
                while got.get(timeout=10) != str(k).encode():
                    pass
                self.rep.rtt_mqtt.append(time.perf_counter() - t0)
            except queue.Empty:
                self.errors.append(f"mqtt bystander: no echo of {k} within 10 s")
            self.stop.wait(0.02)
        c.disconnect()
        c.loop_stop()

    def _chat(self) -> None:
        from websockets.sync.client import connect as ws_connect

        with ws_connect(self.ws_url + "/chat", open_timeout=10) as ws:
            # a signed-out visitor (an unauthenticated connection is closed after chat.auth_timeout)
            ws.send(json.dumps({"type": "auth", "role": "visitor", "site": "pk_shop", "ref": "a"}))
            while json.loads(ws.recv(timeout=10)).get("ref") != "a":
                pass
            k = 0
            while not self.stop.is_set():
                k += 1
                t0 = time.perf_counter()
                ws.send(json.dumps({"type": "ping", "ref": f"p{k}"}))
                try:
                    while json.loads(ws.recv(timeout=10)).get("ref") != f"p{k}":
                        pass
                    self.rep.rtt_chat.append(time.perf_counter() - t0)
                except TimeoutError:
                    self.errors.append(f"chat bystander: no pong {k} within 10 s")
                except Exception as e:  # noqa: BLE001 - the bystander's connection must not end
                    self.errors.append(f"chat bystander: connection ended: {e}")
                    return
                self.stop.wait(0.15)  # well under the /chat rate limit (chat.rate_per_second = 10)


def run_all(host: str, mqtt_port: int, ws_url: str, http: str, token: str, *, seed: int, mqtt: int, mqtt_ws: int,
            chat: int, rest: int, config: int, tmpdir: str, alive=None) -> Report:
    rng = random.Random(seed)
    rep = Report()
    t0 = time.perf_counter()
    with Bystander(host, mqtt_port, ws_url, rep) as by:
        for name, fn in (("config", lambda: fuzz_config(config, rng, rep, tmpdir)),
                         ("mqtt", lambda: fuzz_mqtt(host, mqtt_port, mqtt, rng, rep)),
                         ("mqtt_ws", lambda: fuzz_mqtt_ws(ws_url, mqtt_ws, rng, rep)),
                         ("chat", lambda: fuzz_chat(ws_url, chat, rng, rep)),
                         ("rest", lambda: fuzz_rest(http, token, rest, rng, rep))):
            t1 = time.perf_counter()
            fn()
            rep.phase_seconds[name] = round(time.perf_counter() - t1, 1)
            if alive is not None and not alive():
                rep.crashes.append(f"the server is gone after the {name} fuzz")
                break
    rep.crashes += by.errors
    rep.seconds = time.perf_counter() - t0
    return rep


# --------------------------------------------------------------------------- long run: a child kefu


def _rss_kib(pid: int, field: str = "VmRSS:") -> int:
    """RSS now (or with ``VmHWM:`` its peak) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fuzz a fresh `kefu serve` child process on every listener and report "
                                             "cases, crashes, the bystanders' p50/p99 and the server's RSS.")
    ap.add_argument("--mqtt", type=int, default=1_000_000, help="MQTT packets over TCP")
    ap.add_argument("--mqtt-ws", type=int, default=20_000, help="MQTT packets over /mqtt")
    ap.add_argument("--chat", type=int, default=100_000, help="/chat frames")
    ap.add_argument("--rest", type=int, default=5_000, help="REST requests")
    ap.add_argument("--config", type=int, default=20_000, help="config files")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--settle", type=float, default=40.0,
                    help="seconds to wait after the fuzz before the last RSS reading (kefu gives memory back after "
                         "a busy interval: kefu.broker.server.TRIM_EVERY)")
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("websockets").setLevel(logging.CRITICAL)  # the client library's own noise on closes

    import subprocess
    import tempfile

    from kefu.bridge.identity import sha256_hex

    tmp = tempfile.mkdtemp(prefix="kefu-fuzz-")
    ports = {}
    for k in ("mqtt", "ws", "http"):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports[k] = s.getsockname()[1]
        s.close()
    token = "tok-fuzz-operator-0123456789"
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    cfg = f"""
[listeners.mqtt]
host = "127.0.0.1"
port = {ports['mqtt']}
[listeners.ws]
host = "127.0.0.1"
port = {ports['ws']}
[listeners.http]
host = "127.0.0.1"
port = {ports['http']}
[storage]
path = "{tmp}/kefu.db"
[nlp]
enabled = false
[mqtt]
sys_interval = 0
[log]
level = "warning"
[[api.tokens]]
name = "ops"
token_sha256 = "{sha256_hex(token)}"
role = "operator"
[[widget.sites]]
name = "Shop"
public_token = "pk_shop"
[[teams]]
id = "general"
[[agents]]
id = "alice"
teams = ["general"]
"""
    path = os.path.join(tmp, "kefu.toml")
    with open(path, "w") as f:
        f.write(cfg)
    log = open(os.path.join(tmp, "kefu.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "kefu.cli", "serve", "--config", path], stdout=log, stderr=log,
                            cwd=root)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports["http"]), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("kefu did not start; see", log.name)
                    return 2
                time.sleep(0.2)
        rss0 = _rss_kib(proc.pid)
        rep = run_all("127.0.0.1", ports["mqtt"], f"ws://127.0.0.1:{ports['ws']}", f"http://127.0.0.1:{ports['http']}",
                      token, seed=args.seed, mqtt=args.mqtt, mqtt_ws=args.mqtt_ws, chat=args.chat, rest=args.rest,
                      config=args.config, tmpdir=tmp, alive=lambda: proc.poll() is None)
        rss1 = _rss_kib(proc.pid) if proc.poll() is None else 0
        peak = _rss_kib(proc.pid, "VmHWM:") if proc.poll() is None else 0
        time.sleep(args.settle)
        rss2 = _rss_kib(proc.pid) if proc.poll() is None else 0
        out = rep.summary()
        if proc.poll() is None:  # what the fuzz left in the broker (bounded by the quotas)
            import requests

            text = requests.get(f"http://127.0.0.1:{ports['http']}/metrics", timeout=10).text
            out["server_state"] = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                                   if line.startswith(("kefu_mqtt_sessions ", "kefu_mqtt_subscriptions ",
                                                       "kefu_mqtt_retained_messages ", "kefu_connection_errors_total "))}
        out["server_alive"] = proc.poll() is None
        out["server_rss_mib"] = {"before": round(rss0 / 1024, 1), "peak": round(peak / 1024, 1),
                                 "after": round(rss1 / 1024, 1), f"after_{args.settle:g}s": round(rss2 / 1024, 1)}
        out["log_lines"] = sum(1 for _ in open(log.name))
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0 if out["server_alive"] and not rep.crashes else 1
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
