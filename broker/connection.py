"""Drive one ``Protocol`` machine over any ``trio.abc.Stream`` (TCP, TLS, WebSocket adapter).

Two tasks per connection, in one nursery:

* the reader receives up to 64 KiB at a time and hands it to the machine, which
  decodes every complete packet in it and routes synchronously (no trio checkpoint
  per message: a flood of small PUBLISHes costs one ``receive_some`` per buffer);
  the keepalive deadline (1.5x keep alive, or the CONNECT timeout) is a
  ``move_on_at`` around the receive;
* the writer sleeps until the machine has output, then writes everything queued as
  one ``send_all`` (many packets per syscall under load). It is woken through
  ``Protocol.wake`` by whoever queued output: this connection's reader, or the
  router while another client's PUBLISH fans out. Waking is a bare
  ``trio.lowlevel.reschedule`` of the parked writer, no Event per message.

Closing: when the machine closes (DISCONNECT, protocol error, keepalive, takeover,
shutdown) the reader stops, the writer flushes what is queued (bounded by
``FLUSH_TIMEOUT``) and the stream is closed. A malformed packet, a broken transport or
even a bug in the machine ends this connection only, logged once.
"""

from __future__ import annotations

import logging
import math

import trio

from .mqtt.session import Protocol

log = logging.getLogger("kefu.broker")

RECEIVE_SIZE = 65536
FLUSH_TIMEOUT = 2.0

_ABORT = trio.lowlevel.Abort.SUCCEEDED


def _abort(_raise_cancel):
    return _ABORT


class Connection:
    """One client connection: the machine plus its reader and writer tasks."""

    __slots__ = ("stream", "proto", "router", "_parked", "_writer_scope", "_done")

    def __init__(self, stream: trio.abc.Stream, router, peer: str = "") -> None:
        self.stream = stream
        self.router = router
        self.proto = Protocol(router, router.limits, peer)
        self.proto.wake = self._wake
        self._parked = None
        self._writer_scope: trio.CancelScope | None = None
        self._done = trio.Event()

    def _wake(self) -> None:
        task = self._parked
        if task is not None:
            self._parked = None
            trio.lowlevel.reschedule(task)

    async def run(self) -> None:
        """Serve until the connection ends. Never raises for anything the peer does."""
        proto = self.proto
        try:
            proto.start(trio.current_time())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                await self._reader()
                # The reader is done: let the writer flush, but not forever.
                if self._writer_scope is not None:
                    self._writer_scope.deadline = trio.current_time() + FLUSH_TIMEOUT
                self._wake()
        except Exception:  # a bug must not take the broker down: this client only
            log.exception("client %r (%s): internal error; connection closed", proto.client_id, proto.peer)
        finally:
            proto.connection_lost(trio.current_time())
            await trio.aclose_forcefully(self.stream)
            self._log_end()
            self._done.set()

    def _log_end(self) -> None:
        proto = self.proto
        e = proto.error
        if e is None:
            if proto.close_reason in ("keep alive timeout", "no CONNECT in time"):
                log.info("client %r (%s): %s", proto.client_id, proto.peer, proto.close_reason)
            return
        if proto.close_reason == "connect refused":
            log.info("client %r (%s): connection refused (0x%02X): %s", proto.client_id, proto.peer,
                     e.reason_code, e.message)
        else:
            log.warning("client %r (%s): %s (0x%02X): %s; connection closed", proto.client_id, proto.peer,
                        proto.close_reason, e.reason_code, e.message)

    async def _reader(self) -> None:
        proto = self.proto
        stream = self.stream
        router = self.router
        stats = router.stats
        current_time = trio.current_time
        try:
            while not proto.closed:
                deadline = proto.deadline
                if deadline is None:
                    data = await stream.receive_some(RECEIVE_SIZE)
                else:
                    data = None
                    with trio.move_on_at(deadline):
                        data = await stream.receive_some(RECEIVE_SIZE)
                    if data is None:
                        now = current_time()
                        if proto.deadline is not None and now >= proto.deadline:
                            proto.keepalive_expired(now)
                            return
                        continue
                if not data:
                    proto.connection_lost(current_time())
                    return
                stats.bytes_received += len(data)
                proto.receive_bytes(data, current_time())
                connect = proto.auth_request
                if connect is not None:
                    rc = await trio.to_thread.run_sync(router.authenticate_blocking, proto, connect)
                    proto.auth_result(rc, current_time())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            proto.connection_lost(current_time())

    async def _writer(self, nursery_scope: trio.CancelScope) -> None:
        proto = self.proto
        stream = self.stream
        with trio.CancelScope() as scope:
            self._writer_scope = scope
            try:
                while True:
                    if proto.out:
                        data = proto.take_output()
                        await stream.send_all(data)
                        proto.output_sent(len(data))
                    elif proto.closed:
                        break
                    else:
                        self._parked = trio.lowlevel.current_task()
                        try:
                            await trio.lowlevel.wait_task_rescheduled(_abort)
                        finally:
                            self._parked = None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                proto.connection_lost(trio.current_time())
        nursery_scope.cancel()

    async def wait_closed(self) -> None:
        await self._done.wait()


def peer_of(stream) -> str:
    """'host:port' of the remote end of a SocketStream/SSLStream, '' when unknown."""
    s = stream
    for _ in range(4):
        sock = getattr(s, "socket", None)
        if sock is not None:
            try:
                addr = sock.getpeername()
            except OSError:
                return ""
            if isinstance(addr, tuple):
                host = addr[0]
                return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
            return str(addr)
        s = getattr(s, "transport_stream", None)
        if s is None:
            return ""
    return ""


async def serve_stream(stream: trio.abc.Stream, router, peer: str | None = None) -> None:
    """Serve one MQTT client on ``stream`` until it disconnects (for WebSocket adapters too)."""
    await Connection(stream, router, peer_of(stream) if peer is None else peer).run()


INF = math.inf
