"""The broker core's CPU cost per message, without sockets or trio.

    .venv/bin/python benchmarks/broker_core.py [--repeat 5]

``broker_bench.py`` measures whole brokers over TCP on a shared 2-core machine,
where run-to-run noise (±30%) hides a 5% change. This drives kefu's sans-I/O part
alone (``Router`` + ``Protocol``: decode, ACL cache, routing, encoding, output
queues) with the same traffic shapes, in one thread, best of ``--repeat`` runs, so
an optimisation of router.py / session.py / message.py shows up as a stable
number. What it leaves out (the trio driver and the syscalls) is what
``broker_bench.py --profile`` shows.

Rows: QoS 0 1→1, QoS 1 1→1 (every delivery PUBACKed, window 32), fan-out 1→100
(per delivery), fan-in 100→1 through a ``+`` filter; MQTT 3.1.1 and 5.0; 64-byte
payloads.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_load as L  # noqa: E402
from kefu.broker.mqtt.session import Protocol  # noqa: E402
from kefu.broker.router import Router  # noqa: E402
from kefu.config import Config  # noqa: E402


def make_router() -> Router:
    cfg = Config()
    cfg.mqtt.sys_interval = 0
    return Router(cfg)


def client(router: Router, cid: str, version: int, sub: str | None = None, qos: int = 0) -> Protocol:
    p = Protocol(router, router.limits, "bench:1")
    p.start(0.0)
    p.receive_bytes(L.connect_packet(cid, version), 0.0)
    if sub:
        p.receive_bytes(L.subscribe_packet(sub, qos, version), 0.0)
    p.take_all()
    return p


def qos0(version: int, rounds: int) -> tuple[int, float]:
    r = make_router()
    sub = client(r, "sub", version, "bench/t")
    pub = client(r, "pub", version)
    chunk = L.publish_packet("bench/t", version) * 700
    t0 = time.process_time()
    for _ in range(rounds):
        pub.receive_bytes(chunk, 1.0)
        sub.take_all()
    return 700 * rounds, time.process_time() - t0


def qos1(version: int, rounds: int) -> tuple[int, float]:
    r = make_router()
    sub = client(r, "sub", version, "bench/t", 1)
    pub = client(r, "pub", version)
    packets = L.publish_qos1_packets("bench/t", version)
    n = 32
    t0 = time.process_time()
    pid = 0
    for _ in range(rounds):
        pub.receive_bytes(b"".join(packets[pid:pid + n]), 1.0)
        pid = (pid + n) % 65504
        pub.take_all()  # PUBACKs
        out = sub.take_all()
        _, _, pids, _ = L.scan(out, True)
        sub.receive_bytes(L.acks_for(pids), 1.0)
    return n * rounds, time.process_time() - t0


def fanout(version: int, rounds: int) -> tuple[int, float]:
    r = make_router()
    subs = [client(r, f"sub{i}", version, "bench/t") for i in range(100)]
    pub = client(r, "pub", version)
    chunk = L.publish_packet("bench/t", version) * 100
    t0 = time.process_time()
    for _ in range(rounds):
        pub.receive_bytes(chunk, 1.0)
        for s in subs:
            s.take_all()
    return 100 * 100 * rounds, time.process_time() - t0


def fanin(version: int, rounds: int) -> tuple[int, float]:
    r = make_router()
    sub = client(r, "sub", version, "bench/fanin/+")
    pubs = [client(r, f"pub{i}", version) for i in range(100)]
    chunks = [L.publish_packet(f"bench/fanin/{i:03d}", version) * 7 for i in range(100)]
    t0 = time.process_time()
    for _ in range(rounds):
        for p, c in zip(pubs, chunks):
            p.receive_bytes(c, 1.0)
        sub.take_all()
    return 700 * rounds, time.process_time() - t0


SCENARIOS = [("QoS 0 1→1", qos0, 300), ("QoS 1 1→1", qos1, 3000), ("fan-out 1→100 (per delivery)", fanout, 100),
             ("fan-in 100→1 (+)", fanin, 300)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated: qos0,qos1,fanout,fanin")
    ap.add_argument("--versions", default="4,5")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    print("| scenario | MQTT | µs per message | messages per CPU-second |")
    print("|---|---|---|---|")
    for name, fn, rounds in SCENARIOS:
        if only and fn.__name__ not in only:
            continue
        for version in (int(v) for v in args.versions.split(",")):
            best = float("inf")
            for _ in range(args.repeat):
                gc.collect()
                n, secs = fn(version, rounds)
                best = min(best, secs / n)
            print(f"| {name} | {'3.1.1' if version == 4 else '5.0'} | {best * 1e6:.2f} | {1 / best:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
