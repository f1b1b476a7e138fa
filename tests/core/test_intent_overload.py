"""The classifier falls behind: customers' messages still reach agents at once, the bot's
answer is what waits, and a message the intent queue has no room for skips classification
with a counted reason.

Real desk, real intent service, real classifier heads and /metrics; only the encoder (the
onnxruntime part) is a test double, held at a gate (a threading.Event the test opens) so
that "the worker is busy" is a state, not a timing.
"""

from __future__ import annotations

import threading

import numpy as np
import trio
import trio.testing

from kefu.metrics import Metrics
from kefu.nlp.classifier import IntentClassifier
from kefu.nlp.encoder import ModelInfo
from kefu.nlp.service import IntentService, default_workers

from .conftest import small_settings

OUT = "kefu/c/{}/main/out"
INBOX = "kefu/agent/{}/inbox"
LABELS = ["card_arrival", "exchange_rate", "card_not_working"]


class GatedEncoder:
    """Stands in for ``kefu.nlp.encoder.Encoder``: a confident logit per keyword; while
    ``hold`` is set, every run waits in its worker thread for ``release``."""

    has_exit = False
    neighbours = None
    embedding_dim = 4

    def __init__(self) -> None:
        self.info = ModelInfo(folder=None, labels=LABELS, temperature=1.0, oos_threshold=0.5, max_length=64)
        self.hold = False
        self.entered = threading.Semaphore(0)  # released once per run that reaches the gate
        self.release = threading.Event()
        self.runs = 0
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0

    @property
    def labels(self) -> list[str]:
        return LABELS

    def run(self, texts, max_batch: int = 64):
        with self._lock:
            self.runs += 1
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.hold:
                self.entered.release()
                assert self.release.wait(30), "the test never opened the gate"
            logits = np.zeros((len(texts), len(LABELS)), dtype=np.float32)
            for i, t in enumerate(texts):
                k = 0 if "arrive" in t else 1 if "exchange" in t else 2
                logits[i, k] = 12.0
            return logits, np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        finally:
            with self._lock:
                self.inside -= 1


async def _in_worker(enc: GatedEncoder, runs: int = 1) -> None:
    """Return once ``runs`` more runs wait at the gate and every trio task is blocked."""
    for _ in range(runs):
        assert await trio.to_thread.run_sync(enc.entered.acquire, True, 30)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_stuck_classifier_holds_only_the_bots_answers(recorder):
    from kefu.desk import Desk

    enc = GatedEncoder()
    service = IntentService(IntentClassifier(enc), workers=1, queue_size=2, batch_size=1, max_wait_ms=0)
    metrics = Metrics(process=False)
    metrics.attach_intent(service)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            desk = Desk(small_settings(accept_timeout=0.0), publish=recorder,
                        classify=metrics.instrument_classifier(service.classify_nowait))
            metrics.attach_desk(desk)
            await nursery.start(desk.run)
            await desk.agent_connected("alice")
            ann = (await desk.customer_message("mqtt", "ann", "human please"))["conversation"]
            assert ann["assignee"] == "alice"

            enc.hold = True
            # Ben asks the bot; his message is stored at once, his answer waits in the worker.
            await desk.ingest("kefu/c/ben/main/in", b"when will my card arrive?")
            await _in_worker(enc)
            ben = await desk.open_conversation_of("ben", "main")
            msgs, _ = await desk.messages(ben["id"])
            assert [m["text"] for m in msgs] == ["when will my card arrive?"]
            assert not [p for p in recorder.on(OUT.format("ben")) if p.get("type") == "message"
                        and p["message"]["author"]["kind"] == "bot"]  # no answer yet

            # Ann's conversation is with Alice: her message reaches Alice while the classifier is stuck.
            await desk.ingest("kefu/c/ann/main/in", b"it still does not work")
            assert recorder.texts(INBOX.format("alice"))[-1] == "it still does not work"

            # Two more bot questions fill the intent queue (queue_size 2) ...
            for who in ("cat", "dan"):
                await desk.ingest(f"kefu/c/{who}/main/in", b"what exchange rate do you use?")
            await trio.testing.wait_all_tasks_blocked()
            assert service.queued == 2
            # ... so Eve's skips classification: the bot hands her to a human, who has her at once.
            await desk.ingest("kefu/c/eve/main/in", b"what exchange rate do you use?")
            await trio.testing.wait_all_tasks_blocked()
            eve = await desk.open_conversation_of("eve", "main")
            assert (eve["status"], eve["assignee"], eve["handoff_reason"]) == ("assigned", "alice", "classifier_busy")
            assert service.skipped == 1
            text = metrics.exposition()[0].decode()
            assert 'kefu_messages_rejected_total{reason="intent_overloaded"} 1.0' in text
            assert 'kefu_bot_handoffs_total{reason="classifier_busy"} 1.0' in text
            assert "kefu_intent_workers 1.0" in text and "kefu_intent_workers_busy 1.0" in text

            # The worker comes back: the waiting questions get the bot's answers, in order.
            enc.release.set()
            await desk.turns_settled()
            assert recorder.texts(OUT.format("ben"))[-1] == "Cards arrive in 3-5 days, friend."
            for who in ("cat", "dan"):
                assert recorder.texts(OUT.format(who))[-1] == "We use the interbank rate."
            assert enc.runs == 4  # ann, ben, cat, dan: eve was never classified
            nursery.cancel_scope.cancel()


async def test_workers_run_batches_side_by_side():
    enc = GatedEncoder()
    enc.hold = True
    service = IntentService(IntentClassifier(enc), workers=3, batch_size=1, max_wait_ms=0)
    got = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)

            async def ask(text: str) -> None:
                got.append((await service.classify(text)).intent)

            async with trio.open_nursery() as asking:
                for t in ("card arrive?", "exchange rate?", "broken", "card arrive again?"):
                    asking.start_soon(ask, t)
                # three batches in three threads at once; the fourth waits for a free worker
                await _in_worker(enc, runs=3)
                assert (enc.inside, service.busy, service.queued) == (3, 3, 1)
                enc.release.set()
            assert enc.most_inside == 3 and enc.runs == 4
            assert sorted(got) == ["card_arrival", "card_arrival", "card_not_working", "exchange_rate"]
            nursery.cancel_scope.cancel()


def test_pool_size_comes_from_config_or_the_cpu_count():
    from kefu.config.model import Nlp

    assert [default_workers(1, cpus=n) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert default_workers(threads=2, cpus=8) == 3  # workers x threads stays within the cores
    assert Nlp().workers == 0  # the default: sized from the CPU count at start-up
    assert IntentService(IntentClassifier(GatedEncoder()), workers=5).workers == 5
