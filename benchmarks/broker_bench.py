"""kefu's MQTT broker against Mosquitto and amqtt: one command, one run, one table.

    .venv/bin/python benchmarks/broker_bench.py            # ~6 minutes
    .venv/bin/python benchmarks/broker_bench.py --quick    # ~1.5 minutes: 3.1.1 only, smaller counts

Starts the brokers (each in a process of its own, on free loopback ports; see
bench_brokers.py): kefu's broker alone, the whole ``kefu serve`` with its defaults,
Mosquitto and amqtt, and drives each with the same load generator
(bench_load.py), phase by phase: for every phase the brokers run one after the
other within seconds of each other, so the ratios compare like with like even on
a busy machine. Prints a Markdown table (also written to benchmarks/results/broker.md)
with each figure, the ratio to Mosquitto, the target from the issue and the
broker's CPU use during the measurement (100% = one core busy: the broker, not the
generator, was the limit). See benchmarks/README.md for what every row means.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load as L  # noqa: E402
from bench_brokers import CLK_TCK, BrokerProcess, Mosquitto, make_brokers, raise_nofile  # noqa: E402

CTX = mp.get_context("fork")
RESULTS = Path(__file__).resolve().parent / "results" / "broker.md"
SENT_BASE = 512  # counters[SENT_BASE + i]: messages sent by publisher worker i
VNAME = {4: "3.1.1", 5: "5.0"}


class Settings:
    def __init__(self, quick: bool, duration: float | None, connections: int | None, idle: int | None) -> None:
        self.quick = quick
        self.duration = duration or (1.5 if quick else 4.0)
        self.warmup = 0.5 if quick else 1.0
        self.latency_duration = 2.0 if quick else 5.0
        self.flood_duration = 3.0 if quick else 6.0
        self.connections = connections or (2000 if quick else 10_000)
        self.connect_timeout = 20.0 if quick else 60.0
        self.idle = idle if idle is not None else (500 if quick else 2000)
        self.rss_cap = 1536 << 20  # a flood is stopped when the broker passes 1.5 GiB
        self.qos1_window = 2550  # unacknowledged QoS 1 messages end to end (as issue 15's generator)


# ---------------------------------------------------------------------- plumbing
class Workers:
    """Worker processes of one phase and the queue they report on."""

    def __init__(self) -> None:
        self.counters = CTX.RawArray("q", 1024)
        self.ctrl = CTX.RawArray("q", 4)
        self.reports = CTX.Queue()
        self.procs: list[mp.Process] = []

    def start(self, target, *args, **kwargs) -> None:
        p = CTX.Process(target=target, args=args + (self.reports,), kwargs=kwargs, daemon=True)
        p.start()
        self.procs.append(p)

    def expect(self, kind: str, count: int, timeout: float) -> list:
        """Wait for ``count`` reports of ``kind``; a worker's error raises."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise L.BenchError(f"timed out waiting for {count - len(got)} worker(s) to report {kind!r}")
            try:
                what, value = self.reports.get(timeout=min(left, 1.0))
            except queue.Empty:
                if not any(p.is_alive() for p in self.procs):
                    raise L.BenchError(f"workers exited before reporting {kind!r}") from None
                continue
            if what == "error":
                raise L.BenchError(value)
            if what == kind:
                got.append(value)
        return got

    def cpu_seconds(self) -> float:
        """CPU time used so far by the live workers (the generator's own cost)."""
        total = 0.0
        for p in self.procs:
            try:
                with open(f"/proc/{p.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, IndexError):
                pass
        return total

    def total(self, lo: int, hi: int) -> int:
        return sum(self.counters[lo:hi])

    def finish(self, collect: str | None = None, count: int = 0) -> list:
        """STOP every worker; collect ``count`` final reports of ``collect``; reap them all."""
        self.ctrl[L.STOP] = 1
        got = []
        if collect:
            try:
                got = self.expect(collect, count, 10.0)
            except L.BenchError:
                pass
        for p in self.procs:
            p.join(3.0)
            if p.is_alive():  # e.g. blocked in sendall against a broker that stopped reading
                p.terminate()
                p.join(2.0)
        self.reports.close()
        return got


_run_id = 0


def ids(prefix: str, n: int) -> list[str]:
    global _run_id
    _run_id += 1
    return [f"{prefix}-{_run_id}-{i}" for i in range(n)]


def split(items: list, parts: int) -> list[list]:
    return [items[i::parts] for i in range(parts)]


class Profiler:
    """Optional py-spy recording of the kefu process during measured windows."""

    def __init__(self, directory: str | None) -> None:
        self.dir = Path(directory) if directory else None
        self.proc = None
        if self.dir:
            self.dir.mkdir(parents=True, exist_ok=True)
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            if not Path(exe).exists():
                raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
            self.exe = exe

    def begin(self, broker: BrokerProcess, name: str, seconds: float) -> None:
        if self.dir and broker.name.startswith("kefu"):
            self.proc = subprocess.Popen(
                [self.exe, "record", "--pid", str(broker.pid), "--duration", str(max(1, round(seconds))),
                 "--rate", "250", "--format", "raw", "--output", str(self.dir / f"{broker.name}-{name}.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def end(self) -> None:
        if self.proc is not None:
            self.proc.wait()
            self.proc = None


# ---------------------------------------------------------------------- phases
def throughput(b: BrokerProcess, version: int, kind: str, st: Settings, prof: Profiler) -> dict:
    """One of qos0 / qos1 / fanout / fanin; -> {"value": msg/s, "cpu": broker CPU share}."""
    w = Workers()
    topic = f"bench/{kind}/t"
    qos = 1 if kind == "qos1" else 0
    if kind == "fanout":
        subs, sub_procs, fanout = 100, 2, 100
        pub_topics, pub_procs = [topic], 1
    elif kind == "fanin":
        subs, sub_procs, fanout = 1, 1, 1
        pub_topics, pub_procs = [f"bench/fanin/{i:03d}" for i in range(100)], 2
        topic = "bench/fanin/+"
    else:
        subs, sub_procs, fanout = 1, 1, 1
        pub_topics, pub_procs = [topic], 1
    window = st.qos1_window if qos else 5000
    sys0 = L.read_sys(b.port, version, wait=1.2) if qos else None
    sub_ids = ids(f"{kind}-sub", subs)
    pub_ids = ids(f"{kind}-pub", len(pub_topics))
    try:
        base = 0
        for part in split(list(range(subs)), sub_procs):
            w.start(L.receiver_worker, b.port, version, [sub_ids[i] for i in part], [topic] * len(part),
                    qos, w.counters, base, w.ctrl)
            base += len(part)
        w.expect("ready", sub_procs, 60)
        for i, part in enumerate(split(list(range(len(pub_topics))), pub_procs)):
            w.start(L.publisher_worker, b.port, version, [pub_ids[j] for j in part],
                    [pub_topics[j] for j in part], qos, w.counters, SENT_BASE + i,
                    (SENT_BASE, SENT_BASE + pub_procs), (0, subs), fanout, window, w.ctrl)
        w.expect("ready", pub_procs, 60)
        w.ctrl[L.GO] = 1
        time.sleep(st.warmup)
        prof.begin(b, f"{kind}-{VNAME[version]}", st.duration)
        c0, cpu0, g0, t0 = w.total(0, subs), b.cpu_seconds(), w.cpu_seconds(), time.monotonic()
        time.sleep(st.duration)
        c1, cpu1, g1, t1 = w.total(0, subs), b.cpu_seconds(), w.cpu_seconds(), time.monotonic()
        prof.end()
        if not b.alive():
            raise L.BenchError(f"{b.name} died")
    finally:
        w.finish()
    out = {"value": (c1 - c0) / (t1 - t0), "cpu": (cpu1 - cpu0) / (t1 - t0), "gen": (g1 - g0) / (t1 - t0)}
    if sys0 is not None:  # QoS 1: did the broker drop anything it had acknowledged?
        sys1 = L.read_sys(b.port, version, wait=1.2)
        out["drops"] = _dropped(sys1) - _dropped(sys0) if sys1 and sys0 else None
    return out


def _dropped(values: dict) -> int:
    for key, v in values.items():
        if key.endswith("/dropped"):
            return int(float(v.split()[0]))
    return 0


def latency(b: BrokerProcess, version: int, st: Settings, prof: Profiler) -> dict:
    """p50/p99 of publish->deliver at 1000 msg/s while ``st.idle`` subscribed clients sit idle."""
    w = Workers()
    idle_ids = ids("idle", st.idle)
    for part in split(list(range(st.idle)), 2 if st.idle else 0):
        w.start(L.holder_worker, b.port, version, [idle_ids[i] for i in part],
                [f"bench/idle/{i}" for i in part], w.ctrl, timeout=st.connect_timeout)
    try:
        conns = w.expect("connected", 2 if st.idle else 0, st.connect_timeout + 30)
        failed = sum(c[1] for c in conns)
        if failed:
            raise L.BenchError(f"{failed} idle clients failed: {next(c[2] for c in conns if c[2])}")
        topic = "bench/latency/t"
        w.start(L.latency_sub_worker, b.port, version, topic, w.ctrl)
        w.expect("ready", 1, 30)
        w.start(L.latency_pub_worker, b.port, version, topic, 1000, w.ctrl)
        w.expect("ready", 1, 30)
        w.ctrl[L.GO] = 1
        time.sleep(st.warmup)
        cpu0, t0 = b.cpu_seconds(), time.monotonic()
        w.ctrl[L.RECORD] = 1
        prof.begin(b, f"latency-{VNAME[version]}", st.latency_duration)
        time.sleep(st.latency_duration)
        w.ctrl[L.RECORD] = 0
        prof.end()
        cpu1, t1 = b.cpu_seconds(), time.monotonic()
        time.sleep(0.2)  # let the last deliveries arrive
    finally:
        got = w.finish("latencies", 1)
    if not got or not got[0]:
        raise L.BenchError("no latency samples")
    lat = sorted(got[0])
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"p50": q[49] / 1e6, "p99": q[98] / 1e6, "max": lat[-1] / 1e6, "n": len(lat),
            "cpu": (cpu1 - cpu0) / (t1 - t0), "window": (t0, t1)}


def connections(b: BrokerProcess, version: int, st: Settings) -> dict:
    """Open ``st.connections`` clients at once (2 processes, 48 handshakes in flight each)."""
    w = Workers()
    n = st.connections
    all_ids = ids("conn", n)
    time.sleep(0.3)
    rss0 = b.rss()
    for part in split(all_ids, 2):
        w.start(L.holder_worker, b.port, version, part, None, w.ctrl, window=48,
                timeout=st.connect_timeout, start_at_go=True)
    try:
        w.expect("ready", 2, 30)
        t_go = time.monotonic()
        w.ctrl[L.GO] = 1
        conns = w.expect("connected", 2, st.connect_timeout + 30)
        elapsed = max(c[0] for c in conns) - t_go
        failed = sum(c[1] for c in conns)
        error = next((c[2] for c in conns if c[2]), None)
        time.sleep(0.5)
        rss1 = b.rss()
    finally:
        w.finish("done", 2)
    ok = n - failed
    return {"seconds": elapsed, "connected": ok, "per_conn": (rss1 - rss0) / ok if ok else float("nan"),
            "rss": rss1, "error": error}


def flood(b: BrokerProcess, version: int, st: Settings) -> dict:
    """Two subscribers that never read (QoS 0 and QoS 1) under a QoS 0 + QoS 1 publisher flood."""
    sys0 = L.read_sys(b.port, version)
    topic = "bench/flood/t"
    slow = []
    w = Workers()
    pub_ids = ids("flood-pub", 2)
    capped = False
    try:
        for qos in (0, 1):
            socks, info = L.connect_many(b.port, version, ids(f"slow{qos}", 1), [topic], qos, rcvbuf=4096)
            slow += [s for s in socks if s is not None]
            if info["failed"]:
                raise L.BenchError(f"slow subscriber: {info['error']}")
        for i, qos in enumerate((0, 1)):
            w.start(L.publisher_worker, b.port, version, [pub_ids[i]], [topic], qos, w.counters,
                    SENT_BASE + i, (SENT_BASE, SENT_BASE + 2), (0, 0), 1, 0, w.ctrl)
        w.expect("ready", 2, 30)
        rss0 = b.rss()
        peak = rss0
        w.ctrl[L.GO] = 1
        end = time.monotonic() + st.flood_duration
        while time.monotonic() < end:
            time.sleep(0.1)
            peak = max(peak, b.rss())
            if peak > st.rss_cap:
                capped = True
                break
        rss_end = b.rss()
        sent = w.total(SENT_BASE, SENT_BASE + 2)
    finally:
        w.finish()
        for s in slow:
            s.close()
    time.sleep(2.0)
    rss_after = b.rss()
    sys1 = L.read_sys(b.port, version)
    drops = None
    for key in sys1:
        if key.endswith("/dropped"):
            drops = int(float(sys1[key].split()[0])) - int(float(sys0.get(key, "0").split()[0]))
            break
    return {"sent": sent, "rss0": rss0, "peak": peak, "end": rss_end, "after": rss_after,
            "drops": drops, "capped": capped}


def link_tree(path: str) -> str:
    """Make checkout ``path`` importable as ``kefu`` (the package-dir mapping of
    pyproject.toml, as links): returns the directory to put on PYTHONPATH."""
    root = Path(path).resolve()
    if not (root / "kefu" / "__init__.py").exists():
        raise SystemExit(f"--tree {path}: no kefu/__init__.py there")
    for sub in ("broker", "bridge", "nlp", "storage", "config"):
        link = root / "kefu" / sub
        if not link.exists():
            link.symlink_to(Path("..") / sub)
    return str(root)


# ---------------------------------------------------------------------- table
def fmt_rate(v):
    return "-" if v is None else f"{v:,.0f}"


def fmt_ratio(a, m):
    if a is None or m in (None, 0):
        return "-"
    return f"{a / m:.2f}x"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="short phases, MQTT 3.1.1 only, 2,000 connections, 500 idle clients (~1.5 minutes)")
    ap.add_argument("--brokers", default="kefu,kefu-serve,mosquitto,amqtt",
                    help="comma-separated subset of kefu (the broker alone), kefu-serve (the whole product "
                         "with its defaults), kefu-bare (kefu serve with the desk and the model off), kefu-unowed (kefu serve "
                         "with storage.store_unowed_messages = false), "
                         "kefu-LABEL (kefu serve of --tree LABEL=DIR), mosquitto, amqtt")
    ap.add_argument("--phases", default="qos0,qos1,fanout,fanin,latency,connections,flood",
                    help="comma-separated subset of the phases")
    ap.add_argument("--versions", default=None, help="4, 5 or 4,5 (default: both; --quick: 4)")
    ap.add_argument("--duration", type=float, default=None, help="seconds measured per throughput phase")
    ap.add_argument("--connections", type=int, default=None, help="clients in the connections phase (10,000)")
    ap.add_argument("--idle", type=int, default=None, help="idle subscribed clients in the latency phase (2,000)")
    ap.add_argument("--mosquitto-option", action="append", default=[], metavar="LINE",
                    help="extra mosquitto.conf line, e.g. 'max_inflight_messages 32' (repeatable; "
                         "default: Mosquitto's shipped defaults)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the kefu broker in throughput phases (raw stacks)")
    ap.add_argument("--qos1-window", type=int, default=2550,
                    help="unacknowledged QoS 1 messages the publisher may have end to end (2,550)")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                    help="another checkout of kefu (git worktree add DIR COMMIT) run as broker kefu-LABEL: "
                         "its `kefu serve` with the same defaults (repeatable; links kefu/broker, kefu/bridge, "
                         "... -> ../broker, ... are added in DIR so that it imports from there)")
    args = ap.parse_args()

    st = Settings(args.quick, args.duration, args.connections, args.idle)
    st.qos1_window = args.qos1_window
    if args.tree:
        import bench_brokers

        for spec in args.tree:
            label, sep, path = spec.partition("=")
            if not sep or not label or not path:
                raise SystemExit(f"--tree {spec!r}: expected LABEL=DIR")
            bench_brokers.TREES[label] = link_tree(path)
    versions = [int(v) for v in (args.versions or ("4" if args.quick else "4,5")).split(",")]
    phases = args.phases.split(",")
    limit = raise_nofile()
    need = st.connections + 200
    if "connections" in phases and limit < need:
        print(f"note: open-file limit {limit} < {need}: connections phase reduced", file=sys.stderr)
        st.connections = max(100, limit - 200)
    prof = Profiler(args.profile)

    Mosquitto.extra = args.mosquitto_option
    brokers = make_brokers(args.brokers.split(","))
    rows = []  # (label, version, {broker: value}, cpu{broker: share}, target, kind)
    started = time.time()
    try:
        for b in brokers:
            b.start()
            print(f"# {b.name}: {b.version_text}, pid {b.pid}, port {b.port}", file=sys.stderr)

        def each(version):
            return [b for b in brokers if version in b.versions and b.alive()]

        def log(msg):
            print(f"[{time.time() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

        labels = {"qos0": ("QoS 0 1→1, msg/s", "≥ 0.4x"), "qos1": ("QoS 1 1→1, msg/s", "≥ 0.3x"),
                  "fanout": ("fan-out 1→100, deliveries/s", "≥ 0.5x"),
                  "fanin": ("fan-in 100→1 (+ wildcard), msg/s", "≥ 0.3x")}
        for kind in ("qos0", "qos1", "fanout", "fanin"):
            if kind not in phases:
                continue
            for v in versions:
                vals, cpus, drops = {}, {}, {}
                for b in each(v):
                    try:
                        r = throughput(b, v, kind, st, prof)
                        vals[b.name], cpus[b.name] = r["value"], (r["cpu"], r["gen"])
                        if "drops" in r:
                            drops[b.name] = r["drops"]
                        log(f"{kind} {VNAME[v]} {b.name}: {r['value']:,.0f}/s (broker CPU {r['cpu']:.0%}, generator {r['gen']:.0%})"
                            + (f", dropped {r['drops']}" if "drops" in r else ""))
                    except L.BenchError as e:
                        log(f"{kind} {VNAME[v]} {b.name}: FAILED: {e}")
                rows.append((labels[kind][0], v, vals, cpus, labels[kind][1], "rate"))
                if drops:
                    rows.append(("QoS 1 1→1: messages the broker dropped ($SYS)", v, drops, {}, "0", "count"))

        if "latency" in phases:
            for v in versions:
                p50, p99, cpus = {}, {}, {}
                for b in each(v):
                    try:
                        r = latency(b, v, st, prof)
                        p50[b.name], p99[b.name], cpus[b.name] = r["p50"], r["p99"], (r["cpu"], None)
                        log(f"latency {VNAME[v]} {b.name}: p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms "
                            f"max {r['max']:.2f} ms, broker CPU {r['cpu']:.1%} ({r['n']} samples"
                            + (f", measured t={r['window'][0]:.3f}..{r['window'][1]:.3f}"
                               if os.environ.get("BENCH_GC_LOG") else "") + ")")
                    except L.BenchError as e:
                        log(f"latency {VNAME[v]} {b.name}: FAILED: {e}")
                rows.append((f"latency p50 @1000 msg/s, {st.idle} idle subs, ms", v, p50, cpus, "", "ms"))
                rows.append((f"latency p99 @1000 msg/s, {st.idle} idle subs, ms", v, p99, {}, "kefu ≤ 1 ms", "ms"))

        if "connections" in phases:
            for v in versions:
                secs, per, cpus = {}, {}, {}
                for b in each(v):
                    try:
                        b.restart()
                        r = connections(b, v, st)
                        secs[b.name] = (f"{r['seconds']:.2f}" if r["connected"] == st.connections else
                                        f"{r['connected']:,} in {r['seconds']:.0f} (timeout)")
                        per[b.name] = r["per_conn"] / 1024
                        log(f"connections {VNAME[v]} {b.name}: {r['connected']}/{st.connections} in "
                            f"{r['seconds']:.2f} s, {r['per_conn'] / 1024:.1f} KiB each, RSS {r['rss'] >> 20} MiB"
                            + (f" ({r['error']})" if r["error"] else ""))
                    except L.BenchError as e:
                        log(f"connections {VNAME[v]} {b.name}: FAILED: {e}")
                n = f"{st.connections:,}"
                rows.append((f"connect {n} clients, s", v, secs, {}, "≤ 10 s", "text"))
                rows.append((f"memory per connection ({n}), KiB", v, per, {}, "≤ 10 KB", "kib"))

        if "flood" in phases:
            for v in versions:
                peak, after, drops, sent, rss = {}, {}, {}, {}, {}
                for b in each(v):
                    try:
                        b.restart()
                        r = flood(b, v, st)
                        peak[b.name] = (r["peak"] - r["rss0"]) / (1 << 20)
                        after[b.name] = (r["after"] - r["rss0"]) / (1 << 20)
                        drops[b.name] = r["drops"]
                        rss[b.name] = (f"{r['rss0'] / (1 << 20):.0f} → {r['peak'] / (1 << 20):.0f} → "
                                       f"{r['after'] / (1 << 20):.0f}" + (" (cap)" if r["capped"] else ""))
                        sent[b.name] = r["sent"]
                        log(f"flood {VNAME[v]} {b.name}: {r['sent']:,} published, RSS +{peak[b.name]:.0f} MiB peak, "
                            f"+{after[b.name]:.0f} MiB 2 s after, drops counted: {r['drops']}"
                            + (" (stopped at the RSS cap)" if r["capped"] else ""))
                    except L.BenchError as e:
                        log(f"flood {VNAME[v]} {b.name}: FAILED: {e}")
                rows.append(("flood: messages published", v, sent, {}, "", "count"))
                rows.append(("flood: broker RSS before → peak → 2 s after, MiB", v, rss, {}, "bounded", "text"))
                rows.append(("flood: drops counted by the broker", v, drops, {}, "counted", "count"))
    finally:
        for b in brokers:
            tail = b.log_tail(40 if os.environ.get("BENCH_GC_LOG") else 8)
            if tail.strip():
                print(f"# last lines of the {b.name} log:\n{tail}", file=sys.stderr)
            b.stop()

    table = render(rows, brokers, st, time.time() - started)
    print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(table + "\n")
    return 0


def render(rows, brokers, st: Settings, elapsed: float) -> str:
    names = [b.name for b in brokers]
    versions = {b.name: b.versions for b in brokers}
    others = [n for n in names if n != "mosquitto"]
    mosq = "mosquitto" in names
    eff_names = [n for n in ("kefu", "kefu-serve") if n in names]
    head = ["scenario", "MQTT"] + names
    if mosq:
        head += [f"{n} ÷ mosq" for n in others] + [f"{n} ÷ mosq per CPU-s" for n in eff_names]
    head += ["target", "broker CPU", "generator CPU"]
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, {elapsed:.0f} s"
        + (" (--quick)" if st.quick else ""),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for label, v, vals, cpus, target, kind in rows:
        def cell(n):
            x = vals.get(n)
            if x is None:
                return "n/a" if v not in versions[n] else "-"
            if kind == "text":
                return x
            if kind in ("rate", "count"):
                return fmt_rate(x)
            if kind == "ms":
                return f"{x:.3f}"
            return f"{x:.1f}"
        cells = [label, VNAME[v]] + [cell(n) for n in names]
        if mosq:
            numeric = kind in ("rate", "ms", "kib")
            cells += [fmt_ratio(vals.get(n), vals.get("mosquitto")) if numeric else "" for n in others]
            for k in eff_names:
                eff = ""
                if kind == "rate" and all(vals.get(n) and cpus.get(n) and cpus[n][0] for n in (k, "mosquitto")):
                    eff = fmt_ratio(vals[k] / cpus[k][0], vals["mosquitto"] / cpus["mosquitto"][0])
                cells.append(eff)
        cells.append(target)
        cells.append("/".join(f"{cpus[n][0]:.0%}" if n in cpus else "-" for n in names) if cpus else "")
        gens = [cpus[n][1] if n in cpus else None for n in names]
        cells.append("/".join("-" if g is None else f"{g:.0%}" for g in gens) if any(g is not None for g in gens) else "")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"CPU columns: {'/'.join(names)}; process CPU time ÷ wall time during the measurement "
        "(100% = one core busy). Broker well under 100% with an idle generator means the CPU went "
        "elsewhere (a shared machine) or the flow is latency-bound (QoS 1 windows).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
