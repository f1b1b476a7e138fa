"""Customer -> agent latency through the whole desk, and what it costs. One command, prints tables.

    .venv/bin/python benchmarks/desk_bench.py                # the issue's load on the shipped BANKING77 model
    options: --customers 2000 --agents 200 --capacity 10 --interval 3 --duration 30 --model DIR|off
             --gc tuned|default --no-search-index --profile DIR (py-spy) --core-only
    env: KEFU_BENCH_STEPS=1 (trio task steps), KEFU_BENCH_STALLS=1 (event-loop heartbeat in both
         processes, stacks while the loop is overdue, GC pauses, and the server-side share of the
         latency: send -> the desk's copy for the agent enters the router), KEFU_BENCH_GC_TYPES=1

Two measurements:

1. *core*: the Desk alone in this process (in-memory store, publisher records the time
   the agent's inbox frame is handed to it): what the desk's own logic costs per message.
2. *stack*: the whole kefu app (``kefu.app.run``, as ``kefu serve`` runs it, GC tuned
   after start-up) in a server process -- broker, RouterBus, the desk on the broker glue
   (topic ACL on every publish), the /chat bridge, the intent service, metrics, and
   durable transcripts in SQLite -- and a load process with half the customers as MQTT devices
   (raw TCP, kefu's codec), half as /chat browsers (WebSocket), and the agents as MQTT
   clients signed in as ``agent:<id>``. Every customer asks for a human, waits until an
   agent joins, then sends a message every ``interval`` seconds (random phase) carrying
   its send time; the agent that holds the conversation records the latency. Lost =
   messages sent after the agent joined that never reached it. Memory = the server's RSS.

Both processes run on the same machine, so their CPU use competes: the figures are an
upper bound of what a dedicated server would show.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
sys.path.insert(0, str(ROOT))

from kefu.broker.mqtt.codec import Decoder, encode  # noqa: E402
from kefu.broker.mqtt.packets import Connect, PubAck, Publish, Subscribe, Subscription  # noqa: E402

PASSWORD = "bench-agent-password"


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).rjust(x) if i else str(c).ljust(x) for i, (c, x) in enumerate(zip(r, w)))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in rows])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Pred:
    intent: str
    confidence: float
    out_of_scope: bool = False
    sentiment: str = "neutral"


def keyword_classify(text: str) -> Pred:
    t = text.lower()
    if "stolen" in t:
        return Pred("lost_or_stolen_card", 0.95)
    if "arrive" in t:
        return Pred("card_arrival", 0.95)
    return Pred("card_not_working", 0.3)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- 1. core


async def core_bench(customers: int, agents: int, capacity: int, messages: int) -> dict:
    from kefu.agents import Agent
    from kefu.desk import Desk
    from kefu.settings import DeskSettings

    sent: dict[str, float] = {}
    lat: list[float] = []

    async def publish(topic: str, payload: bytes) -> None:
        if "/inbox" in topic and b'"customer"' in payload:
            doc = json.loads(payload)
            if doc.get("type") == "message":
                t0 = sent.pop(doc["message"]["text"], None)
                if t0 is not None:
                    lat.append(time.perf_counter() - t0)

    team = tuple(Agent(f"a{i}", teams=frozenset({"general"}), capacity=capacity) for i in range(agents))
    desk = Desk(DeskSettings(agents=team, accept_timeout=0.0, queue_message=""), classify=keyword_classify,
                publish=publish)
    import tracemalloc

    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    async with trio.open_nursery() as n:
        await n.start(desk.run)
        for i in range(agents):
            await desk.agent_connected(f"a{i}")
        for c in range(customers):
            await desk.customer_message("mqtt", f"c{c}", "talk to a human")
        mem = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()  # it slows Python down several times: memory only over the setup
        gc.collect()
        t0 = time.perf_counter()
        for k in range(messages):
            text = f"m{k}"
            sent[text] = time.perf_counter()
            await desk.customer_message("mqtt", f"c{k % customers}", text)
        elapsed = time.perf_counter() - t0
        n.cancel_scope.cancel()
    return {"lat": lat, "lost": len(sent), "rate": messages / elapsed, "mem": mem, "assigned": customers}


async def queue_bench(agents: int, capacity: int, waiting: int) -> dict:
    """Every agent full, then ``waiting`` more customers queue: what a handoff into a long queue
    and a waiting customer's message (with its queue position, as /chat shows it) cost."""
    from kefu.agents import Agent
    from kefu.desk import Desk
    from kefu.settings import DeskSettings

    team = tuple(Agent(f"a{i}", teams=frozenset({"general"}), capacity=capacity) for i in range(agents))
    desk = Desk(DeskSettings(agents=team, accept_timeout=0.0, queue_message=""), classify=keyword_classify)
    full = agents * capacity
    async with trio.open_nursery() as n:
        await n.start(desk.run)
        for i in range(agents):
            await desk.agent_connected(f"a{i}")
        for c in range(full):
            await desk.customer_message("mqtt", f"c{c}", "talk to a human")
        t0 = time.perf_counter()
        for c in range(full, full + waiting):
            await desk.customer_message("mqtt", f"c{c}", "talk to a human")
        t1 = time.perf_counter()
        for k in range(1000):
            r = await desk.customer_message("mqtt", f"c{full + (k * 7) % waiting}", f"still there? {k}")
            await desk.conversation(r["conversation"]["id"])
        t2 = time.perf_counter()
        n.cancel_scope.cancel()
    return {"handoff": (t1 - t0) / waiting, "queued_msg": (t2 - t1) / 1000}


# --------------------------------------------------------------------------- 2. stack: server


# The record configurations a run compares, side by side (``--records``): name -> (label, storage lines).
RECORDS = {
    "before-commit": "SQLite, acknowledged before the commit (storage.ack_after_commit = false: the write-behind "
                     "desk before the durable record)",
    "sqlite": "SQLite, acknowledged after the commit (the default: acknowledged means committed)",
    "postgres": "PostgreSQL, acknowledged after the commit",
}


def write_config(tmp: Path, args, ports: dict, record: str = "sqlite") -> Path:
    from kefu.broker.auth import hash_password

    pw_hash = hash_password(PASSWORD, log_n=4)  # cheap on purpose: 200 logins, benchmark only
    lines = [
        "[listeners.mqtt]", 'host = "127.0.0.1"', f"port = {ports['mqtt']}",
        "[listeners.ws]", "enabled = true", 'host = "127.0.0.1"', f"port = {ports['ws']}",
        "[listeners.http]", "enabled = false",
        "[mqtt]", "sys_interval = 0",
        "[chat]", "rate_per_second = 1000.0", "rate_burst = 1000",
        "[log]", 'level = "warning"',
        "[desk]", "accept_timeout = 0.0", "agent_keepalive = 0.0", 'queue_message = ""',
        "[bot]", f'answers_file = "{ROOT / "config" / "answers.toml"}"',
        "[storage]", f"search_index = {'false' if args.no_search_index else 'true'}",
        f"ack_after_commit = {'false' if record == 'before-commit' else 'true'}",
    ]
    if record == "postgres":
        lines += ['backend = "postgres"', f'dsn = "{args.pg_dsn}"', f'pg_schema = "{args.pg_schema}"']
    else:
        lines += ['backend = "sqlite"', f'path = "{tmp / "kefu.db"}"']
    lines += [
        "[auth]", "allow_anonymous = true",
        "[[teams]]", 'id = "general"',
    ]
    for i in range(args.agents):
        lines += ["[[auth.users]]", f'username = "agent:ag{i}"', f'password_hash = "{pw_hash}"']
        lines += ["[[agents]]", f'id = "ag{i}"', 'teams = ["general"]', f"capacity = {args.capacity}"]
    p = tmp / "bench.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


class StepTimes(trio.abc.Instrument):
    """KEFU_BENCH_STEPS=1: how long the server's trio tasks hold the event loop per step
    (a long step delays every other message: it is latency even when CPU is cheap)."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.by: dict[str, list] = {}  # task name -> [steps, total s, max s, steps over 5 ms]
        self.hist = [0] * 8  # < 0.1, 0.3, 1, 3, 10, 30, 100 ms, more

    on_step = None

    def before_task_step(self, task) -> None:
        if self.on_step is not None:
            self.on_step(task)
        self.t0 = time.perf_counter()

    def after_task_step(self, task) -> None:
        dt = time.perf_counter() - self.t0
        e = self.by.setdefault(task.name, [0, 0.0, 0.0, 0])
        e[0] += 1
        e[1] += dt
        e[2] = max(e[2], dt)
        e[3] += dt > 0.005
        ms = dt * 1000
        self.hist[next((i for i, b in enumerate((0.1, 0.3, 1, 3, 10, 30, 100)) if ms < b), 7)] += 1

    def report(self) -> str:
        rows = sorted(self.by.items(), key=lambda kv: -kv[1][1])[:15]
        out = ["task steps (< 0.1/0.3/1/3/10/30/100 ms/more): " + " ".join(map(str, self.hist))]
        out += [f"{v[1]:8.2f} s {v[0]:8d} steps max {v[2] * 1000:7.1f} ms  >5ms {v[3]:5d}  {k[-90:]}" for k, v in rows]
        return "\n".join(out)


class Stalls:
    """KEFU_BENCH_STALLS=1: find what stops the server's event loop. A heartbeat task sleeps
    1 ms at a time and records how late it wakes (with the trio thread's own CPU time over
    the gap: little CPU means the thread waited for the GIL or a core, much CPU means work
    on the loop); a watchdog thread samples every thread's stack while a beat is overdue;
    ``gc.callbacks`` records each collection's length."""

    def __init__(self) -> None:
        import threading

        self.beat = time.perf_counter()
        self.late: list[tuple[float, float, float]] = []  # (at, wall ms late, trio-thread CPU ms)
        self.gcs: list[tuple[int, float]] = []  # (generation, ms)
        self.samples: dict[str, int] = {}
        self.task = ""
        self._gc_t0 = 0.0
        self._main = threading.get_ident()
        self._stop = False
        self.server_lat: list[tuple[float, float]] = []
        self.in_lat: list[tuple[float, float]] = []  # devices: send -> their PUBLISH routed (socket + read)
        self.active = True  # recording (the server: from SIGUSR1 to SIGUSR2, the measured window)
        gc.callbacks.append(self._on_gc)
        threading.Thread(target=self._watch, daemon=True, name="bench-stall-watch").start()

    def on_published(self, ev) -> None:
        """Server side of a message's latency: the load's send time (same monotonic clock, same
        machine) to the moment the desk's copy for the agent enters the router."""
        if self.active and ev.topic.endswith("/in") and ev.payload.startswith(b"b "):
            t0 = float(ev.payload.split()[2])
            self.in_lat.append((t0, time.monotonic() - t0))
        if self.active and ev.topic.endswith("/inbox"):
            i = ev.payload.find(b'"text":"b ')
            if i >= 0:
                t0 = float(ev.payload[i + 8:ev.payload.index(b'"', i + 8)].split()[2])
                self.server_lat.append((t0, time.monotonic() - t0))

    def _on_gc(self, phase, info) -> None:
        if phase == "start":
            if self.active and os.environ.get("KEFU_BENCH_GC_TYPES") and not getattr(self, "gc_types", None):
                import collections

                young = gc.get_objects(info["generation"])
                self.gc_types = collections.Counter(type(o).__qualname__ for o in young).most_common(12)
                self.gc_types.insert(0, ("(all)", len(young)))
                del young
            self._gc_t0 = time.perf_counter()
        elif self.active:
            self.gcs.append((info["generation"], (time.perf_counter() - self._gc_t0) * 1000))

    def _watch(self) -> None:
        import traceback

        while not self._stop:
            time.sleep(0.005)
            if not self.active or time.perf_counter() - self.beat < 0.030:
                continue
            frames = sys._current_frames()
            for ident, frame in frames.items():
                if ident == threading_get_ident():
                    continue
                who = "trio" if ident == self._main else "thread"
                stack = traceback.extract_stack(frame)[-6:]
                key = who + " " + self.task[-40:] * (who == "trio") + " | " + " <- ".join(
                    f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in reversed(stack))
                self.samples[key] = self.samples.get(key, 0) + 1

    async def run(self) -> None:
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            await trio.sleep(0.001)
            t1 = time.perf_counter()
            self.beat = t1
            late = (t1 - t0) * 1000 - 1
            if late > 10 and self.active:
                self.late.append((t1, late, (time.thread_time() - c0) * 1000))

    def report(self) -> str:
        self._stop = True
        lates = sorted(x[1] for x in self.late)
        out = [f"heartbeat: {len(lates)} beats > 10 ms late; > 50 ms: {sum(x > 50 for x in lates)}, "
               f"> 100 ms: {sum(x > 100 for x in lates)}; worst: "
               + ", ".join(f"{w:.0f} ms (trio CPU {c:.0f})" for _, w, c in sorted(self.late, key=lambda x: -x[1])[:12])]
        by_gen = {}
        for g, ms_ in self.gcs:
            by_gen.setdefault(g, []).append(ms_)
        if getattr(self, "gc_types", None):
            out.append("first collection's generation, by type: " + ", ".join(f"{k} {v}" for k, v in self.gc_types))
        out.append("gc: " + "; ".join(f"gen {g}: {len(v)} runs, max {max(v):.1f} ms, total {sum(v):.0f} ms"
                                      for g, v in sorted(by_gen.items())))
        if self.in_lat:
            xs = [x for _, x in self.in_lat]
            out.append(f"devices, send -> their PUBLISH routed in the server: p50 {pct(xs, 50) * 1000:.1f} ms, "
                       f"p99 {pct(xs, 99) * 1000:.1f} ms, max {max(xs) * 1000:.0f} ms")
        if self.server_lat:
            xs = [x for _, x in self.server_lat]
            t_first = min(t for t, _ in self.server_lat)
            slow: dict[float, list] = {}
            for t, x in self.server_lat:
                if x > 0.020:
                    e = slow.setdefault(int((t - t_first) * 10) / 10, [0, 0.0])
                    e[0] += 1
                    e[1] = max(e[1], x)
            out.append(f"send -> desk publishes to the agent's inbox: {len(xs)} messages, p50 {pct(xs, 50) * 1000:.1f} ms, "
                       f"p99 {pct(xs, 99) * 1000:.1f} ms, max {max(xs) * 1000:.0f} ms; over 20 ms by 0.1 s "
                       "(s:count:worst ms): " + " ".join(f"{k:.1f}:{v[0]}:{v[1] * 1000:.0f}" for k, v in sorted(slow.items())))
        out.append("stacks while the loop was > 30 ms overdue (5 ms samples):")
        for k, v in sorted(self.samples.items(), key=lambda kv: -kv[1])[:25]:
            out.append(f"{v:6d}  {k[:400]}")
        return "\n".join(out)


def threading_get_ident() -> int:
    import threading

    return threading.get_ident()


async def serve(cfg_path: str, model: str | None, gc_mode: str) -> None:
    """The server process: the whole kefu app (``kefu.app.run``), as ``kefu serve`` runs it."""
    from kefu.app import run, tune_gc
    from kefu.config import load

    cfg = load(cfg_path)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if model == "off":
        cfg.nlp.enabled = False
    elif model:
        cfg.nlp.model = model
    async with trio.open_nursery() as n:
        app = await n.start(functools.partial(run, cfg, base_dir=ROOT / "config"))
        if gc_mode == "tuned":
            tune_gc()  # what `kefu serve` does once started
        steps = StepTimes() if os.environ.get("KEFU_BENCH_STEPS") else None
        if steps:
            trio.lowlevel.add_instrument(steps)
        stalls = Stalls() if os.environ.get("KEFU_BENCH_STALLS") else None
        if stalls:
            app.broker.hooks.register("on_message_published", stalls.on_published)
            if steps:
                steps.on_step = lambda task: setattr(stalls, "task", task.name)
            n.start_soon(stalls.run)
        print("ready", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2) as sigs:
            async for sig in sigs:
                if sig == signal.SIGUSR2:  # the measured window is over (the load is about to disconnect)
                    if stalls:
                        stalls.active = False
                    continue
                if sig != signal.SIGUSR1:
                    break
                # the load process says the measured window starts: count only from here
                if steps:
                    steps.by.clear()
                    steps.hist = [0] * len(steps.hist)
                if stalls:
                    stalls.late.clear()
                    stalls.gcs.clear()
                    stalls.samples.clear()
                    stalls.server_lat.clear()
                    stalls.in_lat.clear()
        desk = app.desk
        stats = {"published": desk.published, "publish_errors": desk.publish_errors,
                 "record_writes": desk.store.queued, "acks_waited": desk.store.waits, **app.store.stats()}
        print("stats " + json.dumps(stats), flush=True)
        if steps:
            print(steps.report(), file=sys.stderr, flush=True)
        if stalls:
            print(stalls.report(), file=sys.stderr, flush=True)
        n.cancel_scope.cancel()


# --------------------------------------------------------------------------- 2. stack: load


class Mqtt:
    """A minimal MQTT 3.1.1 client over trio TCP (benchmark only)."""

    def __init__(self, stream) -> None:
        self.s = stream
        self.dec = Decoder(server=False, version=4)
        self.pid = 0

    @classmethod
    async def open(cls, port: int, cid: str, username=None, password=None) -> "Mqtt":
        c = cls(await trio.open_tcp_stream("127.0.0.1", port))
        await c.s.send_all(encode(Connect(client_id=cid, keep_alive=600, username=username,
                                          password=password.encode() if password else None), 4))
        ack = await c.packets()
        if not ack or getattr(ack[0], "reason_code", 1) != 0:
            raise RuntimeError(f"{cid}: connect refused: {ack}")
        return c

    async def packets(self) -> list:
        data = await self.s.receive_some(65536)
        if not data:
            raise EOFError
        self.dec.feed(data)
        out = []
        while (p := self.dec.next_packet()) is not None:
            out.append(p)
        return out

    async def subscribe(self, f: str) -> None:
        self.pid += 1
        await self.s.send_all(encode(Subscribe(self.pid, (Subscription(f, 0),)), 4))

    async def publish(self, topic: str, payload: bytes, qos: int = 0) -> int | None:
        if not qos:
            await self.s.send_all(encode(Publish(topic, payload, 0), 4))
            return None
        self.pid = self.pid % 65535 + 1
        await self.s.send_all(encode(Publish(topic, payload, qos, packet_id=self.pid), 4))
        return self.pid


async def load(args, ports: dict, on_steady=lambda: None, on_end=lambda: None) -> dict:
    from trio_websocket import open_websocket_url

    lat: list[float] = []
    ack_lat: list[float] = []  # a customer's send -> kefu's acknowledgement (PUBACK, /chat ack)
    slow_at: list[tuple[float, float]] = []  # (send time, latency): when in the run the slow ones were sent
    sent_ids: set[str] = set()
    got_ids: set[str] = set()
    joined = 0
    all_joined = trio.Event()
    failures: list[str] = []
    stop = trio.Event()
    go = trio.Event()  # the measured window starts (set after this process's own GC clean-up)
    go_at = [0.0]
    finished = trio.Event()
    n_cust = args.customers
    n_mqtt = n_cust // 2

    def on_joined():
        nonlocal joined
        joined += 1
        if joined == n_cust:
            all_joined.set()

    async def agent(i: int, task_status=trio.TASK_STATUS_IGNORED):
        c = await Mqtt.open(ports["mqtt"], f"agent-conn-{i}", f"agent:ag{i}", PASSWORD)
        await c.subscribe(f"kefu/agent/ag{i}/inbox")
        task_status.started()
        while True:
            for p in await c.packets():
                if not isinstance(p, Publish):
                    continue
                doc = json.loads(p.payload)
                if doc.get("type") == "message" and doc["message"]["author"]["kind"] == "customer":
                    text = doc["message"]["text"]
                    if text.startswith("b "):
                        _, mid, t0 = text.split()
                        lat.append(time.monotonic() - float(t0))
                        slow_at.append((float(t0), lat[-1]))
                        got_ids.add(mid)

    async def talk(name: str, send, wait_joined):
        await send("I want to talk to a human")
        await wait_joined()
        on_joined()
        await go.wait()
        # Each customer keeps its own random phase on a fixed grid: a late wake-up (a pause of
        # this process) sends late once, and the next message is back on the customer's phase.
        # (Sleeping ``interval`` after each send instead kept every customer delayed by one pause
        # in lock-step for the rest of the run: a burst of 100-200 messages every interval, which
        # the server can only serve one after the other -- that was the p99, not the server.)
        at = go_at[0] + random.uniform(0, args.interval)
        k = 0
        while True:
            with trio.move_on_at(at):
                await stop.wait()
            if stop.is_set():
                break
            mid = f"{name}.{k}"
            sent_ids.add(mid)
            await send(f"b {mid} {time.monotonic():.6f}")
            k += 1
            at += args.interval
        await finished.wait()  # keep the connection: closing 2000 of them is not the measured load

    async def device(i: int):
        try:
            c = await Mqtt.open(ports["mqtt"], f"dev{i}")
            await c.subscribe(f"kefu/c/anon:dev{i}/main/out")  # anonymous: the customer anon:<client id>
            topic = f"kefu/c/anon:dev{i}/main/in"
            unacked: dict[int, float] = {}

            def acks(packets):
                for p in packets:
                    if isinstance(p, PubAck) and p.packet_id in unacked:
                        t0 = unacked.pop(p.packet_id)
                        if t0:
                            ack_lat.append(time.monotonic() - t0)
                    yield p

            async def send(t: str):
                t0 = time.monotonic()
                pid = await c.publish(topic, t.encode(), 1)  # QoS 1: the PUBACK waits for the desk's commit
                unacked[pid] = t0 if t.startswith("b ") else 0.0

            async def wait_joined():
                while True:
                    for p in acks(await c.packets()):
                        if isinstance(p, Publish) and b"has joined" in p.payload:
                            return

            async def drain():
                while True:
                    for _ in acks(await c.packets()):
                        pass

            async with trio.open_nursery() as n:
                async def run():
                    await talk(f"d{i}", send, wait_joined)
                    n.cancel_scope.cancel()
                n.start_soon(run)
                await all_joined.wait()
                n.start_soon(drain)
        except Exception as e:  # noqa: BLE001
            failures.append(f"device {i}: {type(e).__name__}: {e}")

    async def browser(i: int):
        try:
            async with open_websocket_url(f"ws://127.0.0.1:{ports['ws']}/chat",
                                          extra_headers=[("Origin", "http://127.0.0.1")]) as ws:
                await ws.send_message(json.dumps({"type": "auth", "role": "visitor", "site": "demo"}))
                while json.loads(await ws.get_message())["type"] != "ready":
                    pass

            # one connection for the whole run (the visitor's identity is tied to it)
                refs: dict[str, float] = {}

                def ack(f: dict) -> dict:
                    if f.get("type") == "ack" and f.get("ref") in refs:
                        ack_lat.append(time.monotonic() - refs.pop(f["ref"]))
                    return f

                async def send(text):
                    frame = {"type": "message", "text": text}
                    if text.startswith("b "):
                        frame["ref"] = text.split()[1]
                        refs[frame["ref"]] = time.monotonic()
                    await ws.send_message(json.dumps(frame))

                async def wait_joined():
                    while True:
                        f = ack(json.loads(await ws.get_message()))
                        if f.get("type") == "message" and "has joined" in f["message"]["text"]:
                            return

                async with trio.open_nursery() as n:
                    async def run():
                        await talk(f"w{i}", send, wait_joined)
                        n.cancel_scope.cancel()
                    n.start_soon(run)
                    await all_joined.wait()

                    async def drain():
                        while True:
                            ack(json.loads(await ws.get_message()))
                    n.start_soon(drain)
        except Exception as e:  # noqa: BLE001
            failures.append(f"browser {i}: {type(e).__name__}: {e}")

    t0 = time.monotonic()
    async with trio.open_nursery() as n:
        for i in range(args.agents):
            await n.start(agent, i)
        for i in range(n_cust):
            n.start_soon(device if i < n_mqtt else browser, i)
            if i % 100 == 99:
                await trio.sleep(0.05)  # ramp: keep the accept backlog happy
        with trio.move_on_after(180):
            await all_joined.wait()
        t_joined = time.monotonic() - t0
        if not all_joined.is_set():
            failures.append(f"only {joined} of {n_cust} conversations reached an agent")
            all_joined.set()
        # The load generator is a measuring instrument: its own GC pauses would show up as
        # latency, so it gets the same treatment as the server.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        on_steady()
        t_steady = time.monotonic()
        own = None
        if os.environ.get("KEFU_BENCH_STALLS"):  # the measuring process's own stalls inflate latency too
            own = Stalls()
            n.start_soon(own.run)
        go_at[0] = trio.current_time()
        go.set()
        await trio.sleep(args.duration)
        stop.set()
        await trio.sleep(3.0)  # let the last messages land
        on_end()
        await trio.sleep(0.2)  # the server stops recording before the connections close
        if own is not None:
            own.active = False
            failures_report = own.report()
            print("load process (the measuring side):\n  " + failures_report.replace("\n", "\n  "))
        finished.set()
        n.cancel_scope.cancel()
    if os.environ.get("KEFU_BENCH_STALLS"):
        slow = [(t - t_steady, x) for t, x in slow_at if x > 0.020]
        per_s: dict[float, list] = {}
        for t, x in slow:
            e = per_s.setdefault(int(t * 10) / 10, [0, 0.0])
            e[0] += 1
            e[1] = max(e[1], x)
        print(f"messages over 20 ms: {len(slow)} of {len(lat)}; by 0.1 s of the window when sent "
              f"(s:count:worst ms): " + " ".join(f"{k:.1f}:{v[0]}:{v[1] * 1000:.0f}" for k, v in sorted(per_s.items())))
    return {"lat": lat, "ack_lat": ack_lat, "sent": len(sent_ids), "lost": len(sent_ids - got_ids), "joined": joined,
            "t_joined": t_joined, "failures": failures}


class PySpy:
    """``--profile DIR``: py-spy records the server (raw collapsed stacks) during set-up and during
    the measured window; summarise with benchmarks/profile_summary.py DIR/steady.txt."""

    def __init__(self, directory: str | None, pid: int) -> None:
        self.dir, self.pid, self.proc = (Path(directory) if directory else None), pid, None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.exe = str(Path(sys.executable).parent / "py-spy")
            if not Path(self.exe).exists():
                raise SystemExit("--profile needs py-spy (a dev tool): .venv/bin/pip install py-spy")

    def begin(self, name: str, seconds: float) -> None:
        if self.dir:
            self.proc = subprocess.Popen(
                [self.exe, "record", "--pid", str(self.pid), "--duration", str(max(1, round(seconds))), "--rate", "200",
                 "--format", "raw", "--output", str(self.dir / f"{name}.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def end(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            self.proc.wait()
            self.proc = None


async def stack_bench(args, record: str = "sqlite") -> tuple[dict, dict, dict]:
    tmp = Path(tempfile.mkdtemp(prefix="kefu-desk-bench-"))
    ports = {"mqtt": free_port(), "ws": free_port()}
    if record == "postgres":
        args.pg_schema = f"kefu_bench_{os.getpid()}_{int(time.time())}"
    cfg = write_config(tmp, args, ports, record)
    argv = [PY, __file__, "--serve", str(cfg), "--gc", args.gc] + (["--model", args.model] if args.model else [])
    err_path = tmp / "server.stderr"
    with open(err_path, "wb") as err:  # a file, not a pipe: a chatty server must never block on it
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=str(ROOT), start_new_session=True)
    spy = PySpy(args.profile, proc.pid)
    try:
        line = await trio.to_thread.run_sync(proc.stdout.readline)
        if line.strip() != b"ready":
            raise RuntimeError(f"server did not start: {line!r} {err_path.read_text()[-2000:]}")
        rss0 = rss_kib(proc.pid)
        cpu0 = cpu_s(proc.pid), time.process_time()
        spy.begin("setup", 600)
        res = await load(args, ports, on_steady=lambda: (spy.end(), spy.begin("steady", args.duration),
                                                         proc.send_signal(signal.SIGUSR1)),
                         on_end=lambda: proc.send_signal(signal.SIGUSR2))
        spy.end()
        rss1 = rss_kib(proc.pid)
        res["cpu_server"] = cpu_s(proc.pid) - cpu0[0]
        res["cpu_load"] = time.process_time() - cpu0[1]
        proc.send_signal(signal.SIGTERM)
        out = await trio.to_thread.run_sync(proc.communicate)
        res["server_log"] = [ln for ln in err_path.read_text().splitlines() if ln.strip()][-(80 if os.environ.get("KEFU_BENCH_STALLS") or os.environ.get("KEFU_BENCH_STEPS") else 20):]
        stats = {}
        for ln in out[0].decode().splitlines():
            if ln.startswith("stats "):
                stats = json.loads(ln[6:])
        return res, {"rss0": rss0, "rss1": rss1}, stats
    finally:
        if proc.poll() is None:
            proc.kill()
        if record == "postgres":
            import psycopg

            with psycopg.connect(args.pg_dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{args.pg_schema}" CASCADE')


async def main(args) -> None:
    print(f"desk benchmark: {args.customers} customers, {args.agents} agents x capacity {args.capacity}, "
          f"a message every {args.interval:g} s per customer, {args.duration:g} s; classifier: "
          f"{'none (nlp.enabled = false)' if args.model == 'off' else 'model ' + args.model}; records: "
          f"{', '.join(args.records)}"
          f"{' (no search index)' if args.no_search_index else ''}; server GC: {args.gc}\n")
    core = await core_bench(args.customers, args.agents, args.capacity, messages=20_000)
    ms = lambda x: f"{x * 1000:.3f}"  # noqa: E731
    print("1. core (Desk alone, in-memory store, one process)")
    print(table(["conversations", "messages", "p50 ms", "p99 ms", "max ms", "msgs/s (one core)", "lost",
                 "memory / conversation"],
                [[str(core["assigned"]), str(len(core["lat"]) + core["lost"]), ms(pct(core["lat"], 50)),
                  ms(pct(core["lat"], 99)), ms(max(core["lat"])), f"{core['rate']:.0f}", str(core["lost"]),
                  f"{core['mem'] / core['assigned'] / 1024:.1f} KiB"]]))
    q = await queue_bench(args.agents, args.capacity, waiting=3000)
    print(f"   long queue (every agent full, 3000 more waiting): a handoff into it {ms(q['handoff'])} ms, "
          f"a waiting customer's message + its position {ms(q['queued_msg'])} ms")
    if args.core_only:
        return
    print("\n2. stack (server process: broker + ACL + desk + /chat + intent service + the desk's record; load process)")
    print("   one run per record configuration, back to back; devices publish QoS 1 (PUBACK after the desk's commit)")
    rows, notes = [], []
    base = None
    for record in args.records:
        res, mem, stats = await stack_bench(args, record)
        rate = res["sent"] / max(args.duration, 1)
        p50, p99 = pct(res["lat"], 50), pct(res["lat"], 99)
        a50, a99 = pct(res["ack_lat"], 50), pct(res["ack_lat"], 99)
        if base is None:
            base = (p50, p99, a50, a99, res["cpu_server"])
        ratio = lambda x, b: f"{x / b:.2f}x" if b else "-"  # noqa: E731
        rows.append([record, str(res["joined"]), f"{res['t_joined']:.1f} s", str(res["sent"]), f"{rate:.0f}",
                     ms(p50), ms(p99), ms(max(res["lat"]) if res["lat"] else float("nan")), str(res["lost"]),
                     ms(a50), ms(a99), f"{res['cpu_server']:.1f} s ({ratio(res['cpu_server'], base[4])})",
                     f"{ratio(p50, base[0])} / {ratio(p99, base[1])}",
                     f"{mem['rss0'] / 1024:.0f} -> {mem['rss1'] / 1024:.0f} MiB"])
        notes.append(f"{record}: {RECORDS[record]}; server {stats}")
        if res["server_log"]:
            notes.append(f"{record} server stderr (last lines):\n  " + "\n  ".join(res["server_log"]))
        if res["failures"]:
            notes.append(f"{record}: {len(res['failures'])} failures, first: {res['failures'][:3]}")
    print(table(["record", "conversations", "joined in", "messages", "msg/s", "p50 ms", "p99 ms", "max ms", "lost",
                 "ack p50 ms", "ack p99 ms", "server CPU", "p50 / p99 vs first", "server RSS"], rows))
    print("latency: customer send -> the agent's socket; ack: customer send -> PUBACK / /chat ack")
    print("\n".join(notes))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--agents", type=int, default=200)
    ap.add_argument("--capacity", type=int, default=10)
    ap.add_argument("--interval", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--model", help="intent model folder (made by `kefu nlp train`); default: the shipped "
                    "nlp/models/banking77; off: nlp.enabled = false (no classifier in the server)")
    ap.add_argument("--no-search-index", action="store_true", help="storage.search_index = false (no FTS on transcripts)")
    ap.add_argument("--gc", choices=["tuned", "default"], default="tuned",
                    help="server GC: tuned = what `kefu serve` does after start-up (kefu.app.tune_gc); default = CPython's")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the server: DIR/setup.txt and DIR/steady.txt (raw stacks)")
    ap.add_argument("--core-only", action="store_true")
    ap.add_argument("--records", type=lambda v: [x for x in v.split(",") if x], default=list(RECORDS),
                    help=f"record configurations to compare, in order (default {','.join(RECORDS)})")
    ap.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test",
                    help="PostgreSQL for the postgres configuration (a throwaway schema, dropped afterwards)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    a = ap.parse_args()
    bad = [r for r in a.records if r not in RECORDS]
    if bad:
        ap.error(f"--records: unknown {', '.join(bad)}; known: {', '.join(RECORDS)}")
    if a.serve:
        trio.run(serve, a.serve, a.model, a.gc)
        sys.exit(0)
    if not a.model:
        from kefu.nlp.encoder import DEFAULT_MODEL_DIR, ModelError, read_info

        try:
            read_info(DEFAULT_MODEL_DIR)  # model.onnx, or front.onnx + back.onnx (early exit), and the rest
        except ModelError as e:
            ap.error(f"{e} (or pass --model DIR, or --model off)")
        a.model = str(DEFAULT_MODEL_DIR)
    trio.run(main, a)
