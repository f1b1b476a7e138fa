"""Property: whatever customers and agents do, a crash between any two actions loses nothing.

Random sequences of customer messages, agent presence, replies, notes, resolves, transfers,
pickups, labels, ratings and the clock moving on (offer timeouts, reopen windows) run against
a Desk on ``DurableStore(MemoryStore(), SQLite)``. Between actions the process "crashes":
the desk and its live state are thrown away and rebuilt from the SQLite file alone
(``kefu.record.restore``). After every crash the rebuilt desk holds exactly what the old
one held -- conversations (with queue order and assignments), transcripts, tickets and
contacts -- except what a restart changes on purpose (agents are offline; offers nobody
accepted are back at the front of their queue), every message an action returned for is
in its conversation, and ids continue (never reused).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kefu.config import from_dict
from kefu.conversations import Status
from kefu.desk import Desk
from kefu.errors import DeskError
from kefu.record import DurableStore, restore
from kefu.state import MemoryStore
from kefu.storage import open_store

from .conftest import keyword_classifier, small_settings

CUSTOMERS = ["ann", "ben", "cat"]
AGENTS = ["alice", "bob"]
TEXTS = ["hello", "talk to a human", "my card was stolen", "when will my card arrive?", "thanks"]

action = st.one_of(
    st.tuples(st.just("say"), st.sampled_from(CUSTOMERS), st.sampled_from(["main", "web"]), st.sampled_from(TEXTS)),
    st.tuples(st.just("online"), st.sampled_from(AGENTS)),
    st.tuples(st.just("offline"), st.sampled_from(AGENTS)),
    st.tuples(st.sampled_from(["reply", "note", "resolve", "accept", "pickup", "labels", "transfer"]),
              st.sampled_from(AGENTS), st.integers(0, 5)),
    st.tuples(st.just("rate"), st.sampled_from(CUSTOMERS), st.integers(1, 5)),
    st.tuples(st.just("wait"), st.sampled_from([5.0, 40.0, 700.0])),
    st.tuples(st.just("crash")),
)


async def _view(store) -> dict:
    convs = {c.id: c for c in await store.conversations()}
    return {
        "conversations": convs,
        "messages": {cid: await store.messages(cid, limit=10_000) for cid in convs},
        "tickets": {t.id: t for t in await store.tickets()},
        "contacts": {c.id: c for c in await store.contacts()},
        "waiting": [c.id for c in await store.waiting()],
    }


class World:
    def __init__(self, path: Path) -> None:
        self.cfg = from_dict({"storage": {"backend": "sqlite", "path": str(path)}}).storage
        self.clock = 1_000_000.0
        self.said: dict[str, list[str]] = {}  # conversation id -> customer texts that returned
        self.seen_ids: set[str] = set()

    def now(self) -> float:
        return self.clock

    async def run(self, actions) -> None:
        while True:
            async with open_store(self.cfg, background=False) as sql:
                async with trio.open_nursery() as nursery:
                    store = DurableStore(MemoryStore(), sql)
                    await restore(store, self.now())
                    desk = Desk(small_settings(accept_timeout=30.0, reopen_window=600.0), store=store,
                                classify=keyword_classifier, clock=self.now)
                    await desk.setup()
                    await self.check_restored(store)
                    crashed = False
                    while actions:
                        a = actions.pop(0)
                        if a[0] == "crash":
                            crashed = True
                            break
                        await self.step(desk, store, a)
                    self.before = await _view(store)
                    nursery.cancel_scope.cancel()
            if not crashed:
                return

    async def check_restored(self, store) -> None:
        after = await _view(store)
        for cid, texts in self.said.items():
            got = [m.text for m in after["messages"][cid] if m.sender == "customer"]
            assert got == texts, (cid, got, texts)
        before = getattr(self, "before", None)
        if before is None:
            return
        assert after["messages"] == before["messages"]
        assert after["tickets"] == before["tickets"]
        assert after["contacts"] == before["contacts"]
        assert after["conversations"].keys() == before["conversations"].keys()
        for cid, b in before["conversations"].items():
            a = after["conversations"][cid]
            if b.status == Status.ASSIGNED and b.accept_deadline is not None:  # offered, never accepted
                assert a.status == Status.QUEUED and a.requeued and a.assignee is None, (a, b)
                assert replace(a, status=b.status, requeued=b.requeued, assignee=b.assignee,
                               last_assignee=b.last_assignee, offered_at=b.offered_at,
                               accept_deadline=b.accept_deadline, updated_at=b.updated_at, version=b.version) == b
            else:
                assert a == b
        requeued = [c for c in after["waiting"] if c not in before["waiting"]]
        assert [c for c in after["waiting"] if c in before["waiting"]] == before["waiting"]  # same order
        assert all(after["conversations"][c].requeued for c in requeued)
        for a in await store.agents():
            assert a.status.value == "offline"

    async def step(self, desk: Desk, store, a) -> None:
        kind = a[0]
        try:
            if kind == "say":
                _, who, thread, text = a
                res = await desk.customer_message("chat", who, text, thread=thread)
                cid = res["conversation"]["id"]
                if res["message"]["seq"] == 1:
                    assert cid not in self.seen_ids, f"{cid} handed out twice"
                self.seen_ids.add(cid)
                self.said.setdefault(cid, []).append(text)
            elif kind == "online":
                await desk.agent_connected(a[1])
            elif kind == "offline":
                await desk.agent_disconnected(a[1])
            elif kind == "rate":
                await desk.customer_event(a[1], "main", "csat", rating=a[2])
            elif kind == "wait":
                self.clock += a[1]
                await desk.fire_due(self.now())
            else:
                _, agent, n = a
                mine = await store.assigned_to(agent)
                waiting = await store.waiting()
                if kind == "pickup":
                    if waiting:
                        await desk.agent_action(agent, "pickup", waiting[n % len(waiting)].id)
                    return
                if not mine:
                    return
                conv = mine[n % len(mine)].id
                if kind in ("reply", "note"):
                    await desk.agent_action(agent, kind, conv, text=f"{kind} {n}")
                elif kind == "transfer":
                    other = [x for x in AGENTS if x != agent][0]
                    await desk.agent_action(agent, "transfer", conv, agent=other)
                elif kind == "labels":
                    await desk.agent_action(agent, "labels", conv, labels=[f"l{n}"])
                else:
                    await desk.agent_action(agent, kind, conv)
        except DeskError:
            pass  # a refused command (wrong state, not assigned, ...) changes nothing


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(action, min_size=5, max_size=40))
def test_a_crash_between_any_two_actions_loses_nothing(actions):
    with tempfile.TemporaryDirectory() as d:
        trio.run(World(Path(d) / "kefu.db").run, list(actions) + [("crash",)])
