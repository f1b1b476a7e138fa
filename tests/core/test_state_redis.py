"""RedisDeskStore on the real Redis: the same answers as MemoryStore, two nodes, stale leases.

The contract tests in test_store.py already run over both stores (the ``store``
fixture); here: every record kind survives the JSON round trip exactly; a long random
sequence of commits and messages gives the same answer to every read on both stores;
two desks ("nodes") sharing one Redis prefix, with customers and agents arriving on
both at once, never assign a conversation twice and lose none; a node whose lease
expired is refused (StaleToken); ``[desk] state = "redis"`` wiring and its start-up
error. Each test uses a key prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
import trio

from kefu import conversations as C
from kefu.agents import Agent, AgentStatus
from kefu.config import ConfigError, from_dict
from kefu.contacts import Contact
from kefu.conversations import Conversation, Message, Status
from kefu.desk import LEASE_TTL, Desk
from kefu.errors import DeskError
from kefu.state import Conflict, MemoryStore, StaleToken
from kefu.state_redis import RedisDeskStore, from_json, live_state, to_json
from kefu.storage.base import StorageUnavailable
from kefu.tickets import Ticket, TicketStatus

from .conftest import Recorder, keyword_classifier, redis_desk_store, small_settings

TEAMS = ("general", "vip", "billing")


def _full_records():
    conv = Conversation(
        "cv-1", "客户-1", "main", "chat", Status.ASSIGNED, 1_700_000_000.123456789, 1_700_000_001.5, team="vip",
        priority=0, seq=42, requeued=True, queued_at=1_700_000_000.25, assignee="vera", offered_at=0.1 + 0.2,
        accept_deadline=1e300, declined=frozenset({"bob", "alice"}), skills=frozenset({"zh"}), min_tier=2,
        intent="lost_or_stolen_card", confidence=0.987654321, sentiment="negative", handoff_reason="urgent",
        labels=frozenset({"卡", "fraud"}), resolved_at=None, last_assignee="max", bot_failures=2,
        bot_last_intent="x", csat=5, csat_comment="很好 \"quoted\"\n", ticket_id="tk-1", first_reply_at=-0.0,
        customer_read=3, agent_read=7, version=9)
    agent = Agent("vera", "Vera Ž", frozenset({"vip", "general"}), frozenset({"zh", "en"}), 7, 3,
                  AgentStatus.AWAY, 123.456, rr=17, version=4)
    ticket = Ticket("tk-1", "卡丢了", TicketStatus.PENDING, 1, 5.5, 6.5, "alarm", conv_id="cv-1", customer_id="c",
                    team="vip", assignee="vera", device_id="d-1", alarm_type="temp", severity="major", repeats=3,
                    first_response_due=100.0, resolution_due=200.0, first_response_at=50.0, resolved_at=None,
                    breached=frozenset({"first_response"}), comments=({"at": 1.0, "text": "again", "n": [1, 2]},),
                    version=2)
    contact = Contact("c", "Ann", "a@example.com", "+86 1", "gold", "device",
                      {"plan": "pro", "n": 3, "ok": True, "none": None, "f": 0.1}, 1.0, 2.0, version=1)
    return [conv, agent, ticket, contact]


def test_every_record_kind_round_trips_exactly():
    for r in _full_records():
        kind = type(r).__name__.lower()
        back = from_json(kind, to_json(r))
        assert back == r and type(back) is type(r)
        assert all(type(getattr(back, f)) is type(getattr(r, f)) for f in r.__dataclass_fields__)


async def test_records_come_back_from_redis_as_committed(redis_url):
    async with redis_desk_store(redis_url) as s:
        recs = [replace(r, version=0) for r in _full_records()]
        out = await s.commit(recs)
        assert [r.version for r in out] == [1, 1, 1, 1]
        assert await s.conversation("cv-1") == out[0]
        assert await s.agent("vera") == out[1]
        assert await s.ticket("tk-1") == out[2]
        assert await s.contact("c") == out[3]
        assert await s.alarm_ticket("d-1", "temp") == out[2]
        m = await s.append_message(Message("cv-1", "agent", "你好", 1.5, sender_id="vera", private=True,
                                           meta={"k": ["v"], "n": 1}))
        assert m.seq == 1 and await s.messages("cv-1") == [m]


def _random_conv(rng: random.Random, cid: str, seq: int) -> Conversation:
    status = rng.choice(list(Status))
    return Conversation(
        cid, f"cu{rng.randrange(6)}", rng.choice(["main", "web"]), "chat", status,
        float(rng.randrange(50)), 0.0, team=rng.choice(TEAMS + (None,)), priority=rng.randrange(4), seq=seq,
        requeued=rng.random() < 0.3, assignee=rng.choice(["alice", "bob", "vera", None]),
        offered_at=rng.choice([None, float(rng.randrange(100))]),
    )


async def _same_answers(mem: MemoryStore, red: RedisDeskStore, conv_ids, ticket_keys, msg_convs):
    assert await red.waiting() == await mem.waiting()
    for team in TEAMS + ("", "nobody"):
        assert await red.waiting(team) == await mem.waiting(team), team
    for cid in conv_ids:
        assert await red.queue_position(cid) == await mem.queue_position(cid), cid
        assert await red.conversation(cid) == await mem.conversation(cid)
    assert await red.conversations() == await mem.conversations()
    for st in Status:
        assert await red.conversations(status=st) == await mem.conversations(status=st)
    for i in range(7):
        assert await red.conversations(customer_id=f"cu{i}") == await mem.conversations(customer_id=f"cu{i}")
        assert await red.conversations(customer_id=f"cu{i}", status=Status.QUEUED) == \
            await mem.conversations(customer_id=f"cu{i}", status=Status.QUEUED)
        for th in ("main", "web"):
            assert await red.thread_conversation(f"cu{i}", th) == await mem.thread_conversation(f"cu{i}", th)
    for a in ("alice", "bob", "vera", "max"):
        assert await red.assigned_to(a) == await mem.assigned_to(a)
    assert await red.loads() == await mem.loads()
    assert await red.tickets() == await mem.tickets()
    assert await red.tickets(open_only=True) == await mem.tickets(open_only=True)
    for d, t in ticket_keys:
        assert await red.alarm_ticket(d, t) == await mem.alarm_ticket(d, t)
    assert await red.agents() == await mem.agents()
    assert await red.contacts() == await mem.contacts()
    for cid in msg_convs:
        for before in (None, 1, 2, 5, 9, 100):
            for limit in (0, 1, 3, 50):
                assert await red.messages(cid, before=before, limit=limit) == \
                    await mem.messages(cid, before=before, limit=limit)


@pytest.mark.parametrize("seed", [1, 2])
async def test_random_commits_give_the_same_answers_as_memory(redis_url, seed):
    rng = random.Random(seed)
    mem = MemoryStore()
    async with redis_desk_store(redis_url) as red:
        conv_ids: list[str] = []
        ticket_keys = {("d0", "temp"), ("d1", "door"), ("nobody", "x")}
        msg_convs: set[str] = set()
        seq = 0
        for step in range(300):
            roll = rng.random()
            recs = []
            if roll < 0.3 or not conv_ids:
                seq += 1
                cid = f"cv-{len(conv_ids) + 1}"
                conv_ids.append(cid)
                recs.append(_random_conv(rng, cid, seq))
            elif roll < 0.65:
                for cid in rng.sample(conv_ids, min(len(conv_ids), rng.randint(1, 3))):
                    seq += 1
                    cur = await mem.conversation(cid)
                    new = replace(_random_conv(rng, cid, seq), version=cur.version,
                                  customer_id=cur.customer_id, thread=cur.thread, created_at=cur.created_at)
                    recs.append(new)
            elif roll < 0.75:
                tid = f"tk-{rng.randrange(8)}"
                cur = await mem.ticket(tid)
                d, t, _ = rng.choice(sorted(ticket_keys)) + (None,)
                recs.append(Ticket(tid, "t", rng.choice(list(TicketStatus)), 2, float(step), float(step), "alarm",
                                   device_id=d, alarm_type=t, version=cur.version if cur else 0))
            elif roll < 0.8:
                aid = rng.choice(["alice", "bob", "vera", "max"])
                cur = await mem.agent(aid)
                recs.append(Agent(aid, capacity=rng.randint(1, 4), rr=step, version=cur.version if cur else 0))
                cur_c = await mem.contact(f"cu{rng.randrange(6)}")
                if cur_c is not None:
                    recs.append(replace(cur_c, tier=rng.choice(["", "vip"])))
                else:
                    recs.append(Contact(f"cu{rng.randrange(6)}", attributes={"step": step}))
                    if await mem.contact(recs[-1].id) is not None:
                        recs.pop()
            elif roll < 0.9:
                cid = rng.choice(conv_ids)
                msg_convs.add(cid)
                msg = Message(cid, "customer", f"m{step}", float(step), meta={"i": step})
                assert await red.append_message(msg) == await mem.append_message(msg)
                continue
            else:  # a stale write: both refuse it, and nothing of the commit lands
                cid = rng.choice(conv_ids)
                cur = await mem.conversation(cid)
                good = _random_conv(rng, f"cv-new-{step}", seq)
                recs = [good, replace(cur, version=cur.version + rng.choice([-1, 1]))]
                for s in (mem, red):
                    with pytest.raises(Conflict):
                        await s.commit(recs)
                continue
            a = await mem.commit(recs)
            b = await red.commit(recs)
            assert a == b
            if step % 50 == 49:
                await _same_answers(mem, red, conv_ids, ticket_keys, msg_convs)
        await _same_answers(mem, red, conv_ids, ticket_keys, msg_convs)
        assert await red.next_seq("x") == await mem.next_seq("x") == 1


async def _second_node(first: RedisDeskStore) -> RedisDeskStore:
    """Another process's view of the same desk: its own connection, the same prefix."""
    return await RedisDeskStore(first.url, prefix=first.prefix).open()


AGENTS = (
    Agent("alice", "Alice", frozenset({"general"}), capacity=6),
    Agent("bob", "Bob", frozenset({"general"}), capacity=6),
    Agent("carl", "Carl", frozenset({"general"}), capacity=6),
    Agent("dana", "Dana", frozenset({"general"}), capacity=6),  # away: takes work only by pickup
)


def _assignments(*recorders: Recorder) -> Counter:
    n = Counter()
    for rec in recorders:
        for ev in rec.on("kefu/desk/events"):
            if ev["event"] == "conversation_assigned":
                n[ev["data"]["conversation"]["id"]] += 1
    return n


async def _check_places(s: RedisDeskStore, expect: int) -> list[Conversation]:
    """Every conversation is in exactly one place, and the indexes agree with the records."""
    convs = await s.conversations()
    assert len(convs) == expect and len({c.customer_id for c in convs}) == expect  # nothing lost
    waiting = await s.waiting("general")
    assert [c.id for c in waiting] == [c.id for c in sorted(
        (c for c in convs if c.status == Status.QUEUED), key=lambda c: (c.queue_key(), c.id))]
    for i, c in enumerate(waiting, 1):
        assert await s.queue_position(c.id) == i
    held = []
    loads = await s.loads()
    for a in AGENTS:
        mine = await s.assigned_to(a.id)
        assert all(c.status == Status.ASSIGNED and c.assignee == a.id for c in mine)
        assert len(mine) == loads.get(a.id, 0) <= a.capacity
        held += [c.id for c in mine]
    assert len(held) == len(set(held))  # never held by two agents
    assert set(held) == {c.id for c in convs if c.status == Status.ASSIGNED}
    return convs


async def test_two_nodes_on_one_redis_never_assign_twice_nor_lose_a_conversation(redis_url):
    async with redis_desk_store(redis_url) as s1:
        s2 = await _second_node(s1)
        try:
            rec1, rec2 = Recorder(), Recorder()
            settings = small_settings(agents=AGENTS, accept_timeout=0.0, csat=False)
            one = Desk(settings, store=s1, classify=keyword_classifier, publish=rec1, node="one")
            two = Desk(settings, store=s2, classify=keyword_classifier, publish=rec2, node="two")
            await one.setup()
            await two.setup()
            assert one._token is not None and two._token is None  # one assigns, both take traffic

            arrived = trio.Event()

            async def picker() -> None:  # dana picks up from the queue on node two meanwhile
                while not arrived.is_set():
                    for c in await s2.waiting("general"):
                        try:
                            await two.agent_action("dana", "pickup", c.id)
                        except DeskError:
                            pass  # taken meanwhile, or dana is full
                    await trio.sleep(0)

            await two.agent_action("dana", "sign_in")
            await two.agent_action("dana", "status", status="away")
            n_customers = 40
            with trio.fail_after(60):
                async with trio.open_nursery() as outer:
                    outer.start_soon(picker)
                    async with trio.open_nursery() as n:
                        n.start_soon(two.agent_action, "carl", "sign_in")
                        for i in range(n_customers):
                            n.start_soon((one, two)[i % 2].customer_message, "chat", f"cu{i}", "human please")
                            if i == 10:
                                n.start_soon(one.agent_action, "alice", "sign_in")
                                n.start_soon(two.agent_action, "bob", "sign_in")
                    arrived.set()
                await one.agent_action("alice", "sign_in")  # a pass on the lease holder
                convs = await _check_places(s1, n_customers)
                picked = len(await s1.assigned_to("dana"))
                assert picked >= 1  # node two really did assign, racing node one
                assigned = sum(c.status == Status.ASSIGNED for c in convs)
                assert assigned == 18 + picked  # every routed slot used: nothing waits while one is free
                assert sum(c.status == Status.QUEUED for c in convs) == n_customers - assigned
                # agents resolve on both nodes; the freed slots take the rest of the queue
                while await s1.waiting():
                    async with trio.open_nursery() as n:
                        for j, a in enumerate(AGENTS):
                            for c in await s1.assigned_to(a.id):
                                n.start_soon((one, two)[j % 2].agent_action, a.id, "resolve", c.id)
                    await one.agent_action("alice", "sign_in")
                    await _check_places(s1, n_customers)
            convs = await s1.conversations()
            assert all(c.status in (Status.ASSIGNED, Status.RESOLVED) for c in convs)
            counts = _assignments(rec1, rec2)
            assert set(counts) == {c.id for c in convs} and set(counts.values()) == {1}  # each exactly once
        finally:
            await s2.close()


async def test_writers_on_two_connections_racing_for_one_queue_assign_each_conversation_once(redis_url):
    """Eight writers (four per node) read the queue and offer what they see to their own agent
    at the same time: compare-and-set lets exactly one offer per conversation through."""
    async with redis_desk_store(redis_url) as s1:
        s2 = await _second_node(s1)
        try:
            convs = []
            for i in range(30):
                c, _ = C.open_conversation(f"cv-{i}", f"cu{i}", "main", "chat", float(i))
                convs.append(C.enqueue(c, team="general", priority=i % 3, seq=i, now=i, reason="x")[0])
            await s1.commit(convs)
            won: list[tuple[str, str]] = []
            conflicts = [0]

            async def writer(s: RedisDeskStore, agent_id: str) -> None:
                (me,) = await s.commit([Agent(agent_id, teams=frozenset({"general"}), capacity=100)])
                while waiting := await s.waiting("general"):
                    for c in waiting:
                        fresh = await s.conversation(c.id)  # may already be stale when committed
                        if fresh.status != Status.QUEUED:
                            continue
                        try:
                            _, me = await s.commit([C.offer(fresh, agent_id, 1.0, None)[0], replace(me, rr=me.rr + 1)])
                            won.append((c.id, agent_id))
                        except Conflict:
                            conflicts[0] += 1
                            me = await s.agent(agent_id)

            with trio.fail_after(60):
                async with trio.open_nursery() as n:
                    for w in range(8):
                        n.start_soon(writer, (s1, s2)[w % 2], f"w{w}")
            assert sorted(cid for cid, _ in won) == sorted(c.id for c in convs)  # each exactly once
            for cid, agent_id in won:
                assert (await s2.conversation(cid)).assignee == agent_id
            assert sum((await s1.loads()).values()) == 30 and await s1.waiting() == []
            assert conflicts[0] > 0  # the writers really did collide
        finally:
            await s2.close()


async def test_a_node_whose_lease_expired_gets_stale_token(redis_url):
    async with redis_desk_store(redis_url) as s1:
        s2 = await _second_node(s1)
        try:
            t = [1000.0]
            rec1, rec2 = Recorder(), Recorder()
            one = Desk(small_settings(accept_timeout=0.0), store=s1, classify=keyword_classifier, publish=rec1,
                       node="one", clock=lambda: t[0])
            two = Desk(small_settings(accept_timeout=0.0), store=s2, classify=keyword_classifier, publish=rec2,
                       node="two", clock=lambda: t[0])
            await one.setup()
            await two.setup()
            stale = one._token
            assert stale is not None and two._token is None
            assert await s2.acquire_lease("desk", "two", LEASE_TTL, t[0] + 1) is None  # still held
            t[0] += LEASE_TTL + 1  # node one paused past its lease; node two's lease loop takes over
            fresh = await s2.acquire_lease("desk", "two", LEASE_TTL, t[0])
            assert fresh is not None and fresh > stale
            two._token = fresh
            # node one wakes up believing it still holds the lease: its fenced writes are refused
            conv, _ = C.open_conversation("cv-x", "cu", "main", "chat", t[0])
            with pytest.raises(StaleToken):
                await s1.commit([conv], token=stale)
            assert await s1.conversation("cv-x") is None
            await one.agent_action("alice", "sign_in")
            cid = (await one.customer_message("chat", "ann", "human please"))["conversation"]["id"]
            assert (await s1.conversation(cid)).status == Status.QUEUED  # one's assignment was refused
            assert _assignments(rec1) == Counter()
            await two.agent_action("bob", "sign_in")  # the new holder assigns
            assert (await s2.conversation(cid)).status == Status.ASSIGNED
            assert _assignments(rec2) == Counter({cid: 1})
            # the same desk name in two processes is still two lease holders
            s3 = await _second_node(s1)
            try:
                assert await s3.acquire_lease("desk", "two", LEASE_TTL, t[0]) is None
            finally:
                await s3.close()
        finally:
            await s2.close()


def _cfg(**storage):
    return from_dict({"desk": {"state": "redis"}, "storage": storage, "nlp": {"enabled": False}})


async def _start_error(cfg, kind):
    """The ``kind`` error that starting the live state raises (the way `kefu serve` finds it)."""
    from kefu.app import _find

    try:
        async with trio.open_nursery() as n:
            await n.start(live_state, cfg)
    except BaseException as e:  # noqa: BLE001 - looked into below
        found = _find(e, kind)
        assert found is not None, e
        return found
    raise AssertionError("started without an error")


async def test_desk_state_setting_builds_the_store_and_names_the_key_when_redis_is_away(redis_url):
    assert from_dict({}).desk.state == "memory"
    with pytest.raises(ConfigError, match="desk.state"):
        from_dict({"desk": {"state": "postgres"}})
    async with trio.open_nursery() as n:
        assert isinstance(await n.start(live_state, from_dict({})), MemoryStore)
        red = await n.start(live_state, _cfg(redis_url=redis_url, redis_prefix="kefu-test:wiring:"))
        assert isinstance(red, RedisDeskStore) and red.prefix == "kefu-test:wiring:desk:"
        assert await red.next_seq("probe") >= 1
        await red.delete_all()
        n.cancel_scope.cancel()
    assert red.client is None  # closed when its task ended
    assert "desk.state: \"redis\" needs storage.redis_url" in str(await _start_error(_cfg(), ConfigError))
    msg = str(await _start_error(_cfg(redis_url="redis://127.0.0.1:1/0"), StorageUnavailable))
    assert '[desk] state = "redis"' in msg and '[storage] redis_url = "redis://127.0.0.1:1/0"' in msg


async def test_the_app_runs_its_desk_on_redis(redis_url, tmp_path):
    from kefu.app import run

    cfg = from_dict({
        "listeners": {"mqtt": {"host": "127.0.0.1", "port": 0}, "ws": {"enabled": False},
                      "http": {"enabled": False}},
        "storage": {"path": str(tmp_path / "k.db"), "redis_url": redis_url, "redis_prefix": "kefu-test:app:"},
        "desk": {"state": "redis"}, "nlp": {"enabled": False}, "mqtt": {"sys_interval": 0},
    })
    with trio.fail_after(30):
        async with trio.open_nursery() as n:
            app = await n.start(run, cfg)
            live = app.desk.store.live
            try:
                assert isinstance(live, RedisDeskStore)
                r = await app.desk.customer_message("chat", "ann", "hello")
                assert await live.conversation(r["conversation"]["id"]) is not None
                assert [m.text for m in await live.messages(r["conversation"]["id"])][:1] == ["hello"]
            finally:
                await live.delete_all()
            await app.stop()


async def test_lease_holder_assigns_what_another_node_queued_without_an_event_of_its_own(redis_url):
    """Node two queues a customer while no agent is free; an agent then signs in on node two
    too. Node one (the lease holder) sees neither event, yet assigns within its periodic pass."""
    async with redis_desk_store(redis_url) as s1:
        s2 = await _second_node(s1)
        try:
            settings = small_settings(agents=AGENTS, accept_timeout=0.0, csat=False)
            one = Desk(settings, store=s1, classify=keyword_classifier, publish=Recorder(), node="one")
            two = Desk(settings, store=s2, classify=keyword_classifier, publish=Recorder(), node="two")
            async with trio.open_nursery() as n:
                await n.start(one.run)
                await n.start(two.run)
                assert one._token is not None and two._token is None
                await two.customer_message("chat", "cu-late", "human please")
                [queued] = await s1.waiting("general")
                await two.agent_action("bob", "sign_in")  # node two may not assign: no lease
                assert (await s1.conversation(queued.id)).status == Status.QUEUED
                with trio.fail_after(5):  # the pass runs every SHARED_ASSIGN_EVERY (1 s)
                    while (await s1.conversation(queued.id)).status != Status.ASSIGNED:
                        await trio.sleep(0.05)  # polling the shared store, as another node would
                assert (await s1.conversation(queued.id)).assignee == "bob"
                n.cancel_scope.cancel()
        finally:
            await s2.close()
