"""The wiring: one root nursery running every kefu service.

``run(cfg, task_status)`` starts the services and reports an ``App`` (addresses,
the broker, ``stop()``) so tests can run the whole thing in-process.
``serve_main(cfg)`` is ``kefu serve``: it prints every address served, turns a busy
port into one line naming the config key to change (exit status 1, no traceback),
and on SIGINT/SIGTERM stops accepting, flushes and exits within 2 seconds.
"""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio

from .broker.server import Address, Broker, ListenError
from .config import ConfigError
from .ops import Ops

log = logging.getLogger("kefu")

STOP_DEADLINE = 1.5  # seconds from the signal to the end of trio.run, whatever happens


class App:
    """A running kefu: what it serves and how to stop it."""

    def __init__(self, broker: Broker, cancel_scope: trio.CancelScope) -> None:
        self.broker = broker
        self._scope = cancel_scope

    @property
    def addresses(self) -> list[Address]:
        return list(self.broker.addresses)

    def port(self, scheme: str = "mqtt") -> int:
        """The bound port of the first listener with this scheme (tests bind port 0)."""
        for a in self.broker.addresses:
            if a.scheme == scheme:
                return a.port
        raise LookupError(f"no {scheme} listener")

    async def stop(self) -> None:
        """Graceful stop: stop accepting, disconnect clients, flush; then end ``run``."""
        desk = getattr(self, "desk", None)
        if desk is not None:
            desk.stopping = True  # the connections it closes now are not agents going offline
        with trio.move_on_after(STOP_DEADLINE):
            await self.broker.stop()
        self._scope.cancel()


async def run(cfg, task_status=trio.TASK_STATUS_IGNORED, *, announce: Callable[[str], None] | None = None,
              base_dir: str | Path | None = None) -> None:
    """Run every kefu service until cancelled or ``App.stop()``; ``started(App)`` once listening.

    Order matters: storage opens first (so nothing is accepted that cannot be kept), the
    intent engine loads its model (a missing model is a start-up error, not a fallback),
    the desk installs its topic ACL on the broker's hooks, and only then do the broker
    and the bridge start accepting connections. ``base_dir`` is the config file's folder
    (relative paths in the config, such as the answers file, are resolved against it).

    Raises ``ListenError`` (before ``started``) when a listener cannot be opened.
    """
    from .bridge.bus import RouterBus
    from .bridge.service import run as run_bridge
    from .storage import open_store

    external = cfg.broker.mode == "external"
    # Attach mode: the broker stays as this node's internal router (browsers, the desk), with
    # no MQTT listener of its own; devices are on the external broker (kefu/attach.py).
    broker = Broker(_no_device_listeners(cfg) if external else cfg)
    link = None
    ops = Ops(cfg)  # metrics, history, alerts (kefu/ops.py); raises ConfigError for bad [[alerts]]
    say = announce or (lambda line: None)
    with trio.CancelScope() as scope:
        async with open_store(cfg.storage) as raw_store, trio.open_nursery() as nursery:
            store = ops.attach(store=raw_store)  # the proxy that times committed writes
            from .broker.persist import attach_storage  # MQTT state restored and kept, SM4 on the wire

            await attach_storage(broker, store, nursery, cfg)
            intent = None
            if cfg.nlp.enabled:
                from .nlp.service import IntentService

                intent = IntentService.from_config(cfg.nlp)
                await nursery.start(intent.run)
            desk = bus = None
            visitor_secret = None
            if cfg.desk.enabled:
                from . import broker_glue
                from .record import DurableStore, restore, restore_webhooks, visitor_secret_of
                from .state_redis import live_state

                # Live desk state in memory or Redis ([desk] state); the SQL store is its record:
                # rebuilt from it here, every action committed to it before it is acknowledged.
                live = await nursery.start(live_state, cfg)
                durable = DurableStore(live, store, ack_after_commit=cfg.storage.ack_after_commit)
                await restore(durable, time.time())
                if external:
                    from .attach import AttachedBus, ExternalLink
                    from .settings import from_config as settings_from_config
                    from .storage.base import StorageError

                    filters = settings_from_config(cfg, base_dir=base_dir).topics.desk_filters()
                    link = ExternalLink(cfg.broker, filters,
                                        is_storage_error=lambda e: isinstance(e, StorageError))
                    bus = AttachedBus(broker, link, filters)
                else:
                    bus = RouterBus(broker)
                # classify_nowait: a message the classifier has no room for skips classification
                # (counted) and goes to a human, rather than queueing the bot's answers without bound.
                classify = ops.metrics.instrument_classifier(intent.classify_nowait) if intent else None
                desk = await nursery.start(functools.partial(
                    broker_glue.run, cfg, broker=broker, bus=bus, classify=classify,
                    store=durable, base_dir=base_dir))
                await restore_webhooks(desk, durable)
                if link is not None:  # the desk is ready: take the external broker's messages
                    link.handler = desk.glue.ingest
                    await nursery.start(link.run)
                    group = (f"shared group {cfg.broker.share_group}" if cfg.broker.share_group
                             else "plain subscription: one node")
                    say(f"kefu: attaching to the external broker {link.address} ({group}); "
                        "no MQTT listener of kefu's own")
                if not cfg.widget.visitor_secret:
                    visitor_secret = await visitor_secret_of(durable)
            addresses = await nursery.start(broker.serve)
            for a in addresses:
                say(f"kefu: MQTT listening on {a.url}")
            # The bridge: MQTT over WebSocket (/mqtt), the browser chat protocol, HTTP API and pages.
            demo_agent = desk.s.agents[0].id if desk is not None and desk.s.agents else None
            bridge = await nursery.start(functools.partial(
                run_bridge, cfg, broker=broker, desk=desk, bus=bus, announce=announce,
                demo_agent=demo_agent, extra_routes=ops.routes(), store=store, visitor_secret=visitor_secret,
                ready_checks={"broker": lambda: link.ready} if link is not None else None,
                ready_details={"broker": link.health} if link is not None else None))
            app = App(broker, scope)
            app.bridge = bridge
            app.desk = desk
            app.store = store
            app.intent = intent
            app.link = link  # attach mode: the connection to the external broker (None when embedded)
            # /metrics, /dashboard, sampling and alerts
            app.ops = await ops.start(nursery, broker=broker, bridge=bridge, desk=desk, store=store,
                                      intent=intent, announce=announce)
            task_status.started(app)


def _no_device_listeners(cfg):
    """``cfg`` without the MQTT listeners (attach mode: devices use the external broker)."""
    from dataclasses import replace

    ls = cfg.listeners
    return replace(cfg, listeners=replace(ls, mqtt=replace(ls.mqtt, enabled=False),
                                          mqtts=replace(ls.mqtts, enabled=False)))


def _find(exc: BaseException, kind: type) -> BaseException | None:
    """``exc`` or the first ``kind`` inside (nested) exception groups."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for e in exc.exceptions:
            found = _find(e, kind)
            if found is not None:
                return found
    return None


async def _main(cfg, base_dir=None) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            app = await nursery.start(lambda task_status: run(cfg, task_status, announce=_say, base_dir=base_dir))
            tune_gc()
            async for signum in signals:
                _say(f"kefu: {signal.Signals(signum).name} received, stopping")
                break
        with trio.move_on_after(STOP_DEADLINE):
            await app.stop()
        nursery.cancel_scope.cancel()


def tune_gc() -> None:
    """Call once start-up is over: keep the garbage collector off the message path.

    Start-up leaves a large, long-lived heap (the intent model's tokenizer and session,
    config, routing tables, broker and desk state). With CPython's default thresholds
    (700 allocations) a busy desk runs a collection every few messages, and the older
    generations' collections walk that whole heap: with benchmarks/desk_bench.py (SQLite
    transcripts, a busy shared machine) p99 customer->agent latency went from 2.2 s to 0.22 s.
    ``gc.freeze()`` moves everything alive now into the permanent generation (never
    scanned again); the higher generation-0 threshold makes young collections rarer.
    Reference counting still frees almost everything at once; only cycles wait longer.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _say(line: str) -> None:
    print(line, flush=True)


def serve_main(cfg, base_dir: str | Path | None = None) -> int:
    """``kefu serve``: run until SIGINT/SIGTERM. Exit status 0, or 1 when it cannot start."""
    level = getattr(logging, cfg.log.level.upper(), logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .checks import config_warnings

    for w in config_warnings(cfg):  # what `kefu config check` prints as "warning:"
        log.warning(w)
    try:
        trio.run(_main, cfg, base_dir)
    except BaseException as e:  # noqa: BLE001 - turned into one line or re-raised below
        err = _find(e, ListenError)
        if err is not None:
            print(f"kefu: {err}", file=sys.stderr, flush=True)
            return 1
        bad = _find(e, ConfigError)
        if bad is not None:
            print(f"kefu: bad config\n{bad}", file=sys.stderr, flush=True)
            return 2
        # Start-up errors that already say what is wrong and how to fix it: one line, no traceback.
        from .nlp.classifier import ConfigProblem, SentimentError
        from .nlp.encoder import ModelError
        from .storage.base import StorageError

        for kind in (ModelError, ConfigProblem, SentimentError, StorageError):
            err = _find(e, kind)
            if err is not None:
                print(f"kefu: cannot start: {err}", file=sys.stderr, flush=True)
                return 1
        if _find(e, KeyboardInterrupt) is not None:
            return 0
        raise
    return 0
