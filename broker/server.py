"""The MQTT listeners (TCP, TLS) and the broker's lifetime, on trio.

``Broker(config).serve(task_status)`` opens every configured listener first (so a
port in use is reported before anything starts, as ``ListenError`` naming the config
key to change), then reports the bound addresses through ``task_status.started``
(port 0 -> the real port) and serves until ``stop()``.

``stop()``: stop accepting (listening sockets closed), send DISCONNECT 0x8B
(server shutting down) to 5.0 clients without publishing their wills, let every
connection flush, and return within ``SHUTDOWN_GRACE`` seconds whatever the
clients do.

Other transports (the WebSocket bridge) call ``Broker.handle_stream(stream, peer)``
with any ``trio.abc.Stream`` carrying MQTT bytes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import math
import platform
import ssl
from dataclasses import dataclass

import trio

from .connection import Connection, peer_of
from .hooks import HookRegistry
from .mqtt.packets import ReasonCode as RC
from .router import Router

log = logging.getLogger("kefu.broker")

SHUTDOWN_GRACE = 1.0  # healthy clients flush in milliseconds; a stuck one never will
KEEPALIVE_SWEEP = 0.5  # seconds between keepalive/CONNECT-timeout checks of every connection


_CONN_TASK = "kefu.broker.connection"  # one shared task name, not one string per connection

# Giving memory back after a burst (issue 12: RSS stayed at its peak after a fuzz run). The
# Python objects are freed (a tracemalloc diff after 100,000 fuzzed packets: under 2 MiB
# left); what stays is free memory inside glibc's heap, which glibc only returns from its
# top. ``malloc_trim(0)`` also releases the free pages in the middle. It runs in a worker
# thread every TRIM_EVERY seconds when that interval or the one before was busy: TRIM_CHURN
# MQTT connections ended or TRIM_BYTES received. glibc only; elsewhere nothing is done.
TRIM_EVERY = 30.0
TRIM_CHURN = 500
TRIM_BYTES = 64 << 20


def _find_malloc_trim():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_malloc_trim = _find_malloc_trim()


def trim_memory() -> bool:
    """Return free heap memory to the OS (glibc ``malloc_trim(0)``); False where unavailable."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


@dataclass(frozen=True)
class Address:
    """One address the broker serves: ``scheme`` is mqtt or mqtts."""

    scheme: str
    host: str
    port: int
    key: str  # the config section, e.g. "listeners.mqtt"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class ListenError(Exception):
    """A listener could not be opened; ``str()`` is the one line to show the operator."""

    def __init__(self, key: str, host: str, port: int, why: str, fix: str | None = None) -> None:
        self.key, self.host, self.port, self.why = key, host, port, why
        fix = fix or (f"set {key}.port to a free port (0: any free one) in a config file and start with "
                      "`kefu serve --config FILE` (README: Quick start)")
        super().__init__(f"cannot listen on {host}:{port} ({why}): {fix}")


def _why(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address in use"
    if e.errno == errno.EACCES:
        return "permission denied"
    if e.errno == errno.EADDRNOTAVAIL:
        return "address not available"
    return e.strerror or str(e)


def tls_context(tls) -> ssl.SSLContext:
    """Server TLS context from a ``listeners.mqtts`` section; ``ListenError`` naming the key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile)
    except (OSError, ssl.SSLError) as e:
        raise ListenError("listeners.mqtts", tls.host, tls.port, f"cannot load certificate: {e}",
                          "check listeners.mqtts.certfile and listeners.mqtts.keyfile") from None
    if tls.cafile:
        try:
            ctx.load_verify_locations(tls.cafile)
        except (OSError, ssl.SSLError) as e:
            raise ListenError("listeners.mqtts", tls.host, tls.port, f"cannot load CA bundle: {e}",
                              "check listeners.mqtts.cafile") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL
    return ctx


class Broker:
    """The embedded MQTT broker: listeners, connections, the router and its timers."""

    def __init__(self, config, hooks: HookRegistry | None = None) -> None:
        self.config = config
        self.hooks = hooks if hooks is not None else HookRegistry()
        self.router = Router(config, self.hooks)
        # At most this many scrypt password checks at once (each ~16 MiB): a flood of bad
        # logins waits here instead of filling memory and the shared worker threads.
        self.router.auth_limiter = trio.CapacityLimiter(max(1, int(getattr(config.auth, "max_concurrent_hashes", 4))))
        self.addresses: list[Address] = []
        self.connections: set[Connection] = set()
        self._accept_scope: trio.CancelScope | None = None
        self._timer_scope: trio.CancelScope | None = None
        self._conn_nursery: trio.Nursery | None = None
        self._stopped = trio.Event()
        self._stopping = False
        self._stop_requested = False
        self._drained = trio.Event()
        self.ended = 0  # connections that ended (the trim's "busy" test)
        self.trims = 0  # malloc_trim runs (memory given back after busy intervals)

    # ------------------------------------------------------------------ listeners
    async def _open_listeners(self) -> list[tuple[Address, trio.abc.Listener]]:
        lcfg = self.config.listeners
        opened: list[tuple[Address, trio.abc.Listener]] = []
        try:
            plan = []
            if lcfg.mqtt.enabled:
                plan.append(("mqtt", "listeners.mqtt", lcfg.mqtt, None))
            if lcfg.mqtts.enabled:
                plan.append(("mqtts", "listeners.mqtts", lcfg.mqtts, tls_context(lcfg.mqtts)))
            for scheme, key, section, ctx in plan:
                try:
                    listeners = await trio.open_tcp_listeners(section.port, host=section.host or None)
                except OSError as e:
                    raise ListenError(key, section.host or "*", section.port, _why(e)) from None
                for tcp in listeners:
                    sockname = tcp.socket.getsockname()
                    addr = Address(scheme, sockname[0], sockname[1], key)
                    listener = trio.SSLListener(tcp, ctx, https_compatible=False) if ctx else tcp
                    opened.append((addr, listener))
        except BaseException:
            for _, listener in opened:
                await trio.aclose_forcefully(listener)
            raise
        return opened

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Open the listeners, ``task_status.started(addresses)``, serve until ``stop()``."""
        opened = await self._open_listeners()
        self.addresses = [a for a, _ in opened]
        router = self.router
        router.on_timer = self._timer_changed
        try:
            async with trio.open_nursery() as nursery:
                self._conn_nursery = nursery
                nursery.start_soon(self._timers)
                nursery.start_soon(self._sweep_keepalives)
                router.start(trio.current_time())
                with trio.CancelScope() as self._accept_scope:
                    if self._stop_requested:
                        self._accept_scope.cancel()
                    async with trio.open_nursery() as accept:
                        for addr, listener in opened:
                            accept.start_soon(self._accept_loop, addr, listener)
                        task_status.started(list(self.addresses))
                        await trio.sleep_forever()  # until stop(); also with no listeners
                await self._drain()
                nursery.cancel_scope.cancel()
        finally:
            for _, listener in opened:
                await trio.aclose_forcefully(listener)
            self._stopped.set()

    async def _accept_loop(self, addr: Address, listener: trio.abc.Listener) -> None:
        nursery = self._conn_nursery
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # EMFILE and friends: back off a little, keep serving
                log.error("%s: accept failed: %s", addr.url, e)
                await trio.sleep(0.1)
                continue
            if type(stream) is trio.SocketStream and not self._stopping:
                # Plain TCP: the connection's task is its reader, straight away (one frame
                # less per idle connection than handle_stream; memory per connection).
                conn = Connection(stream, self.router, peer_of(stream), nursery)
                self.connections.add(conn)
                nursery.start_soon(conn.run_tcp, self._ended, name=_CONN_TASK)
            else:
                nursery.start_soon(self.handle_stream, stream, None, addr.scheme == "mqtts")

    def _ended(self, conn: Connection) -> None:
        """A connection is over (``Connection.run``'s ``ended``)."""
        self.connections.discard(conn)
        self.ended += 1
        if self._stopping and not self.connections:
            self._drained.set()

    async def handle_stream(self, stream: trio.abc.Stream, peer: str | None = None, tls: bool = False) -> None:
        """Serve one MQTT client on any trio stream until it goes away."""
        if self._stopping:
            await trio.aclose_forcefully(stream)
            return
        if peer is None:
            peer = peer_of(stream)
        if tls:
            with trio.move_on_after(self.router.limits.connect_timeout) as cs:
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                    log.info("client (%s): TLS handshake failed: %s", peer, e.__cause__ or e)
                    await trio.aclose_forcefully(stream)
                    return
            if cs.cancelled_caught:
                log.info("client (%s): TLS handshake timed out", peer)
                await trio.aclose_forcefully(stream)
                return
        conn = Connection(stream, self.router, peer, self._conn_nursery)
        self.connections.add(conn)
        await conn.run(self._ended)

    def publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False,
                properties=None, client_id: str = "") -> int:
        """Publish a message from inside kefu (see ``Router.inject``); call from the trio thread."""
        kw = {} if properties is None else {"properties": properties}
        return self.router.inject(topic, payload, trio.current_time(), qos=qos, retain=retain,
                                  client_id=client_id, **kw)

    # ------------------------------------------------------------------ timers
    async def _timers(self) -> None:
        router = self.router
        while True:
            deadline = router.tick(trio.current_time())
            with trio.CancelScope(deadline=math.inf if deadline is None else deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None

    async def _sweep_keepalives(self) -> None:
        """One task checks every connection's deadline (no cancel scope per connection), and
        gives memory back after a busy interval (``TRIM_EVERY``)."""
        stats = self.router.stats
        next_trim = trio.current_time() + TRIM_EVERY
        ended, received = self.ended, stats.bytes_received
        was_busy = False
        while True:
            await trio.sleep(KEEPALIVE_SWEEP)
            now = trio.current_time()
            for conn in list(self.connections):
                conn.check_deadline(now)
            if now >= next_trim:
                next_trim = now + TRIM_EVERY
                busy = self.ended - ended >= TRIM_CHURN or stats.bytes_received - received >= TRIM_BYTES
                # also once after the last busy interval: what the burst's end freed
                if (busy or was_busy) and await trio.to_thread.run_sync(trim_memory):
                    self.trims += 1
                was_busy = busy
                ended, received = self.ended, stats.bytes_received

    def _timer_changed(self, when: float) -> None:
        scope = self._timer_scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    # ------------------------------------------------------------------ shutdown
    async def _drain(self) -> None:
        self._stopping = True
        now = trio.current_time()
        for conn in list(self.connections):
            conn.proto.close(RC.SERVER_SHUTTING_DOWN, now, will=False)
        if self.connections:
            with trio.move_on_after(SHUTDOWN_GRACE):
                await self._drained.wait()
            if self.connections:
                log.info("shutdown: %d connection(s) did not flush in time", len(self.connections))

    async def stop(self) -> None:
        """Stop accepting, disconnect everyone (5.0: 0x8B, no wills), flush; wait until done."""
        self._stop_requested = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        await self._stopped.wait()


async def serve(config, task_status=trio.TASK_STATUS_IGNORED, *, hooks: HookRegistry | None = None) -> None:
    """Run a broker for ``config``; ``task_status.started(addresses)`` once listening.

    Cancel the surrounding scope to end it abruptly; use ``Broker.stop()`` for a
    graceful stop.
    """
    await Broker(config, hooks).serve(task_status)
