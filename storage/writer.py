"""One writer thread with group commit, for both SQL backends.

Why: a durable commit costs an fsync (SQLite) or a round trip plus a WAL flush
(PostgreSQL), a fixed price whether the transaction holds one row or a thousand. The
broker must not acknowledge a QoS 1/2 PUBLISH before its commit, so every publisher
waits for one. Funnelling all writes through one thread that takes *everything queued*
as one transaction makes the price per message fall as load rises: 10,000 concurrent
publishers share a handful of commits per second.

Mechanics:
* Trio side: ``submit(kind, args)`` appends an ``Op`` to a thread-safe queue and parks
  the calling task (``wait_task_rescheduled``); no per-op Event, no per-op thread hop.
* Thread side: block for one op, drain whatever else is queued (up to ``max_batch``),
  run consecutive ops of the same kind through that kind's *batch handler* (so
  PostgreSQL can COPY a whole batch), COMMIT, then hand the finished batch back to trio
  with one ``run_sync_soon`` that reschedules every waiting task.
* An error that is about the database being unusable (``classify`` returns a reason:
  disk full, locked, connection lost) keeps the batch, marks the store not ready, and
  retries with backoff until it commits: callers keep waiting (nothing acknowledged),
  new ops are buffered up to ``buffer_limit`` and refused with StorageUnavailable
  beyond it. A waiting caller gives up after ``commit_timeout`` with StorageUnavailable;
  its op stays queued and may still commit later (an unacknowledged duplicate at worst).
  The timeout is enforced by the retrying thread (it sees every waiting op: the failing
  batch plus the queue, drained into a backlog while it retries), not by a trio cancel
  scope per op: that scope was the largest cost per write on the fast path, and the
  wait can only outlast ``commit_timeout`` while the database is failing (a hung call
  ends through the drivers' own timeouts, e.g. PostgreSQL's tcp_user_timeout).
* Any other error belongs to one op (a constraint, a bad value): the batch is rolled
  back and its ops re-run one transaction each, so only the faulty op fails.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable

import outcome
import trio

from .base import Health, StorageUnavailable

log = logging.getLogger("kefu.storage")

_STOP = object()


class Op:
    __slots__ = ("kind", "args", "task", "result", "error", "abandoned", "t0", "timed_out", "done")

    def __init__(self, kind: str, args: Any) -> None:
        self.kind = kind
        self.args = args
        self.task = None
        self.result = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.t0 = 0.0  # time.monotonic() when a caller started waiting for it
        self.timed_out = False
        self.done = False  # trio side: committed (or failed) and handed back


class Writer:
    """Group-commit writer. ``handlers[kind](conn, [args, ...]) -> [result, ...]``.

    A handler may return an exception instance as one op's result: that op's caller gets
    it raised, the rest of the batch commits (for expected refusals such as StaleFence).
    """

    def __init__(
        self,
        name: str,
        connect: Callable[[], Any],
        handlers: dict[str, Callable[[Any, list], list]],
        classify: Callable[[BaseException], str | None],
        *,
        begin: Callable[[Any], None],
        commit: Callable[[Any], None],
        rollback: Callable[[Any], None],
        close: Callable[[Any], None] = lambda c: c.close(),
        probe: Callable[[Any], None] | None = None,
        probe_interval: float = 5.0,
        max_batch: int = 2000,
        buffer_limit: int = 10000,
        commit_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self._connect = connect
        self._handlers = handlers
        self._classify = classify
        self._begin = begin
        self._commit = commit
        self._rollback = rollback
        self._close = close
        self._probe = probe
        self._probe_interval = probe_interval
        self.max_batch = max_batch
        self.buffer_limit = buffer_limit
        self.commit_timeout = commit_timeout
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._backlog: collections.deque = collections.deque()  # writer thread only: drained while retrying
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopping = threading.Event()
        self._room = trio.lowlevel.ParkingLot()
        self._state_lot = trio.lowlevel.ParkingLot()
        # trio-side state (touched only from the trio thread)
        self.pending = 0
        self.ready = True
        self.reason = ""
        self.since = time.time()
        self.committed_batches = 0
        self.committed_ops = 0
        self._outage_started = 0.0
        self._thread_state = (True, "")  # touched only by the writer thread
        self._giving_up = ""  # writer thread: set when stopping during an outage

    # ------------------------------------------------------------------ trio side

    async def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        conn = await trio.to_thread.run_sync(self._connect)
        self._thread = threading.Thread(target=self._main, args=(conn,), name=f"kefu-{self.name}-writer", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Commit what is queued (or give up on it if the database stays away), then join."""
        if self._thread is None:
            return
        self._stopping.set()
        self._q.put(_STOP)
        await trio.to_thread.run_sync(self._thread.join)
        self._thread = None

    def health(self, backend: str, features: dict) -> Health:
        return Health(ready=self.ready, backend=backend, reason=self.reason, since=self.since,
                      pending=self.pending, buffer_limit=self.buffer_limit, features=dict(features))

    async def submit(self, kind: str, args: Any, *, wait: bool = True) -> Any:
        op = await self.enqueue(kind, args, waited=wait)
        if not wait:
            return None
        return await self.wait(op)

    async def enqueue(self, kind: str, args: Any, *, waited: bool = True) -> Op:
        """Queue one op and return it without waiting for its commit; ``wait(op)`` later.

        Ops commit in the order they were queued, so waiting for the last of several ops
        waits for all of them (each may still have failed on its own: see ``op.error``).
        ``waited`` False: nobody will wait for it (it never times out)."""
        if self._thread is None:
            raise StorageUnavailable(f"{self.name} store is not open")
        if self.pending >= self.buffer_limit:
            if not self.ready:
                raise StorageUnavailable(
                    f"{self.reason}; {self.pending} operations already buffered (limit {self.buffer_limit})")
            while self.pending >= self.buffer_limit and self.ready:  # backpressure while healthy
                await self._room.park()
            if not self.ready:
                raise StorageUnavailable(f"{self.reason}; buffer full ({self.buffer_limit})")
        op = Op(kind, args)
        self.pending += 1
        if waited:
            op.t0 = time.monotonic()
        self._q.put(op)
        return op

    def enqueue_nowait(self, kind: str, args: Any) -> Op:
        """``enqueue`` from synchronous code: never parks (no back-pressure; the caller bounds
        what it queues), refused with StorageUnavailable only while the buffer is over its
        limit because the database is failing."""
        if self._thread is None:
            raise StorageUnavailable(f"{self.name} store is not open")
        if self.pending >= self.buffer_limit and not self.ready:
            raise StorageUnavailable(f"{self.reason}; buffer full ({self.buffer_limit})")
        op = Op(kind, args)
        self.pending += 1
        op.t0 = time.monotonic()
        self._q.put(op)
        return op

    async def wait(self, op: Op) -> Any:
        """The result of a queued op once committed; its error (or StorageUnavailable after
        ``commit_timeout`` while the database is failing) raised."""
        if not op.done and not op.timed_out:
            op.task = trio.lowlevel.current_task()
            op.abandoned = False
            op.t0 = op.t0 or time.monotonic()

            def abort(_raise_cancel):
                op.abandoned = True
                op.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            return await trio.lowlevel.wait_task_rescheduled(abort)
        if op.timed_out and not op.done:
            raise StorageUnavailable(f"not committed within {self.commit_timeout:g} s: {self.reason}")
        err = op.error if op.error is not None else (op.result if isinstance(op.result, BaseException) else None)
        if err is not None:
            raise err
        return op.result

    def _time_out(self, ops: list[Op], reason: str) -> None:
        """Trio side: fail callers whose op waited ``commit_timeout`` (the op stays queued)."""
        err = f"not committed within {self.commit_timeout:g} s: {reason}"
        for op in ops:
            if op.task is not None and not op.abandoned:
                op.abandoned = True
                trio.lowlevel.reschedule(op.task, outcome.Error(StorageUnavailable(err)))

    def _complete(self, batch: list[Op]) -> None:
        self.pending -= len(batch)
        self.committed_batches += 1
        for op in batch:
            op.done = True
            if op.error is None:
                self.committed_ops += 1
            if op.task is not None and not op.abandoned:
                op.abandoned = True
                err = op.error if op.error is not None else (
                    op.result if isinstance(op.result, BaseException) else None)  # a handler's per-op refusal
                trio.lowlevel.reschedule(op.task, outcome.Error(err) if err is not None else outcome.Value(op.result))
        if self.pending < self.buffer_limit:
            self._room.unpark_all()

    def _set_state(self, ready: bool, reason: str) -> None:
        now = time.time()
        if ready and not self.ready:
            log.warning("%s storage recovered after %.1f s (%d operations were waiting); acknowledging again",
                        self.name, now - self._outage_started, self.pending)
        elif not ready and self.ready:
            self._outage_started = now
            log.error("%s storage unavailable: %s; not acknowledging, buffering up to %d operations in memory",
                      self.name, reason, self.buffer_limit)
        elif not ready and reason != self.reason:
            log.error("%s storage still unavailable: %s", self.name, reason)
        if ready != self.ready or reason != self.reason:
            self.since = now if ready != self.ready else self.since
            self.ready, self.reason = ready, reason
            if not ready:
                self._room.unpark_all()  # waiting submitters now fail fast
            self._state_lot.unpark_all()

    async def wait_ready(self, ready: bool = True) -> None:
        """Return once the writer's readiness equals ``ready`` (for /readyz watchers, tests)."""
        while self.ready != ready:
            await self._state_lot.park()

    # ------------------------------------------------------------------ thread side

    def _to_trio(self, fn, *args) -> None:
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:  # pragma: no cover - trio already gone
            pass

    def _main(self, conn) -> None:
        stop_seen = False
        backlog = self._backlog
        while True:
            if backlog:
                first = backlog.popleft()
            else:
                try:
                    first = self._q.get(timeout=self._probe_interval if self._probe else None)
                except queue.Empty:
                    conn = self._idle_probe(conn)
                    continue
            if first is _STOP:
                stop_seen = True
                first = self._next_nowait()
                if first is None or first is _STOP:
                    break
            batch = [first]
            while len(batch) < self.max_batch:
                op = self._next_nowait()
                if op is None:
                    break
                if op is _STOP:
                    stop_seen = True
                    continue
                batch.append(op)
            conn = self._commit_batch(conn, batch)
            self._to_trio(self._complete, batch)
            if stop_seen and not backlog and self._q.empty():
                break
        if conn is not None:
            try:
                self._close(conn)
            except Exception:  # noqa: BLE001
                pass

    def _next_nowait(self):
        if self._backlog:
            return self._backlog.popleft()
        try:
            return self._q.get_nowait()
        except queue.Empty:
            return None

    def _expire(self, batch: list[Op], reason: str) -> None:
        """While retrying: move queued ops into the backlog, time out every op that waited
        ``commit_timeout`` (in the failing batch or behind it)."""
        backlog = self._backlog
        while True:
            try:
                backlog.append(self._q.get_nowait())
            except queue.Empty:
                break
        now = time.monotonic()
        limit = self.commit_timeout
        late = [op for op in itertools.chain(batch, backlog)
                if op is not _STOP and op.t0 and not op.timed_out and now - op.t0 >= limit]
        for op in late:
            op.timed_out = True
        if late:
            self._to_trio(self._time_out, late, reason)

    def _idle_probe(self, conn):
        try:
            if conn is None:
                conn = self._connect()
            self._probe(conn)
            self._state(True, "")
        except Exception as e:  # noqa: BLE001
            reason = self._classify(e) or f"{type(e).__name__}: {e}"
            self._state(False, reason)
            conn = self._drop(conn)
        return conn

    def _state(self, ready: bool, reason: str) -> None:
        # posted to trio only on a change (seen from this thread), not once per batch
        if (ready, reason) != self._thread_state:
            self._thread_state = (ready, reason)
            self._to_trio(self._set_state, ready, reason)

    def _drop(self, conn):
        if conn is not None:
            try:
                self._close(conn)
            except Exception:  # noqa: BLE001
                pass
        return None

    def _run(self, conn, ops: list[Op]) -> None:
        self._begin(conn)
        for kind, group in itertools.groupby(ops, key=lambda o: o.kind):
            group = list(group)
            results = self._handlers[kind](conn, [o.args for o in group])
            for o, r in zip(group, results):
                o.result = r
        self._commit(conn)

    def _commit_batch(self, conn, batch: list[Op]):
        delay = 0.05
        stop_since = 0.0
        while True:
            if self._giving_up:  # stopping while the database is away: fail the rest at once
                for op in batch:
                    op.error = StorageUnavailable(f"{self._giving_up}; shutting down before it could commit")
                return conn
            try:
                if conn is None:
                    conn = self._connect()
                self._run(conn, batch)
                self._state(True, "")
                return conn
            except Exception as e:  # noqa: BLE001 - classified below
                reason = self._classify(e)
                if reason is None:
                    try:
                        self._rollback(conn)
                    except Exception:  # noqa: BLE001
                        conn = self._drop(conn)
                    return self._isolate(conn, batch)
                self._state(False, reason)
                try:
                    self._rollback(conn)
                except Exception:  # noqa: BLE001
                    conn = self._drop(conn)
                if self._stopping.is_set():  # one more second of retries, then give up
                    stop_since = stop_since or time.monotonic()
                    if time.monotonic() - stop_since > 1.0:
                        self._giving_up = reason
                        continue
                self._expire(batch, reason)
                time.sleep(delay)
                delay = min(delay * 2, 2.0, max(self.commit_timeout / 4, 0.05))

    def _isolate(self, conn, batch: list[Op]):
        for op in batch:
            op.error = None
            while True:
                try:
                    if conn is None:
                        conn = self._connect()
                    self._run(conn, [op])
                    break
                except Exception as e:  # noqa: BLE001
                    try:
                        self._rollback(conn)
                    except Exception:  # noqa: BLE001
                        conn = self._drop(conn)
                    reason = self._classify(e)
                    if reason is None:
                        op.error = e
                        break
                    # the database went away in the middle: retry this op like a batch
                    conn = self._commit_batch(conn, [op])
                    break
        return conn
