"""The WebSocket listener: one port, two paths.

``/mqtt`` carries MQTT (3.1.1 and 5.0) in binary WebSocket messages. The broker's
connection driver reads and writes a ``trio.abc.Stream``; ``WebSocketStream`` below is
that Stream over one WebSocket connection, so the driver (and the session machine under
it) runs exactly as it does for TCP and TLS. MQTT packets and WebSocket messages need
not line up: one message may carry half a packet or several packets, which is why the
adapter hands out bytes, not messages, and keeps the unread rest of a message.

``/chat`` is the browser JSON protocol (``bridge/chat.py``); this module only accepts
the handshake and passes the connection on.

Both paths check the Origin header against ``listeners.ws.allowed_origins`` before the
handshake completes, so a page on a foreign site cannot even open the socket. Clients
that send no Origin (devices, command-line tools) are not browsers and pass.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

from kefu import edge

log = logging.getLogger("kefu.bridge.ws")

MQTT_SUBPROTOCOLS = ("mqtt", "mqttv3.1")

# WebSocket close codes used here (RFC 6455 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011


@dataclass(frozen=True)
class ConnInfo:
    """What a handler may know about the peer, taken from the handshake."""

    path: str
    query: dict[str, str]
    origin: str | None
    remote: str
    tls: bool
    subprotocol: str | None
    headers: dict[str, str] = field(default_factory=dict)


MqttHandler = Callable[[trio.abc.Stream, ConnInfo], Awaitable[None]]
ChatHandler = Callable[[WebSocketConnection, ConnInfo], Awaitable[None]]


class WebSocketStream(trio.abc.Stream):
    """A byte stream over one WebSocket connection (binary messages only).

    ``receive_some`` returns b"" once the peer has closed; a text message is a protocol
    violation for MQTT over WebSocket (MQTT 5.0 spec 6.0: close the connection), so the
    connection is closed with 1003 and the stream reports end of data.
    """

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws
        self._pending = memoryview(b"")
        self._eof = False
        self._send_lock = trio.StrictFIFOLock()
        self._recv_guard = trio.Lock()

    @property
    def websocket(self) -> WebSocketConnection:
        return self._ws

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._send_lock.locked():
            raise trio.BusyResourceError("another task is already sending on this stream")
        async with self._send_lock:
            if not data:
                await trio.lowlevel.checkpoint()
                return
            try:
                await self._ws.send_message(bytes(data))
            except ConnectionClosed as e:
                raise trio.BrokenResourceError(f"websocket closed: {e.reason}") from e

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._recv_guard.locked():
            raise trio.BusyResourceError("another task is already receiving on this stream")
        async with self._recv_guard:
            if max_bytes is not None and max_bytes < 1:
                raise ValueError("max_bytes must be at least 1")
            while not self._pending:
                if self._eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                try:
                    msg = await self._ws.get_message()
                except ConnectionClosed:
                    self._eof = True
                    continue
                if isinstance(msg, str):
                    self._eof = True
                    await self._ws.aclose(CLOSE_UNSUPPORTED_DATA, "MQTT needs binary WebSocket messages")
                    continue
                self._pending = memoryview(msg)
            n = len(self._pending) if max_bytes is None else min(max_bytes, len(self._pending))
            chunk, self._pending = bytes(self._pending[:n]), self._pending[n:]
            return chunk

    async def aclose(self) -> None:
        self._eof = True
        await self._ws.aclose()


async def _close_internal(ws: WebSocketConnection) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        await ws.aclose(CLOSE_INTERNAL, "internal error")


def origin_allowed(origin: str | None, allowed: list[str]) -> bool:
    """True when a browser at ``origin`` may connect. Entries are exact origins or
    ``scheme://*.domain`` for any subdomain; "*" allows all; an empty list allows all."""
    if origin is None or not allowed:
        return True
    o = origin.strip().rstrip("/").lower()
    for entry in allowed:
        e = entry.strip().rstrip("/").lower()
        if e == "*" or e == o:
            return True
        if "://*." in e:
            scheme, _, rest = e.partition("://*.")
            oscheme, _, ohost = o.partition("://")
            if oscheme == scheme and ohost.endswith("." + rest):
                return True
    return False


def _headers(request: WebSocketRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in request.headers:
        out[k.decode("latin-1").lower()] = v.decode("latin-1")
    return out


def _remote(request: WebSocketRequest) -> str:
    r = request.remote
    return f"{r.address}:{r.port}" if hasattr(r, "address") else str(r)


def make_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


@dataclass
class WsStats:
    mqtt: int = 0
    chat: int = 0
    rejected: int = 0


@dataclass
class WsListener:
    """Returned by ``run`` through ``task_status.started``."""

    host: str
    port: int
    tls: bool
    stats: WsStats

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else ("[::1]" if self.host == "::" else self.host)
        return f"{'wss' if self.tls else 'ws'}://{host}:{self.port}"


class WsGateway:
    """Accepts handshakes and routes them by path. Handlers own the connection after."""

    def __init__(
        self,
        *,
        mqtt_handler: MqttHandler | None,
        chat_handler: ChatHandler | None,
        allowed_origins: list[str],
        mqtt_path: str = "/mqtt",
        chat_path: str = "/chat",
        tls: bool = False,
    ) -> None:
        self.mqtt_handler = mqtt_handler
        self.chat_handler = chat_handler
        self.allowed_origins = allowed_origins
        self.mqtt_path = mqtt_path
        self.chat_path = chat_path
        self.tls = tls
        self.stats = WsStats()

    async def handle(self, request: WebSocketRequest) -> None:
        headers = _headers(request)
        origin = headers.get("origin")
        url = urlsplit(request.path)
        path = url.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if not origin_allowed(origin, self.allowed_origins):
            self.stats.rejected += 1
            log.info("ws: origin %s refused on %s from %s", origin, path, _remote(request))
            await request.reject(403, body=b"origin not allowed\n")
            return
        if path == self.mqtt_path and self.mqtt_handler is not None:
            offered = request.proposed_subprotocols
            chosen = next((p for p in offered if p in MQTT_SUBPROTOCOLS), None)
            if offered and chosen is None:
                self.stats.rejected += 1
                await request.reject(400, body=b"subprotocol must be one of: mqtt, mqttv3.1\n")
                return
            info = ConnInfo(path, query, origin, _remote(request), self.tls, chosen, headers)
            ws = await request.accept(subprotocol=chosen)
            self.stats.mqtt += 1
            try:
                await edge.contain("ws /mqtt", info.remote, lambda: self.mqtt_handler(WebSocketStream(ws), info),
                                   lambda e: _close_internal(ws))
            finally:
                self.stats.mqtt -= 1
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
        elif path == self.chat_path and self.chat_handler is not None:
            info = ConnInfo(path, query, origin, _remote(request), self.tls, None, headers)
            ws = await request.accept()
            self.stats.chat += 1
            try:
                # A boundary: whatever goes wrong in this connection ends it alone (1011),
                # logged once, and never reaches the listener's nursery.
                await edge.contain("ws /chat", info.remote, lambda: self.chat_handler(ws, info),
                                   lambda e: _close_internal(ws))
            finally:
                self.stats.chat -= 1
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await ws.aclose()
        else:
            self.stats.rejected += 1
            await request.reject(404, body=b"no WebSocket service here; try /mqtt or /chat\n")


async def run(
    cfg,
    *,
    mqtt_handler: MqttHandler | None,
    chat_handler: ChatHandler | None,
    task_status: trio.TaskStatus[WsListener] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``cfg.listeners.ws`` until cancelled; ``task_status.started`` gets a WsListener."""
    lc = cfg.listeners.ws
    tls = bool(lc.certfile and lc.keyfile)
    ctx = make_ssl_context(lc.certfile, lc.keyfile) if tls else None
    gw = WsGateway(
        mqtt_handler=mqtt_handler,
        chat_handler=chat_handler,
        allowed_origins=list(lc.allowed_origins),
        mqtt_path=lc.mqtt_path,
        chat_path=lc.chat_path,
        tls=tls,
    )
    # One size cap for the whole listener (trio-websocket closes with 1009 past it):
    # the larger of an MQTT packet plus framing slack and the /chat close limit. /chat
    # applies its own, smaller limits on top.
    max_message = max(cfg.mqtt.max_packet_size + 16, cfg.chat.close_frame_bytes + 1)
    # Bind first, so a busy port is one clear line naming the key to change (like the broker).
    from kefu.broker.server import ListenError, _why

    try:
        if ctx is None:
            listeners = await trio.open_tcp_listeners(lc.port, host=lc.host or None)
        else:
            listeners = await trio.open_ssl_over_tcp_listeners(lc.port, ctx, host=lc.host or None, https_compatible=True)
    except OSError as e:
        raise ListenError("listeners.ws", lc.host or "*", lc.port, _why(e)) from None
    server = WebSocketServer(
        gw.handle,
        listeners,
        max_message_size=max_message,
        message_queue_size=4,
        connect_timeout=10,
        disconnect_timeout=2,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        port = server.listeners[0].port
        task_status.started(WsListener(lc.host, port, tls, gw.stats))
