"""Run one Python broker (kefu or amqtt) in this process, for ``broker_bench.py``.

    python benchmarks/bench_server.py kefu PORT
    python benchmarks/bench_server.py amqtt PORT

Each broker gets a process of its own so that its RSS and CPU time can be read from
/proc and nothing of the load generator shares its interpreter. The open-file limit
is raised to the hard limit first (10,000 connections need 10,000 descriptors).
Prints ``READY <port>`` on stdout once the listener is open.

kefu runs exactly what ``kefu serve`` runs for MQTT (``kefu.broker.server.Broker``)
with its embedded defaults, except: loopback only, warnings-only logging and $SYS
every second (so the flood phase can read the drop counter without waiting 10 s).
amqtt runs with anonymous access, its $SYS plugin every second and no event/packet
logging plugins (they would only slow it down).
"""

from __future__ import annotations

import logging
import os
import resource
import sys


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run_kefu(port: int) -> None:
    import trio

    from kefu.broker.server import Broker
    from kefu.config.load import from_dict

    cfg = from_dict({
        "listeners": {"mqtt": {"host": "127.0.0.1", "port": port}},
        "mqtt": {"sys_interval": 1},
        "log": {"level": "warning"},
    }, "broker_bench")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    alt = os.environ.get("BENCH_KEFU_CONNECTION")
    if alt:  # experiment: a candidate connection.py, without touching the tree
        import importlib.util

        import kefu.broker.server as server_mod

        spec = importlib.util.spec_from_file_location("kefu.broker.connection", alt)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        server_mod.Connection = mod.Connection
        print(f"kefu: using Connection from {alt}", file=sys.stderr)

    async def main() -> None:
        broker = Broker(cfg)
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(broker.serve)
            print(f"READY {addresses[0].port}", flush=True)

    trio.run(main)


def run_amqtt(port: int) -> None:
    import asyncio

    from amqtt.broker import Broker

    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "amqtt.plugins.sys.broker.BrokerSysPlugin": {"sys_interval": 1},
        },
    }

    async def main() -> None:
        broker = Broker(config)
        await broker.start()
        print(f"READY {port}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def log_gc_pauses(threshold: float = 0.002) -> None:
    """BENCH_GC_LOG=1: print every garbage collection longer than ``threshold`` seconds."""
    import gc
    import time

    started = {}

    def callback(phase, info):
        if phase == "start":
            started["t"] = time.perf_counter()
            started["cpu"] = time.thread_time()
        else:
            took = time.perf_counter() - started.get("t", time.perf_counter())
            cpu = time.thread_time() - started.get("cpu", time.thread_time())
            if took >= threshold:
                print(f"gc: t={time.monotonic():.3f} generation {info['generation']} took {took * 1000:.1f} ms "
                      f"({cpu * 1000:.1f} ms CPU), collected {info['collected']}", file=sys.stderr, flush=True)

    gc.callbacks.append(callback)


if __name__ == "__main__":
    which, port = sys.argv[1], int(sys.argv[2])
    raise_nofile()
    if os.environ.get("BENCH_GC_LOG") == "1":
        log_gc_pauses()
    if os.environ.get("BENCH_GC") == "off":  # experiment: how much of a tail is the cyclic GC?
        import gc

        gc.disable()
    {"kefu": run_kefu, "amqtt": run_amqtt}[which](port)
