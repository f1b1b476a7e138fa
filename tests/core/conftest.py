"""Helpers for the desk's tests: a keyword classifier, a recording publisher, small settings."""

from __future__ import annotations

import json
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import trio

from kefu.agents import Agent
from kefu.bot import Answer, Answers
from kefu.desk import Desk
from kefu.routing import Route, Router, Rule
from kefu.settings import DeskSettings
from kefu.state import MemoryStore

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Pred:
    intent: str | None
    confidence: float = 0.95
    out_of_scope: bool = False
    sentiment: str = "neutral"


KEYWORDS = [
    ("stolen", "lost_or_stolen_card"),
    ("arrive", "card_arrival"),
    ("exchange rate", "exchange_rate"),
    ("top up limit", "top_up_limits"),
    ("charged twice", "transaction_charged_twice"),
]


def keyword_classifier(text: str) -> Pred:
    """Stands in for the intent model: fixed keywords, everything else low confidence."""
    t = text.lower()
    senti = "negative" if any(w in t for w in ("angry", "terrible", "useless")) else "neutral"
    for kw, intent in KEYWORDS:
        if kw in t:
            return Pred(intent, 0.95, False, senti)
    if "weather" in t:
        return Pred("weather", 0.9, True, senti)
    return Pred("card_not_working", 0.2, False, senti)


class Recorder:
    """A publisher that keeps every (topic, payload) and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict]] = []
        self._changed = trio.Event()

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.items.append((topic, json.loads(payload)))
        self._changed.set()
        self._changed = trio.Event()

    def on(self, topic: str) -> list[dict]:
        return [p for t, p in self.items if t == topic]

    def texts(self, topic: str) -> list[str]:
        return [p["message"]["text"] for p in self.on(topic) if p.get("type") == "message"]

    async def wait_for(self, pred, timeout: float = 5.0) -> dict:
        with trio.fail_after(timeout):
            while True:
                for t, p in self.items:
                    if pred(t, p):
                        return p
                await self._changed.wait()


def small_settings(**kw) -> DeskSettings:
    base = DeskSettings(
        router=Router(
            [
                Rule("lost-card", "vip", 0, "human", intent=("lost_or_stolen_card",)),
                Rule("twice", "general", 1, "human", intent=("transaction_charged_twice",)),
            ],
            Route("(default)", "general", 2, "bot"),
        ),
        teams={"general": "General", "vip": "VIP"},
        agents=(
            Agent("alice", "Alice", frozenset({"general"}), capacity=2),
            Agent("bob", "Bob", frozenset({"general"}), capacity=2),
            Agent("vera", "Vera", frozenset({"vip"}), capacity=2, tier=2),
        ),
        answers=Answers(
            {"days": "3-5"},
            {
                "card_arrival": Answer("Cards arrive in {days} days, {contact.name|friend}.", "Still waiting? Ask for a human."),
                "exchange_rate": Answer("We use the interbank rate."),
            },
        ),
        accept_timeout=30.0,
        agent_keepalive=0.0,
        reopen_window=600.0,
    )
    return replace(base, **kw)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_desk(recorder):
    def make(**kw) -> Desk:
        classify = kw.pop("classify", keyword_classifier)
        return Desk(small_settings(**kw), classify=classify, publish=recorder)

    return make


@asynccontextmanager
async def redis_desk_store(url: str):
    """A RedisDeskStore under a key prefix of its own, deleted afterwards."""
    from kefu.state_redis import RedisDeskStore

    s = await RedisDeskStore(url, prefix=f"kefu-test:{uuid.uuid4().hex[:12]}:desk:").open()
    try:
        yield s
    finally:
        with trio.CancelScope(shield=True):
            await s.delete_all()
            await s.close()


@pytest.fixture(params=["memory", "redis"])
def store_url(request) -> str | None:
    """None for the in-memory store, else the Redis URL (skips locally when Redis is missing)."""
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.fixture
async def store(store_url):
    """Each DeskStore implementation in turn: the contract tests run over both."""
    if store_url is None:
        yield MemoryStore()
        return
    async with redis_desk_store(store_url) as s:
        yield s
