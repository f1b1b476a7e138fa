"""Drive one ``Protocol`` machine over any ``trio.abc.Stream`` (TCP, TLS, WebSocket adapter).

A reader task per connection, and a writer task while output waits. Plain TCP
accepted by the server (``run_tcp``): the reader is the connection's only task, it
reads the socket with ``os.read`` after ``wait_readable`` and the writer runs in the
server's nursery, so an idle connection is one parked task with one frame of its own
(no nursery, cancel scope or trio socket wrapper frames): RSS at 10,000 idle
connections of ``kefu serve`` went from 7.6 to 5.0 KiB each (docs/broker-benchmarks.md).
Other streams (TLS, WebSocket) keep a nursery of their own for the two tasks:

* the reader receives up to 64 KiB at a time and hands it to the machine, which
  decodes every complete packet in it and routes synchronously (no trio checkpoint
  per message: a flood of small PUBLISHes costs one ``receive_some`` per buffer);
* output is written without a task when it can be: over plain TCP, whatever a
  reader step (one ``receive_bytes``: decode, route, fan out) queued for any
  connection is written with one non-blocking ``os.write`` per connection when the
  step ends, so a message costs no task and no trio checkpoint on the way out
  (benchmarks/broker_bench.py: at 1,000 msg/s a third less CPU per message and a
  median latency of ~0.07-0.11 ms instead of ~0.15 ms; QoS 1 1->1, a round trip per
  window, ~17% more messages per CPU-second; fan-out ~5%). Only what the socket
  does not take (a slow reader), output queued outside a reader step (timers, the
  persister releasing acknowledgements), a connection that is closing and other
  transports (TLS, WebSocket) go to the writer task;
* the writer task exists only while there is such output: ``Protocol.wake`` (called
  by whoever queued output first into an empty buffer) starts it, it writes
  everything queued as one ``send_all`` per round (many packets per syscall under
  load) and ends when the buffer is empty. An idle connection is then one parked
  reader task; nothing is allocated per message to wake anybody.

Keepalive (1.5x keep alive, or the CONNECT timeout before CONNECT) is not a cancel
scope per receive: ``Protocol.deadline`` is checked for every connection by one
sweeper task in the server (``check_deadline``), which keeps an idle connection
down to two parked tasks and their frames (memory per connection matters at 10k+).

Back-pressure: when the router pauses a publisher (``Protocol.paused_by``: an online
QoS 1/2 subscriber it feeds is behind but acknowledging), the reader stops after the
current packet and does not read the socket until the subscriber's queue drains; the
client's own flow control (its window of unacknowledged PUBLISHes, TCP) then slows
it down, instead of the broker dropping messages it has acknowledged.

Closing: when the machine closes (DISCONNECT, protocol error, keepalive, takeover,
shutdown) the writer flushes what is queued, bounded by ``FLUSH_TIMEOUT`` set on the
connection's nursery at that moment, and the nursery is cancelled, which stops the
reader. A malformed packet, a broken transport or even a bug in the machine ends
this connection only, logged once.
"""

from __future__ import annotations

import logging
import os

import trio

from kefu.edge import RateLimitedLog

from .mqtt.session import Protocol

log = logging.getLogger("kefu.broker")

_end_log = RateLimitedLog(log, per_minute=120)

RECEIVE_SIZE = 65536
FLUSH_TIMEOUT = 2.0
PAUSE_CHECK = 1.0  # seconds a paused publisher waits before checking the subscriber still acknowledges


def _noop() -> None:
    pass


class _Step:
    """While a reader hands received bytes to its machine (synchronously), connections
    that get output are collected here and written directly when the step ends."""

    __slots__ = ("active", "dirty")

    def __init__(self) -> None:
        self.active = False
        self.dirty: list = []


_STEP: trio.lowlevel.RunVar = trio.lowlevel.RunVar("kefu_broker_step")


def _step() -> _Step:
    try:
        return _STEP.get()
    except LookupError:
        step = _Step()
        _STEP.set(step)
        return step

class Connection:
    """One client connection: the machine plus its reader and writer tasks."""

    __slots__ = ("stream", "proto", "router", "_nursery", "_writing", "_closing", "_fd", "_dirty", "_step",
                 "_spawn", "_wscope", "_flushed")

    def __init__(self, stream: trio.abc.Stream, router, peer: str = "", nursery: trio.Nursery | None = None) -> None:
        self.stream = stream
        self.router = router
        self.proto = Protocol(router, router.limits, peer)
        self.proto.wake = self._wake
        # Where the writer task is started: the connection's own nursery (TLS, WebSocket),
        # or for plain TCP with ``nursery`` given, that shared one (the server's): an idle
        # connection then holds no nursery, cancel scope or task sets of its own.
        self._nursery: trio.Nursery | None = None
        self._writing = False
        self._closing = False
        # Plain TCP: output queued while a reader step routes is written with one
        # non-blocking os.write at the end of the step (no writer task, no trio
        # checkpoints); only a full socket buffer falls back to the writer task.
        self._fd = stream.socket.fileno() if type(stream) is trio.SocketStream else -1
        self._dirty = False
        self._step: _Step | None = None
        self._spawn = nursery if self._fd >= 0 else None
        self._wscope: trio.CancelScope | None = None  # the writer's, while it flushes a closing connection
        self._flushed: trio.Event | None = None  # set when the writer ends, while ``run`` waits for it

    def _wake(self) -> None:
        """Output was queued, or the machine closed: make sure a writer runs."""
        nursery = self._nursery
        if nursery is None:
            return
        if not self._writing and not self._dirty:
            step = self._step
            if step is not None and step.active and self._fd >= 0:
                self._dirty = True
                step.dirty.append(self)
            else:
                self._writing = True
                nursery.start_soon(self._writer)
        if not self._closing and self.proto.closed:
            # Closed (by the peer, the server or a protocol error): flush, but not forever.
            self._closing = True
            if self._spawn is None:
                nursery.cancel_scope.deadline = trio.current_time() + FLUSH_TIMEOUT
            elif self._wscope is not None:
                self._wscope.deadline = trio.current_time() + FLUSH_TIMEOUT

    def _flush(self) -> None:
        """End of a reader step: write what is queued now; a writer task takes any rest."""
        self._dirty = False
        nursery = self._nursery
        if nursery is None or self._writing:
            return
        proto = self.proto
        leftover = None
        if not proto.closed:
            try:
                while proto.out:
                    data = proto.take_output()
                    try:
                        n = os.write(self._fd, data)
                    except BlockingIOError:
                        n = 0
                    proto.output_sent(n)
                    if n < len(data):
                        leftover = data[n:]
                        break
                else:
                    return
            except OSError:  # reset or broken pipe: the connection is over
                proto.connection_lost(trio.current_time())
                leftover = None
        self._writing = True
        nursery.start_soon(self._writer, leftover)

    def check_deadline(self, now: float) -> None:
        """Called by the server's sweeper: close when the keepalive/CONNECT deadline passed."""
        deadline = self.proto.deadline
        if deadline is not None and now >= deadline:
            self.proto.keepalive_expired(now)

    async def run(self, ended=None) -> None:
        """Serve until the connection ends. Never raises for anything the peer does.

        ``ended(self)``, when given, is called once it is over (the server's bookkeeping)."""
        if self._spawn is not None:
            return await self.run_tcp(ended)
        try:
            await self._run_stream()
        finally:
            if ended is not None:
                ended(self)

    async def run_tcp(self, ended=None) -> None:
        """Plain TCP with a shared nursery: one task, one frame while idle.

        The reader is this task: it waits for the socket to be readable and reads it
        with ``os.read`` (no per-connection nursery, no trio socket wrapper frames on
        an idle connection's stack: memory per connection at 10k+). The writer task,
        when output waits, runs in the shared nursery; a closing connection is
        flushed (bounded by ``FLUSH_TIMEOUT``) and its socket closed, which wakes this
        reader (``ClosedResourceError``) instead of a cancelled nursery."""
        proto = self.proto
        stream = self.stream
        router = self.router
        stats = router.stats
        current_time = trio.current_time
        fd = self._fd
        os_read = os.read
        wait_readable = trio.lowlevel.wait_readable
        checkpoint = trio.lowlevel.checkpoint
        try:
            proto.start(current_time())
            self._nursery = self._spawn
            step = self._step = _step()
            try:
                while not proto.closed:
                    if proto.paused_by is not None:
                        await self._paused()
                        data = b""
                    else:
                        try:
                            data = os_read(fd, RECEIVE_SIZE)
                        except BlockingIOError:
                            data = None
                        if data is None:
                            # Outside the except clause: a parked reader must not keep the
                            # exception and its traceback alive (~0.7 KiB per idle connection).
                            await wait_readable(fd)
                            continue
                        if not data:
                            proto.connection_lost(current_time())
                            break
                        stats.bytes_received += len(data)
                    if not await self._take(data, step) and proto.paused_by is None:
                        # A client that always has data must not starve the others. Not when
                        # paused: a resume during this checkpoint would leave what the decoder
                        # holds unprocessed while the socket has nothing more to read.
                        await checkpoint()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                proto.connection_lost(current_time())
            proto.connection_lost(current_time())  # no-op unless still open
            self._wake()
            if self._writing:
                done = self._flushed = trio.Event()
                await done.wait()
        except Exception as exc:  # a bug must not take the broker down: this client only
            _end_log(logging.ERROR, "client %r (%s): internal error; connection closed", proto.client_id, proto.peer,
                     exc_info=exc)
        finally:
            self._nursery = None
            proto.connection_lost(trio.current_time())
            try:
                await trio.aclose_forcefully(stream)
            finally:
                self._log_end()
                if ended is not None:
                    ended(self)

    async def _run_stream(self) -> None:
        proto = self.proto
        try:
            proto.start(trio.current_time())
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._reader()
                proto.connection_lost(trio.current_time())  # no-op unless still open
                self._wake()
            self._nursery = None
        except Exception as exc:  # a bug must not take the broker down: this client only
            _end_log(logging.ERROR, "client %r (%s): internal error; connection closed", proto.client_id, proto.peer,
                     exc_info=exc)
        finally:
            self._nursery = None
            proto.connection_lost(trio.current_time())
            await trio.aclose_forcefully(self.stream)
            self._log_end()

    def _log_end(self) -> None:
        # Rate-limited: 100k bad connections must not become 77k log lines (issue 12).
        proto = self.proto
        e = proto.error
        if e is None:
            if proto.close_reason in ("keep alive timeout", "no CONNECT in time"):
                _end_log(logging.INFO, "client %r (%s): %s", proto.client_id, proto.peer, proto.close_reason)
            return
        if proto.close_reason == "connect refused":
            _end_log(logging.INFO, "client %r (%s): connection refused (0x%02X): %s", proto.client_id, proto.peer,
                     e.reason_code, e.message)
        else:
            _end_log(logging.WARNING, "client %r (%s): %s (0x%02X): %s; connection closed", proto.client_id,
                     proto.peer, proto.close_reason, e.reason_code, e.message)

    async def _reader(self) -> None:
        proto = self.proto
        stream = self.stream
        router = self.router
        stats = router.stats
        current_time = trio.current_time
        # Plain TCP: read the trio socket directly. SocketStream.receive_some would keep a
        # conflict detector and an error-translating generator alive in every idle reader.
        receive = stream.socket.recv if type(stream) is trio.SocketStream else stream.receive_some
        step = self._step = _step()
        try:
            while not proto.closed:
                if proto.paused_by is not None:
                    # Back-pressure: a subscriber this client publishes to is behind; the
                    # rest of what was received waits in the decoder, the socket unread.
                    await self._paused()
                    data = b""
                else:
                    data = await receive(RECEIVE_SIZE)
                    if not data:
                        proto.connection_lost(current_time())
                        return
                    stats.bytes_received += len(data)
                await self._take(data, step)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            proto.connection_lost(current_time())

    async def _take(self, data: bytes, step) -> bool:
        """One reader step, the same on every transport: the session machine takes ``data``
        (b"": only what its decoder still holds), what the step queued for any connection
        is written when it ends, and a CONNECT waiting for its password check gets it from
        a worker thread. True when it ran that check (the step has already yielded)."""
        proto = self.proto
        step.active = True
        try:
            proto.receive_bytes(data, trio.current_time())
        finally:
            step.active = False
            dirty = step.dirty
            if dirty:
                for conn in dirty:
                    conn._flush()
                dirty.clear()
        connect = proto.auth_request
        if connect is None:
            return False
        router = self.router
        rc = await trio.to_thread.run_sync(router.authenticate_blocking, proto, connect,
                                           limiter=getattr(router, "auth_limiter", None))
        proto.auth_result(rc, trio.current_time())
        return True

    async def _paused(self) -> None:
        """Wait while ``proto.paused_by`` is set: until the subscriber's queue drains
        (``resume``), it goes offline, or it stops acknowledging for ``PAUSE_CHECK``
        seconds (then it is not keeping up: its queue's drop policy applies instead)."""
        proto = self.proto
        while proto.paused_by is not None and not proto.closed:
            s = proto.paused_by
            resumed = trio.Event()
            proto.resume = resumed.set
            with trio.move_on_after(PAUSE_CHECK):
                await resumed.wait()
            proto.resume = _noop
            now = trio.current_time()
            if proto._ka_window is not None and proto.deadline is not None:
                # not reading is the broker's doing, not a silent client's
                proto.deadline = max(proto.deadline, now + proto._ka_window)
            if proto.paused_by is s and now - s.last_ack >= PAUSE_CHECK:
                proto.paused_by = None
                if s.throttled and proto in s.throttled:
                    s.throttled.remove(proto)

    async def _writer(self, leftover: bytes | None = None) -> None:
        if self._spawn is not None:
            return await self._writer_tcp(leftover)
        proto = self.proto
        stream = self.stream
        try:
            if leftover:
                await stream.send_all(leftover)
                proto.output_sent(len(leftover))
            while proto.out:
                data = proto.take_output()
                await stream.send_all(data)
                proto.output_sent(len(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            proto.connection_lost(trio.current_time())
        finally:
            self._writing = False
        if proto.closed and self._nursery is not None:
            self._nursery.cancel_scope.cancel()  # flushed (or broken): stop the reader too

    async def _writer_tcp(self, leftover: bytes | None) -> None:
        """The writer of a plain TCP connection, in the shared nursery (see ``_run_tcp``)."""
        proto = self.proto
        stream = self.stream
        scope = self._wscope = trio.CancelScope()
        if self._closing:
            scope.deadline = trio.current_time() + FLUSH_TIMEOUT
        try:
            with scope:
                if leftover:
                    await stream.send_all(leftover)
                    proto.output_sent(len(leftover))
                while proto.out:
                    data = proto.take_output()
                    await stream.send_all(data)
                    proto.output_sent(len(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            proto.connection_lost(trio.current_time())
        finally:
            self._wscope = None
            self._writing = False
            done = self._flushed
            if done is not None:
                done.set()
        if proto.closed or scope.cancelled_caught:
            if scope.cancelled_caught:
                proto.connection_lost(trio.current_time())
            # Flushed (or broken, or out of time): closing the socket wakes the reader.
            stream.socket.close()


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

