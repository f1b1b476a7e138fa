"""WebSocket bridge benchmark: /chat at N concurrent browser-side clients, and MQTT over
WebSocket throughput against other brokers, in one run. Prints tables.

    .venv/bin/python benchmarks/ws_bench.py                # 2000 /chat clients, full MQTT run
    .venv/bin/python benchmarks/ws_bench.py --quick        # small numbers, a smoke run

/chat part: the whole app is started in a subprocess, as ``kefu serve`` runs it (a
generated config: ws/http on free ports, SQLite in a temporary folder, the shipped intent
model unless ``--model DIR|off``, the bot answering from config/answers.toml, ``--agents``
configured agents, none by default). N visitor connections are opened and held
(connections held = authenticated sockets still open at the end); each visitor then sends
``--rounds`` messages, one every ``--interval`` s (random phase), cycling through
questions the bot answers (card arrival, activation, exchange rate, ATMs, PIN: distinct
intents, so no answer counts as "did not help"). Two round trips per message: to its
``ack`` (the message was validated, stored and published) and to the desk's first
message back (the bot's answer, or its handoff notice) -- the answer includes
classification. A message with no answer within 10 s counts as unanswered; a visitor the
bot handed to a human (a full intent queue: ``classifier_busy``) waits for no more answers
(no agent is online) and is counted as handed off. Agents are not simulated; the desk's own
benchmark covers routing.

MQTT part: the same workload against each broker — one subscriber on ``bench/#``,
P publishers each sending M QoS 0 messages of 64 bytes, many packets per WebSocket
message — measured at the subscriber from the first publish to the last delivery.
Brokers: kefu /mqtt (WebSocket), kefu TCP, Mosquitto's WebSocket listener, Mosquitto
TCP, and amqtt's WebSocket listener (a Python broker, for scale). Clients are raw trio
MQTT clients built on kefu's codec, so the client side costs the same for every broker;
each broker runs in its own process, the brokers take turns, ``--repeat`` times, and
the table shows the median rate with the broker's CPU seconds.

Which Mosquitto: Debian 12's /usr/sbin/mosquitto cannot open a WebSocket listener (its
libwebsockets lacks the external-poll support Mosquitto 2.0 needs), so
``benchmarks/build_mosquitto_ws.sh`` builds one from Debian's source packages. The first
of ``--mosquitto PATH``, that script's output (benchmarks/.peers/mosquitto-ws/sbin/
mosquitto), /opt/mosquitto-ws/sbin/mosquitto and the system mosquitto that starts a
WebSocket listener is used for both Mosquitto rows; when none does, the WebSocket row
says so and names the command that builds one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Questions the bot answers with config/answers.toml (each a different intent, classified
# with confidence >= 0.89 and neutral sentiment by the shipped model).
QUESTIONS = ["when will my card arrive?", "how do I activate my card?", "what exchange rate do you use?",
             "does my card work at any ATM?", "how can I change my PIN?"]

import trio
from trio_websocket import open_websocket_url

from kefu.broker.mqtt.codec import Decoder
from kefu.broker.mqtt.encoder import encode
from kefu.broker.mqtt.packets import Connect, Publish, Subscribe, Subscription

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while True:
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
                await s.aclose()
                return
            except OSError:
                await trio.sleep(0.05)


# --------------------------------------------------------------------------- MQTT client


class RawMqtt:
    """Minimal MQTT 3.1.1 client over a WebSocket or a TCP stream (benchmark only)."""

    def __init__(self, ws=None, stream=None) -> None:
        self.ws, self.stream = ws, stream
        self.dec = Decoder(server=False, version=4)

    async def send(self, data: bytes) -> None:
        if self.ws is not None:
            await self.ws.send_message(data)
        else:
            await self.stream.send_all(data)

    async def recv(self) -> list:
        data = await (self.ws.get_message() if self.ws is not None else self.stream.receive_some(65536))
        if not data:
            raise EOFError
        self.dec.feed(data)
        out = []
        while (p := self.dec.next_packet()) is not None:
            out.append(p)
        return out

    async def connect(self, cid: str) -> None:
        await self.send(encode(Connect(client_id=cid, keep_alive=120), 4))
        while not await self.recv():
            pass


async def open_client(kind: str, port: int, cid: str, nursery, stack):
    if kind == "ws":
        ws = await stack.enter_async_context(open_websocket_url(f"ws://127.0.0.1:{port}/mqtt", subprotocols=["mqtt"]))
        c = RawMqtt(ws=ws)
    else:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stack.push_async_callback(stream.aclose)
        c = RawMqtt(stream=stream)
    await c.connect(cid)
    return c


async def mqtt_throughput(kind: str, port: int, publishers: int, per_pub: int, batch: int) -> dict:
    from contextlib import AsyncExitStack

    total = publishers * per_pub
    payload = b"x" * 64
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        sub = await open_client(kind, port, "bench-sub", nursery, stack)
        await sub.send(encode(Subscribe(1, (Subscription("bench/#", 0),)), 4))
        while not await sub.recv():
            pass  # SUBACK
        pubs = [await open_client(kind, port, f"bench-pub-{i}", nursery, stack) for i in range(publishers)]
        got = 0
        done = trio.Event()
        t0 = 0.0
        t_last = 0.0

        async def reader():
            nonlocal got, t_last
            while got < total:
                got += sum(1 for p in await sub.recv() if isinstance(p, Publish))
                t_last = time.perf_counter()
            done.set()

        async def publisher(i: int, c: RawMqtt):
            one = encode(Publish(f"bench/{i}", payload, 0), 4)
            chunk = one * batch
            for _ in range(per_pub // batch):
                await c.send(chunk)

        nursery.start_soon(reader)
        t0 = time.perf_counter()
        async with trio.open_nursery() as pn:
            for i, c in enumerate(pubs):
                pn.start_soon(publisher, i, c)
        with trio.move_on_after(60):
            await done.wait()
        nursery.cancel_scope.cancel()
    elapsed = (t_last or time.perf_counter()) - t0
    return {"delivered": got, "sent": total, "seconds": elapsed, "rate": got / elapsed if elapsed > 0 else 0.0}


# --------------------------------------------------------------------------- brokers


class Proc:
    def __init__(self, argv, env=None, cwd=None) -> None:
        # stderr to a file, not a pipe: a chatty server must never block on a full pipe
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self.err, env=env, cwd=cwd,
                                  start_new_session=True)

    def stop(self) -> str:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.err.seek(0)
        err = self.err.read().decode(errors="replace")
        self.err.close()
        return err


def kefu_config(tmp: Path, *, mqtt: int, ws: int, http: int, chat: bool, agents: int = 0, model: str = "",
                tokens=()) -> Path:
    lines = [
        "[listeners.mqtt]", 'host = "127.0.0.1"', f"port = {mqtt}",
        "[listeners.ws]", "enabled = true", 'host = "127.0.0.1"', f"port = {ws}",
        "[listeners.http]", f"enabled = {'true' if chat else 'false'}", 'host = "127.0.0.1"', f"port = {http}",
        "[chat]", "rate_per_second = 1000.0", "rate_burst = 1000",
        "[log]", 'level = "warning"',
        "[storage]", 'backend = "sqlite"', f'path = "{tmp / f"kefu-{ws}.db"}"',
    ]
    if chat:  # the desk with its bot and the intent model, as `kefu serve` runs them
        lines += ["[bot]", f'answers_file = "{ROOT / "config" / "answers.toml"}"',
                  "[nlp]", f"enabled = {'false' if model == 'off' else 'true'}"]
        if model and model != "off":
            lines.append(f'model = "{model}"')
        lines += ["[[teams]]", 'id = "general"']
        for i in range(agents):
            lines += ["[[agents]]", f'id = "agent-{i}"', f'name = "Agent {i}"', 'teams = ["general"]', "capacity = 10"]
    for name, digest, agent in tokens:
        lines += ["[[api.tokens]]", f'name = "{name}"', f'token_sha256 = "{digest}"', 'role = "agent"', f'agent = "{agent}"']
    p = tmp / "kefu.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def start_kefu(cfg: Path) -> Proc:
    """``kefu serve`` (whatever ``kefu`` this Python imports: PYTHONPATH picks another checkout)."""
    return Proc([PY, "-m", "kefu.cli", "serve", "--config", str(cfg)], cwd=str(ROOT))


BUILD_MOSQUITTO_WS = "benchmarks/build_mosquitto_ws.sh"
PEER_MOSQUITTO = ROOT / "benchmarks/.peers/mosquitto-ws/sbin/mosquitto"


def mosquitto_bin() -> str | None:
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def mosquitto_candidates(explicit: str | None) -> list[str]:
    """Where a WebSocket-capable mosquitto may be, in order of preference."""
    if explicit:
        return [explicit]
    out = [str(PEER_MOSQUITTO), "/opt/mosquitto-ws/sbin/mosquitto"]
    system = mosquitto_bin()
    if system:
        out.append(system)
    return [p for i, p in enumerate(out) if os.path.exists(p) and p not in out[:i]]


async def find_mosquitto_ws(tmp: Path, explicit: str | None) -> tuple[str | None, list[str]]:
    """The first candidate that really starts a WebSocket listener, and why the others did not."""
    if explicit and not os.access(explicit, os.X_OK):
        return None, [f"--mosquitto {explicit}: not an executable file"]
    tried = []
    for exe in mosquitto_candidates(explicit):
        proc, why = await start_mosquitto(tmp, free_port(), True, exe)
        if proc is not None:
            proc.stop()
            return exe, tried
        tried.append(f"{exe}: {why}")
    if not tried:
        tried.append("no mosquitto binary found")
    return None, tried


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of one process (Linux /proc), for the per-CPU-second ratio."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def start_mosquitto(tmp: Path, port: int, websockets: bool, exe: str | None = None) -> tuple[Proc | None, str]:
    exe = exe or mosquitto_bin()
    if exe is None:
        return None, "mosquitto not installed"
    conf = tmp / f"mosq-{port}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\n" + ("protocol websockets\n" if websockets else "") +
                    "allow_anonymous true\nmax_queued_messages 0\n")
    p = Proc([exe, "-c", str(conf)])
    try:
        await wait_port(port, 3)
    except trio.TooSlowError:
        err = p.stop()
        why = err.strip().splitlines()[-1] if err.strip() else "did not start"
        why = re.sub(r"^\d+: ", "", why)
        if websockets and "Unable to start any listening sockets" in why:
            why = "no working WebSocket listener in this build (" + why + ")"
        return None, f"not available: {why}"
    return p, ""


async def start_amqtt(tmp: Path, port: int) -> tuple[Proc | None, str]:
    exe = Path(PY).with_name("amqtt")
    if not exe.exists():
        return None, "amqtt not installed"
    conf = tmp / "amqtt.yaml"
    conf.write_text(f"listeners:\n  default:\n    type: ws\n    bind: 127.0.0.1:{port}\n"
                    "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
    p = Proc([str(exe), "-c", str(conf)])
    try:
        await wait_port(port, 15)
    except trio.TooSlowError:
        err = p.stop()
        return None, "did not start: " + (err.strip().splitlines()[-1] if err.strip() else "?")
    return p, ""


# --------------------------------------------------------------------------- /chat


async def chat_bench(ws_port: int, clients: int, rounds: int, held_for: float, interval: float) -> dict:
    url = f"ws://127.0.0.1:{ws_port}/chat"
    ack_rtts: list[float] = []
    echo_rtts: list[float] = []  # a message -> the desk's first message back (the bot's answer)
    unanswered = [0]
    handed_off = [0]
    ready = 0
    held = 0
    failures: list[str] = []
    all_ready = trio.Event()
    go = trio.Event()
    finished = 0
    all_done = trio.Event()

    async def visitor(i: int):
        nonlocal ready, held, finished
        try:
            async with open_websocket_url(url, extra_headers=[("Origin", "http://127.0.0.1")]) as ws:
                await ws.send_message(json.dumps({"type": "auth", "role": "visitor", "site": "demo"}))
                while True:
                    f = json.loads(await ws.get_message())
                    if f["type"] == "ready":
                        break
                    if f["type"] == "error":
                        raise RuntimeError(f["message"])
                ready += 1
                if ready == clients:
                    all_ready.set()
                await go.wait()
                await trio.sleep(random.uniform(0, interval))  # spread: a steady rate, not one burst
                human = False
                for r in range(rounds):
                    if r:
                        await trio.sleep(interval)
                    ref = f"r{r}"
                    t0 = time.perf_counter()
                    await ws.send_message(json.dumps({"type": "message", "text": QUESTIONS[r % len(QUESTIONS)],
                                                      "ref": ref}))
                    acked = False
                    replied = human  # the desk answers every question (the bot, or its handoff notice)
                    with trio.move_on_after(10) as cs:
                        while not (acked and replied):
                            f = json.loads(await ws.get_message())
                            now = time.perf_counter()
                            if f["type"] == "ack" and f.get("ref") == ref:
                                ack_rtts.append(now - t0)
                                acked = True
                            elif f["type"] == "message" and not replied and f["message"]["author"]["kind"] != "customer":
                                echo_rtts.append(now - t0)
                                replied = True
                            elif not human and (f["type"] == "queue" or (
                                    f["type"] == "conversation" and f["conversation"]["status"] in ("queued", "assigned"))):
                                human = True
                                handed_off[0] += 1
                            elif f["type"] == "error":
                                raise RuntimeError(f["message"])
                    if cs.cancelled_caught and not replied:
                        unanswered[0] += 1
                finished += 1
                if finished == clients:
                    all_done.set()
                await trio.sleep(held_for)
                held += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures.append(f"{type(e).__name__}: {e}")
            finished += 1
            if finished >= clients:
                all_done.set()
            if ready + len(failures) >= clients:
                all_ready.set()

    t_open = time.perf_counter()
    async with trio.open_nursery() as n:
        for i in range(clients):
            n.start_soon(visitor, i)
            if i % 100 == 99:
                await trio.sleep(0.05)  # a gentle ramp: do not overflow the accept backlog
        with trio.move_on_after(120):
            await all_ready.wait()
        t_ready = time.perf_counter() - t_open
        go.set()
        with trio.move_on_after(180):
            await all_done.wait()
    return {"clients": clients, "ready": ready, "held": held, "connect_s": t_ready, "ack": ack_rtts,
            "echo": echo_rtts, "unanswered": unanswered[0], "handed_off": handed_off[0], "failures": failures}


async def node_chat_bench(node: str, ws_port: int, args) -> dict:
    """The same /chat workload from Node's built-in WebSocket (benchmarks/chat_clients.mjs)."""
    script = Path(__file__).with_name("chat_clients.mjs")
    argv = [node, "--experimental-websocket", str(script), f"ws://127.0.0.1:{ws_port}/chat",
            str(args.clients), str(args.rounds), str(args.interval), str(args.hold), json.dumps(QUESTIONS)]
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        raise SystemExit("ws_bench: the node client failed:\n" + done.stderr.decode(errors="replace")[-2000:])
    r = json.loads(done.stdout)
    r["ack"] = [x / 1000 for x in r["ack"]]
    r["echo"] = [x / 1000 for x in r.pop("answer")]
    r["client"] = f"node {subprocess.run([node, '--version'], capture_output=True, text=True).stdout.strip()} WebSocket"
    return r


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


# --------------------------------------------------------------------------- main


def table(rows: list[list[str]], head: list[str]) -> str:
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows])


async def main(args) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        mqtt_port, ws_port, http_port = free_port(), free_port(), free_port()
        chat = not args.skip_chat
        cfg = kefu_config(tmp, mqtt=mqtt_port, ws=ws_port, http=http_port, chat=chat, agents=args.agents,
                          model=args.model)
        kefu = start_kefu(cfg)
        try:
            await wait_port(ws_port, 120)  # the intent model loads first
            import kefu as kefu_pkg

            print(f"# ws_bench: python {sys.version.split()[0]}, {os.cpu_count()} CPUs; kefu pid {kefu.p.pid} "
                  f"from {Path(kefu_pkg.__file__).parent.parent}; intent model: {args.model or 'shipped'}")
            if chat:
                # The file-descriptor limit bounds how many sockets one process may hold.
                import resource

                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                node = shutil.which("node")
                if args.client in ("auto", "node") and node:
                    r = await node_chat_bench(node, ws_port, args)
                elif args.client == "node":
                    raise SystemExit("ws_bench: --client node, but node is not installed")
                else:
                    r = await chat_bench(ws_port, args.clients, args.rounds, args.hold, args.interval)
                    r["client"] = "python (trio-websocket)"
                echo = r["echo"]
                rows = [[r["clients"], r["ready"], r["held"], f"{r['connect_s']:.1f}",
                         len(r["ack"]), f"{pct(r['ack'], 50):.2f}", f"{pct(r['ack'], 99):.2f}",
                         len(echo), f"{pct(echo, 50):.2f}" if echo else "-", f"{pct(echo, 99):.2f}" if echo else "-",
                         r.get("unanswered", 0), r.get("handed_off", 0), len(r["failures"])]]
                print(f"# /chat client: {r['client']}")
                rate = args.clients / args.interval
                print(f"\n/chat: browser-side clients against kefu; each sends {args.rounds} messages, one every "
                      f"{args.interval:g} s (about {rate:.0f} msgs/s in all); round trips in ms\n")
                print(table(rows, ["clients", "authenticated", "held to end", "connect s", "acks", "ack p50",
                                   "ack p99", "answers", "answer p50", "answer p99", "unanswered", "handed off",
                                   "failures"]))
                if r["failures"]:
                    print("  first failures:", "; ".join(sorted(set(r["failures"]))[:3]))
        finally:
            err = kefu.stop()
            if "Traceback" in err:
                print("kefu stderr:\n" + err[-3000:])

        if args.skip_mqtt:
            return
        pubs, per = args.publishers, args.messages
        mosq_ws, tried = await find_mosquitto_ws(tmp, args.mosquitto)
        mosq_exe = mosq_ws or args.mosquitto or mosquitto_bin()
        brokers = [
            ("kefu /mqtt (WebSocket)", "ws", "kefu"),
            ("kefu TCP", "tcp", "kefu"),
            ("mosquitto WebSocket", "ws", "mosq-ws"),
            ("mosquitto TCP", "tcp", "mosq-tcp"),
            ("amqtt WebSocket", "ws", "amqtt"),
        ]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in brokers}
        notes: dict[str, str] = {}
        if mosq_ws is None:
            notes["mosquitto WebSocket"] = ("no WebSocket-capable mosquitto: " + "; ".join(tried) +
                                            f". Build one: {BUILD_MOSQUITTO_WS} (then rerun, or pass --mosquitto PATH)")
        for rep in range(args.repeat):
            for name, kind, starter in brokers:
                if name in notes:
                    continue
                port = free_port()
                proc, note = None, ""
                if starter == "kefu":
                    mport, wport = (free_port(), port) if kind == "ws" else (port, free_port())
                    proc = start_kefu(kefu_config(tmp, mqtt=mport, ws=wport, http=free_port(), chat=False))
                    await wait_port(port)
                elif starter.startswith("mosq"):
                    proc, note = await start_mosquitto(tmp, port, starter == "mosq-ws", mosq_exe)
                else:
                    proc, note = await start_amqtt(tmp, port)
                if proc is None:
                    notes[name] = note
                    continue
                try:
                    n = per if starter != "amqtt" else max(args.batch, per // 10)
                    cpu0 = cpu_seconds(proc.p.pid)
                    r = await mqtt_throughput(kind, port, pubs, n, args.batch)
                    r["cpu"] = cpu_seconds(proc.p.pid) - cpu0
                    runs[name].append(r)
                    print(f"  run {rep + 1}/{args.repeat} {name}: {r['rate']:,.0f} msgs/s, "
                          f"{r['delivered']}/{r['sent']}, broker CPU {r['cpu']:.2f} s", file=sys.stderr)
                except Exception as e:  # noqa: BLE001
                    notes[name] = f"failed: {type(e).__name__}: {e}"
                finally:
                    proc.stop()

        def median_run(name: str) -> dict | None:
            rs = sorted(runs[name], key=lambda r: r["rate"])
            return rs[len(rs) // 2] if rs and name not in notes else None

        med = {name: median_run(name) for name, _, _ in brokers}

        def ratio(a: str, b: str, per_cpu: bool = False) -> str:
            ra, rb = med.get(a), med.get(b)
            if not ra or not rb or not rb["rate"]:
                return "-"
            if per_cpu:
                if not (ra["cpu"] > 0 and rb["cpu"] > 0):
                    return "-"
                return f"{(ra['delivered'] / ra['cpu']) / (rb['delivered'] / rb['cpu']):.2f}x"
            return f"{ra['rate'] / rb['rate']:.2f}x"

        rows = []
        for name, kind, starter in brokers:
            r = med[name]
            rates = [x["rate"] for x in runs[name]]
            spread = f"{min(rates):,.0f}-{max(rates):,.0f}" if len(rates) > 1 and r else "-"
            peer = "mosquitto WebSocket" if kind == "ws" else "mosquitto TCP"
            note = notes.get(name, "")
            if starter.startswith("mosq") and r:
                note = note or mosq_exe
            rows.append([name, f"{r['delivered']}/{r['sent']}" if r else "-", f"{r['rate']:,.0f}" if r else "-",
                         spread, f"{r['cpu']:.2f}" if r else "-",
                         ratio(name, "kefu /mqtt (WebSocket)"), ratio(name, peer) if starter != "amqtt" else
                         ratio(name, "mosquitto WebSocket"),
                         ratio(name, peer, per_cpu=True) if starter != "amqtt" else
                         ratio(name, "mosquitto WebSocket", per_cpu=True), note])
        print(f"\nMQTT QoS 0 fan-in: {pubs} publishers x {per} msgs of 64 B -> 1 subscriber "
              f"({args.batch} packets per write; amqtt gets a tenth of the messages); median of "
              f"{args.repeat} runs, brokers taking turns\n")
        print(table(rows, ["broker", "delivered", "msgs/s", "range", "broker CPU s", "vs kefu /mqtt",
                           "vs mosquitto (same transport)", "per CPU-s vs mosquitto", "note"]))
        print(f"\nkefu /mqtt ÷ mosquitto WebSocket: {ratio('kefu /mqtt (WebSocket)', 'mosquitto WebSocket')} "
              f"(per CPU-s {ratio('kefu /mqtt (WebSocket)', 'mosquitto WebSocket', per_cpu=True)}); "
              f"kefu TCP ÷ mosquitto TCP: {ratio('kefu TCP', 'mosquitto TCP')}")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2000, help="/chat connections (default 2000)")
    ap.add_argument("--rounds", type=int, default=5, help="messages each /chat client sends")
    ap.add_argument("--hold", type=float, default=2.0, help="seconds each client stays connected after its last message")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between one client's messages (random start)")
    ap.add_argument("--publishers", type=int, default=4)
    ap.add_argument("--messages", type=int, default=50000, help="messages per publisher")
    ap.add_argument("--batch", type=int, default=50, help="MQTT packets per transport write")
    ap.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="MQTT runs per broker, brokers taking turns (median shown)")
    ap.add_argument("--mosquitto", metavar="PATH",
                    help=f"a mosquitto with WebSocket support (default: {BUILD_MOSQUITTO_WS}'s output, "
                         "/opt/mosquitto-ws/sbin/mosquitto, then the system one if it can serve WebSocket)")
    ap.add_argument("--skip-chat", action="store_true")
    ap.add_argument("--skip-mqtt", action="store_true")
    ap.add_argument("--client", choices=("auto", "node", "python"), default="auto",
                    help="/chat load generator: Node's WebSocket (cheap; default when node exists) or Python")
    ap.add_argument("--agents", type=int, default=0, help="configured agents (none online: chats wait in the queue)")
    ap.add_argument("--model", default="", help="intent model folder for the /chat server; off: no classifier "
                    "(every message is handed to a human); default: the shipped model")
    a = ap.parse_args()
    if a.mosquitto and not os.access(a.mosquitto, os.X_OK):
        ap.error(f"--mosquitto {a.mosquitto}: not an executable file (build one: {BUILD_MOSQUITTO_WS})")
    if not a.skip_chat and a.model != "off":
        from kefu.nlp.encoder import ModelError, read_info

        try:
            read_info(a.model or None)
        except ModelError as e:
            ap.error(f"{e} (or pass --model DIR, or --model off)")
    if a.quick:
        a.clients, a.rounds, a.messages, a.hold, a.interval, a.repeat = 50, 2, 5000, 0.5, 1.0, 1
    trio.run(main, a)
