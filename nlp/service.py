"""The intent service: classification for trio code, off the event loop's core.

Shape: callers put requests on a bounded trio memory channel; ``workers`` batcher tasks
each take the first waiting request, keep collecting until they have ``batch_size`` of
them or ``max_wait_ms`` has passed, and hand the batch to a worker thread
(``trio.to_thread.run_sync`` under a ``CapacityLimiter`` of ``workers``) where
onnxruntime runs it sorted by length. onnxruntime releases the GIL while it computes, so
the worker threads use the cores the event loop does not: with ``workers`` batches in
flight the queue fills while they work and the next batches are full, so batching grows
with load and costs at most ``max_wait_ms`` when idle. The workers share one classifier
(onnxruntime sessions take concurrent ``run`` calls); each run uses the session's own
intra-op threads (``[nlp] threads``, 1 by default), so ``workers x threads`` threads
compute at most. ``default_workers`` sizes the pool from the CPU count: one core is left
to the event loop.

Back-pressure: when ``queue_size`` requests are waiting, ``classify`` waits for room
(the caller slows down) and ``classify_nowait`` raises ``Overloaded`` at once, counted in
``skipped`` (the desk then lets the message go on without an intent: the bot hands it
to a human with the reason ``classifier_busy``). Nothing is dropped silently.

Usage::

    async with trio.open_nursery() as nursery:
        service = await nursery.start(IntentService(classifier, workers=2).run)
        prediction = await service.classify("I lost my card")
"""

from __future__ import annotations

import math
import os
import time

import trio

from .classifier import IntentClassifier, Prediction


class Overloaded(Exception):
    """The request queue is full (``classify_nowait``)."""

    skip_reason = "classifier_busy"  # what the desk records when a message goes on without an intent


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(threads: int = 1, cpus: int | None = None) -> int:
    """Worker threads for ``[nlp] workers = 0``: every usable core but one (the event
    loop's), divided by onnxruntime's intra-op ``threads`` per run, and at least 1."""
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, (cpus - 1) // max(1, threads))


class ServiceClosed(Exception):
    """The service is not running (not started yet, or stopped)."""


class _Request:
    __slots__ = ("text", "enqueued", "done", "result", "error")

    def __init__(self, text: str) -> None:
        self.text = text
        self.enqueued = time.perf_counter()
        self.done = trio.Event()
        self.result: Prediction | None = None
        self.error: BaseException | None = None


class IntentService:
    def __init__(self, classifier: IntentClassifier, *, batch_size: int = 32, max_wait_ms: float = 2.0,
                 queue_size: int = 256, workers: int = 1) -> None:
        if batch_size < 1 or queue_size < 1 or max_wait_ms < 0 or workers < 1:
            raise ValueError("batch_size, queue_size and workers must be >= 1, max_wait_ms >= 0")
        self.classifier = classifier
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.workers = workers
        self._send: trio.MemorySendChannel | None = None
        self.batches = 0  # statistics, for metrics and tests
        self.messages = 0
        self.largest_batch = 0
        self.skipped = 0  # classify_nowait refusals: the queue was full
        self.busy = 0  # batches in worker threads now

    @classmethod
    def from_config(cls, nlp) -> "IntentService":
        """Build from an [nlp] config section; loads the model now (ModelError if it is unusable)."""
        from .classifier import from_config

        workers = nlp.workers or default_workers(nlp.threads)
        return cls(from_config(nlp), batch_size=nlp.batch_size, max_wait_ms=nlp.max_wait_ms,
                   queue_size=nlp.queue_size, workers=workers)

    @property
    def queued(self) -> int:
        return 0 if self._send is None else self._send.statistics().current_buffer_used

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        send, recv = trio.open_memory_channel(self.queue_size)
        self._send = send
        limiter = trio.CapacityLimiter(self.workers)
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self.workers):
                    nursery.start_soon(self._batch_loop, recv.clone(), limiter)
                task_status.started(self)
        finally:
            # Stop taking requests (callers blocked on a full queue get ServiceClosed), then
            # answer whatever is still queued: the service has stopped.
            self._send = None
            send.close()
            while True:
                try:
                    req = recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                req.error = ServiceClosed("intent service stopped")
                req.done.set()
            recv.close()

    async def _batch_loop(self, recv: trio.MemoryReceiveChannel, limiter: trio.CapacityLimiter) -> None:
        while True:
            first = await recv.receive()
            batch = [first]
            deadline = trio.current_time() + self.max_wait
            while len(batch) < self.batch_size:
                try:
                    batch.append(recv.receive_nowait())
                    continue
                except trio.WouldBlock:
                    pass
                if trio.current_time() >= deadline:
                    break
                with trio.move_on_at(deadline):
                    batch.append(await recv.receive())
            await self._run_batch(batch, limiter)

    async def _run_batch(self, batch: list[_Request], limiter: trio.CapacityLimiter) -> None:
        texts = [r.text for r in batch]
        self.busy += 1
        try:
            preds = await trio.to_thread.run_sync(self.classifier.classify_batch, texts, limiter=limiter)
        except Exception as e:  # one bad batch must not kill the service; each caller sees the error
            for r in batch:
                r.error = e
                r.done.set()
            return
        finally:
            self.busy -= 1
        self.batches += 1
        self.messages += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        now = time.perf_counter()
        for r, p in zip(batch, preds):
            r.result = Prediction(p.intent, p.confidence, p.out_of_scope, p.sentiment, p.sentiment_score,
                                  (now - r.enqueued) * 1000.0, p.source)
            r.done.set()

    def _request(self, text: str) -> _Request:
        if not isinstance(text, str):
            raise TypeError(f"expected text (str), got {type(text).__name__}")
        if self._send is None:
            raise ServiceClosed("intent service is not running; start it with nursery.start(service.run)")
        return _Request(text)

    async def _wait(self, req: _Request) -> Prediction:
        await req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    async def classify(self, text: str) -> Prediction:
        """Classify one message; waits for queue room when the service is saturated."""
        req = self._request(text)
        try:
            await self._send.send(req)
        except (trio.ClosedResourceError, trio.BrokenResourceError, AttributeError):
            raise ServiceClosed("intent service stopped") from None
        return await self._wait(req)

    async def classify_nowait(self, text: str) -> Prediction:
        """Classify one message, or raise ``Overloaded`` at once if the queue is full."""
        req = self._request(text)
        try:
            self._send.send_nowait(req)
        except trio.WouldBlock:
            self.skipped += 1
            raise Overloaded(f"intent queue full ({self.queue_size} waiting)") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError, AttributeError):
            raise ServiceClosed("intent service stopped") from None
        return await self._wait(req)

    async def classify_many(self, texts: list[str]) -> list[Prediction]:
        """Classify several messages concurrently (they share batches)."""
        out: list[Prediction | None] = [None] * len(texts)

        async def one(i: int, t: str) -> None:
            out[i] = await self.classify(t)

        async with trio.open_nursery() as n:
            for i, t in enumerate(texts):
                n.start_soon(one, i, t)
        return out  # type: ignore[return-value]


def stats(service: IntentService) -> dict[str, float]:
    mean = service.messages / service.batches if service.batches else math.nan
    return {"batches": service.batches, "messages": service.messages, "mean_batch": mean,
            "largest_batch": service.largest_batch, "queued": service.queued, "workers": service.workers,
            "busy": service.busy, "skipped": service.skipped}
