"""Property test: no conversation is ever assigned twice or lost from a queue.

Hypothesis drives the real Desk (in-memory store, fake clock) with random customers,
agents going online/away/offline or dropping their connection, offers accepted or
left to time out, pickups, transfers, resolutions and reopening messages. After every
step the store and the published event stream are checked against the invariants:

* every conversation is in exactly one place: waiting in its team's queue, held by
  exactly one agent, or with the bot / resolved / closed -- and the queue and load
  indexes agree with the records;
* the event stream never hands a conversation to an agent while another holds it, and
  every release names the holder it released;
* no agent holds more than its capacity; an offline agent holds nothing;
* the assignment is work-conserving: nothing waits while an eligible agent is free;
* each queue is ordered by priority, requeued first, then FIFO.
"""

from __future__ import annotations

import json

import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kefu.agents import Agent, AgentStatus
from kefu.conversations import Conversation, Status
from kefu.desk import Desk
from kefu.errors import DeskError
from kefu.routing import plan

from .conftest import keyword_classifier, small_settings

AGENTS = ("alice", "bob", "vera", "max")
TEXTS = ("I want a human please", "my card was stolen", "when will my card arrive", "charged twice!")


def sync(coro):
    """Run a coroutine that never suspends (the in-memory store's reads) without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the in-memory store awaited something")


class Sink:
    def __init__(self) -> None:
        self.events: list[dict] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        if topic == "kefu/desk/events":
            self.events.append(json.loads(payload))


class DeskMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.t = 1_000_000.0
        self.sink = Sink()
        agents = (
            Agent("alice", "Alice", frozenset({"general"}), capacity=2),
            Agent("bob", "Bob", frozenset({"general"}), capacity=1),
            Agent("vera", "Vera", frozenset({"vip", "general"}), capacity=2, tier=2),
            Agent("max", "Max", frozenset({"vip"}), capacity=1),
        )
        self.desk = Desk(small_settings(agents=agents, accept_timeout=30.0, reopen_window=100.0),
                         classify=keyword_classifier, publish=self.sink, clock=lambda: self.t)
        self.customers = 0
        self.seen_events = 0
        self.holder: dict[str, str | None] = {}
        self.convs: set[str] = set()

    def run(self, fn, *args, **kw):
        async def main():
            try:
                return await fn(*args, **kw)
            except DeskError:
                return None  # refused commands (not yours, illegal now...) are part of the game

        return trio.run(main)

    def all_convs(self) -> list[Conversation]:
        return sync(self.desk.store.conversations())

    def pick_conv(self, data, status=None) -> str | None:
        convs = [c.id for c in self.all_convs() if status is None or c.status == status]
        return data.draw(st.sampled_from(sorted(convs))) if convs else None

    # --- customers ---------------------------------------------------------------------
    @rule(text=st.sampled_from(TEXTS))
    def new_customer(self, text):
        self.customers += 1
        r = self.run(self.desk.customer_message, "chat", f"cust{self.customers}", text)
        self.convs.add(r["conversation"]["id"])

    @rule(data=st.data(), text=st.sampled_from(TEXTS + ("thanks",)))
    def customer_writes_again(self, data, text):
        cid = self.pick_conv(data)
        if cid is None:
            return
        conv = sync(self.desk.store.conversation(cid))
        r = self.run(self.desk.customer_message, "chat", conv.customer_id, text)
        self.convs.add(r["conversation"]["id"])

    # --- agents ------------------------------------------------------------------------
    @rule(agent=st.sampled_from(AGENTS), status=st.sampled_from(["online", "away", "offline"]))
    def set_status(self, agent, status):
        self.run(self.desk.agent_action, agent, "status", status=status)

    @rule(agent=st.sampled_from(AGENTS))
    def connect(self, agent):
        self.run(self.desk.agent_connected, agent)

    @rule(agent=st.sampled_from(AGENTS))
    def connection_drops(self, agent):
        if self.desk._held.get(agent):
            self.run(self.desk.agent_disconnected, agent)

    @rule(data=st.data(), agent=st.sampled_from(AGENTS))
    def accept(self, data, agent):
        cid = self.pick_conv(data, Status.ASSIGNED)
        if cid:
            self.run(self.desk.agent_action, agent, "accept", cid)

    @rule(data=st.data(), agent=st.sampled_from(AGENTS))
    def reply(self, data, agent):
        cid = self.pick_conv(data, Status.ASSIGNED)
        if cid:
            self.run(self.desk.agent_action, agent, "reply", cid, text="hello")

    @rule(data=st.data(), agent=st.sampled_from(AGENTS))
    def resolve(self, data, agent):
        cid = self.pick_conv(data)
        if cid:
            self.run(self.desk.agent_action, agent, "resolve", cid)

    @rule(data=st.data(), agent=st.sampled_from(AGENTS))
    def pickup(self, data, agent):
        cid = self.pick_conv(data, Status.QUEUED)
        if cid:
            self.run(self.desk.agent_action, agent, "pickup", cid)

    @rule(data=st.data(), agent=st.sampled_from(AGENTS), to=st.sampled_from(AGENTS + ("team:general", "team:vip")))
    def transfer(self, data, agent, to):
        cid = self.pick_conv(data, Status.ASSIGNED)
        if not cid:
            return
        arg = {"team": to[5:]} if to.startswith("team:") else {"agent": to}
        self.run(self.desk.agent_action, agent, "transfer", cid, **arg)

    @rule(data=st.data(), to=st.sampled_from(AGENTS))
    def operator_assigns(self, data, to):
        cid = self.pick_conv(data, Status.QUEUED)
        if cid:
            self.run(self.desk.agent_action, None, "assign", cid, agent=to)

    @rule(dt=st.sampled_from([1.0, 10.0, 29.0, 31.0, 120.0]))
    def time_passes(self, dt):
        self.t += dt
        trio.run(self.desk.fire_due)

    # --- invariants ------------------------------------------------------------------------
    @invariant()
    def event_stream_never_assigns_twice(self):
        if not hasattr(self, "sink"):
            return
        for ev in self.sink.events[self.seen_events:]:
            if ev["event"] != "conversation_status_changed":
                continue
            d = ev["data"]
            cid = d["conversation"]["id"]
            held = self.holder.get(cid)
            if d["from"] == "assigned":
                assert d["previous_assignee"] == held, f"{cid} released from {d['previous_assignee']}, held by {held}"
                held = None
            else:
                assert held is None, f"{cid} moved {d['from']}->{d['to']} while held by {held}"
            if d["to"] == "assigned":
                assert held is None
                held = d["conversation"]["assignee"]
                assert held
            self.holder[cid] = held
        self.seen_events = len(self.sink.events)

    @invariant()
    def every_conversation_in_exactly_one_place(self):
        if not hasattr(self, "desk"):
            return
        store = self.desk.store
        convs = {c.id: c for c in self.all_convs()}
        assert self.convs <= set(convs)  # nothing vanished
        waiting = sync(store.waiting())
        assert len({c.id for c in waiting}) == len(waiting)
        assert {c.id for c in waiting} == {c.id for c in convs.values() if c.status == Status.QUEUED}
        agents = {a.id: a for a in sync(store.agents())}
        held_total = []
        for a in agents.values():
            mine = sync(store.assigned_to(a.id))
            held_total += [c.id for c in mine]
            assert len(mine) <= a.capacity, f"{a.id} holds {len(mine)} > capacity {a.capacity}"
            assert all(c.assignee == a.id and c.status == Status.ASSIGNED for c in mine)
            if a.status == AgentStatus.OFFLINE:
                assert not mine, f"offline {a.id} still holds {[c.id for c in mine]}"
        assert len(held_total) == len(set(held_total))
        assert set(held_total) == {c.id for c in convs.values() if c.status == Status.ASSIGNED}
        for c in convs.values():
            if c.status == Status.ASSIGNED:
                assert self.desk.assignee_of(c.id) == c.assignee  # the ACL sees the same holder
            else:
                assert c.assignee is None and self.desk.assignee_of(c.id) is None

    @invariant()
    def nothing_waits_while_an_eligible_agent_is_free(self):
        if not hasattr(self, "desk"):
            return
        store = self.desk.store
        waiting = sync(store.waiting())
        leftover = plan(waiting, sync(store.agents()), sync(store.loads()))
        assert leftover == [], f"could assign {leftover}"

    @invariant()
    def queues_are_ordered(self):
        if not hasattr(self, "desk"):
            return
        for team in ("general", "vip"):
            keys = [c.queue_key() for c in sync(self.desk.store.waiting(team))]
            assert keys == sorted(keys)


DeskMachine.TestCase.settings = settings(
    max_examples=80, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAssignment = DeskMachine.TestCase
