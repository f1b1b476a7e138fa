"""The wiring: one root nursery running every kefu service (for now, the MQTT broker).

``run(cfg, task_status)`` starts the services and reports an ``App`` (addresses,
the broker, ``stop()``) so tests can run the whole thing in-process.
``serve_main(cfg)`` is ``kefu serve``: it prints every address served, turns a busy
port into one line naming the config key to change (exit status 1, no traceback),
and on SIGINT/SIGTERM stops accepting, flushes and exits within 2 seconds.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable

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
        with trio.move_on_after(STOP_DEADLINE):
            await self.broker.stop()
        self._scope.cancel()


async def run(cfg, task_status=trio.TASK_STATUS_IGNORED, *, announce: Callable[[str], None] | None = None) -> None:
    """Run every kefu service until cancelled or ``App.stop()``; ``started(App)`` once listening.

    Raises ``ListenError`` (before ``started``) when a listener cannot be opened.
    """
    broker = Broker(cfg)
    ops = Ops(cfg)  # metrics, history, alerts (kefu/ops.py); raises ConfigError for bad [[alerts]]
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            addresses = await nursery.start(broker.serve)
            if announce is not None:
                for a in addresses:
                    announce(f"kefu: MQTT listening on {a.url}")
            # The bridge: MQTT over WebSocket (/mqtt), the browser chat protocol, HTTP API and pages.
            from .bridge.service import run as run_bridge

            bridge = await nursery.start(functools.partial(run_bridge, cfg, broker=broker, announce=announce,
                                                           extra_routes=ops.routes()))
            app = App(broker, scope)
            app.bridge = bridge
            # /metrics, /dashboard, sampling and alerts; pass desk= and store= here once they run in this nursery
            app.ops = await ops.start(nursery, broker=broker, bridge=bridge, announce=announce)
            task_status.started(app)


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


async def _main(cfg) -> None:
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            app = await nursery.start(lambda task_status: run(cfg, task_status, announce=_say))
            async for signum in signals:
                _say(f"kefu: {signal.Signals(signum).name} received, stopping")
                break
        with trio.move_on_after(STOP_DEADLINE):
            await app.stop()
        nursery.cancel_scope.cancel()


def _say(line: str) -> None:
    print(line, flush=True)


def serve_main(cfg) -> int:
    """``kefu serve``: run until SIGINT/SIGTERM. Exit status 0, or 1 when it cannot start."""
    level = getattr(logging, cfg.log.level.upper(), logging.INFO)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(_main, cfg)
    except BaseException as e:  # noqa: BLE001 - turned into one line or re-raised below
        err = _find(e, ListenError)
        if err is not None:
            print(f"kefu: {err}", file=sys.stderr, flush=True)
            return 1
        bad = _find(e, ConfigError)
        if bad is not None:
            print(f"kefu: bad config\n{bad}", file=sys.stderr, flush=True)
            return 2
        if _find(e, KeyboardInterrupt) is not None:
            return 0
        raise
    return 0
