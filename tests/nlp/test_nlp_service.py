"""The trio intent service: micro-batching, back-pressure, start/stop, never blocking the loop.

The real classifier runs underneath. To make batching observable without sleeps, the
worker can be held at a gate (a threading.Event the test opens): requests that arrive
while a batch is in the worker thread pile up in the queue and must leave together.
"""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from kefu.nlp.service import IntentService, Overloaded, ServiceClosed
from model_checks import assert_same_decisions, final_probs, single_probs


class Gated:
    """Wraps the real classifier; while ``hold`` is set, a batch waits for ``release``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def classify_batch(self, texts):
        self.batches.append(list(texts))
        if self.hold:
            self.entered.set()
            self.release.wait(30)
        return self.inner.classify_batch(texts)


async def _until_in_worker(gate: Gated) -> None:
    await trio.to_thread.run_sync(gate.entered.wait, 30)
    await trio.testing.wait_all_tasks_blocked()


class Answers:
    """Collects answers by key; ``wait(n)`` returns once n have arrived."""

    def __init__(self) -> None:
        self.got: dict = {}
        self._changed = trio.Event()

    def put(self, key, value) -> None:
        self.got[key] = value
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self, n: int) -> None:
        while len(self.got) < n:
            await self._changed.wait()


async def test_started_service_classifies(classifier):
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(classifier).run)
            p = await service.classify("I lost my card")
            assert p.intent == "lost_or_stolen_card" and p.latency_ms > 0
            nursery.cancel_scope.cancel()


async def test_requests_arriving_during_a_batch_share_the_next_one(classifier):
    gate = Gated(classifier)
    gate.hold = True
    texts = ["I lost my card", "What exchange rate do you use?", "My top-up didn't go through",
             "I was charged twice for the same purchase"] * 3
    answers = Answers()
    results = answers.got
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(gate, batch_size=32, max_wait_ms=0).run)

            async def ask(i: int, text: str) -> None:
                answers.put(i, await service.classify(text))

            nursery.start_soon(ask, -1, "hello")
            await _until_in_worker(gate)  # the first batch (one message) is in the worker
            for i, t in enumerate(texts):
                nursery.start_soon(ask, i, t)
            await trio.testing.wait_all_tasks_blocked()
            assert service.queued == len(texts)
            gate.hold = False
            gate.release.set()
            await answers.wait(len(texts) + 1)
            nursery.cancel_scope.cancel()
    assert [len(b) for b in gate.batches] == [1, len(texts)]
    assert service.largest_batch == len(texts)
    # Each caller gets the answer to its own message: exactly what the classifier gives for
    # that row of the batch the service ran (the same run), and up to near ties between
    # labels what it gives for the message alone (another run, see model_checks).
    batch = gate.batches[1]
    assert sorted(batch) == sorted(texts)
    ran = final_probs(classifier, batch)[0]
    answer = {t: classifier.head.labels[k] for t, k in zip(batch, ran.argmax(1))}
    assert [results[i].intent for i in range(len(texts))] == [answer[t] for t in texts]
    assert_same_decisions(ran, single_probs(classifier, batch), classifier.head.labels, batch)


async def test_batch_size_caps_a_batch(classifier):
    gate = Gated(classifier)
    gate.hold = True
    answers = Answers()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(gate, batch_size=4, max_wait_ms=0).run)

            async def ask(text: str) -> None:
                answers.put(text, await service.classify(text))

            nursery.start_soon(ask, "first")
            await _until_in_worker(gate)
            for i in range(10):
                nursery.start_soon(ask, f"message {i}")
            await trio.testing.wait_all_tasks_blocked()
            gate.hold = False
            gate.release.set()
            await answers.wait(11)
            nursery.cancel_scope.cancel()
    assert [len(b) for b in gate.batches] == [1, 4, 4, 2]


async def test_full_queue_pushes_back(classifier):
    gate = Gated(classifier)
    gate.hold = True
    answers = Answers()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(gate, batch_size=8, max_wait_ms=0, queue_size=3).run)

            async def ask(text: str) -> None:
                intent = (await service.classify(text)).intent
                answers.put(len(answers.got), intent)

            nursery.start_soon(ask, "I lost my card")
            await _until_in_worker(gate)
            for _ in range(3):
                nursery.start_soon(ask, "I lost my card")
            await trio.testing.wait_all_tasks_blocked()
            assert service.queued == 3
            with pytest.raises(Overloaded):
                await service.classify_nowait("one too many")
            # A blocking caller waits for room instead of failing or being dropped.
            nursery.start_soon(ask, "What exchange rate do you use?")
            await trio.testing.wait_all_tasks_blocked()
            assert len(answers.got) == 0 and service.queued == 3
            gate.hold = False
            gate.release.set()
            await answers.wait(5)
            nursery.cancel_scope.cancel()
    finished = list(answers.got.values())
    assert finished.count("lost_or_stolen_card") == 4 and finished.count("exchange_rate") == 1
    assert [len(b) for b in gate.batches] == [1, 4]  # the waiting sender joined the next batch


async def test_a_lone_message_does_not_wait_for_a_full_batch(classifier):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(classifier, batch_size=64, max_wait_ms=2).run)
            p = await service.classify("My card still hasn't arrived")
            assert p.intent == "card_arrival"
            nursery.cancel_scope.cancel()
    assert service.largest_batch == 1


async def test_many_concurrent_callers_get_their_own_answers(classifier):
    texts = ["I lost my card", "What exchange rate do you use?", "How do I reset my passcode?"] * 20
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(classifier, batch_size=16).run)
            preds = await service.classify_many(texts)
            nursery.cancel_scope.cancel()
    expect = {"I lost my card": "lost_or_stolen_card", "What exchange rate do you use?": "exchange_rate",
              "How do I reset my passcode?": "passcode_forgotten"}
    assert [p.intent for p in preds] == [expect[t] for t in texts]
    assert service.messages == len(texts) and service.batches < len(texts)


async def test_not_started_and_stopped_service_refuse_clearly(classifier):
    service = IntentService(classifier)
    with pytest.raises(ServiceClosed):
        await service.classify("hello")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            nursery.cancel_scope.cancel()
    with pytest.raises(ServiceClosed):
        await service.classify("hello")


async def test_stopping_answers_the_batch_in_flight_and_refuses_the_queued(classifier):
    gate = Gated(classifier)
    gate.hold = True
    answers = Answers()
    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as svc_nursery:
                service = await svc_nursery.start(IntentService(gate, max_wait_ms=0, queue_size=1).run)

                async def ask(key: str) -> None:
                    try:
                        answers.put(key, (await service.classify("I lost my card")).intent)
                    except ServiceClosed as e:
                        answers.put(key, e)

                outer.start_soon(ask, "in flight")
                await _until_in_worker(gate)
                outer.start_soon(ask, "queued")
                await trio.testing.wait_all_tasks_blocked()
                outer.start_soon(ask, "waiting for room")
                await trio.testing.wait_all_tasks_blocked()
                assert service.queued == 1
                svc_nursery.cancel_scope.cancel()
                gate.release.set()  # the worker finishes the batch it holds
            await answers.wait(3)
    assert answers.got["in flight"] == "lost_or_stolen_card"
    assert isinstance(answers.got["queued"], ServiceClosed)
    assert isinstance(answers.got["waiting for room"], ServiceClosed)


async def test_bad_input_is_refused_at_the_door(classifier):
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            service = await nursery.start(IntentService(classifier).run)
            with pytest.raises(TypeError):
                await service.classify(None)  # type: ignore[arg-type]
            nursery.cancel_scope.cancel()


async def test_from_config_uses_the_nlp_section():
    from kefu.config import from_dict

    cfg = from_dict({"nlp": {"batch_size": 7, "max_wait_ms": 1, "queue_size": 9, "sentiment": "off"}})
    service = IntentService.from_config(cfg.nlp)
    assert (service.batch_size, service.max_wait, service.queue_size) == (7, 0.001, 9)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            p = await service.classify("This is awful!")
            assert p.sentiment == "neutral"  # sentiment = "off"
            nursery.cancel_scope.cancel()


def test_worker_pool_size_from_config():
    from kefu.config.model import Nlp
    from kefu.nlp.service import default_workers

    assert IntentService.from_config(Nlp(workers=3)).workers == 3
    assert IntentService.from_config(Nlp(workers=0, threads=1)).workers == default_workers(1)
