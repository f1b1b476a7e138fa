"""/chat over a real socket: a visitor's message is acknowledged once it is stored, while
the bot's answer waits for a classifier that is stuck (the encoder is a test double held
at a gate; the intent service, classifier heads, desk and bridge are real)."""

from __future__ import annotations

import threading

import numpy as np
import trio
from trio_websocket import open_websocket_url

from bridge_stack import ChatClient, desk_settings, kefu_stack
from kefu.bot import Answer, Answers
from kefu.nlp.classifier import IntentClassifier
from kefu.nlp.encoder import ModelInfo
from kefu.nlp.service import IntentService


class HeldEncoder:
    """Stands in for ``kefu.nlp.encoder.Encoder``: every text is card_arrival, once ``gate`` opens."""

    has_exit = False
    neighbours = None

    def __init__(self) -> None:
        self.info = ModelInfo(folder=None, labels=["card_arrival", "other"], temperature=1.0, oos_threshold=0.5,
                              max_length=64)
        self.gate = threading.Event()

    def run(self, texts, max_batch: int = 64):
        assert self.gate.wait(30), "the test never opened the gate"
        logits = np.zeros((len(texts), 2), dtype=np.float32)
        logits[:, 0] = 12.0
        return logits, np.zeros((len(texts), 4), dtype=np.float32)


async def test_the_ack_never_waits_for_the_classifier():
    enc = HeldEncoder()
    service = IntentService(IntentClassifier(enc), workers=1)
    settings = desk_settings(answers=Answers({}, {"card_arrival": Answer("Cards arrive in 3-5 days.")}))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            async with kefu_stack(settings=settings, classify=service.classify_nowait) as st:
                async with open_websocket_url(st.ws + "/chat") as conn:
                    visitor = ChatClient(conn)
                    await visitor.send({"type": "auth", "role": "visitor", "site": "demo"})
                    await visitor.until(lambda f: f["type"] == "ready")
                    await visitor.send({"type": "message", "text": "when will my card arrive?", "ref": "m1"})
                    # The gate is shut: this ack can only come if the message did not wait for the bot.
                    ack = await visitor.until(lambda f: f["type"] in ("ack", "error"))
                    assert (ack["type"], ack["ref"], ack["message"]["text"]) == ("ack", "m1", "when will my card arrive?")
                    assert not [f for f in visitor.seen if f["type"] == "message"
                                and f["message"]["author"]["kind"] == "bot"]
                    enc.gate.set()
                    answer = await visitor.until(lambda f: f["type"] == "message"
                                                 and f["message"]["author"]["kind"] == "bot")
                    assert answer["message"]["text"] == "Cards arrive in 3-5 days."
            nursery.cancel_scope.cancel()
    finally:
        enc.gate.set()
