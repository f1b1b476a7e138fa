"""The desk: the trio service that turns messages into answered conversations.

It owns no protocol and no socket. The broker glue or the bridge calls its async
entry points (``customer_message``, ``customer_event``, ``agent_action``,
``device_alarm``, ``ingest`` for raw topic traffic); it answers through an injected
``publish(topic, payload_bytes)`` callable, webhooks and plugin hooks.

Each operation is load -> pure decision -> one compare-and-set commit -> publish,
under one desk lock (held only for in-memory work and the store; never across the
classifier or the CRM). A ``Conflict`` from the store (another node changed a record)
re-runs the operation from a fresh read. Assignment runs after anything that can
free an agent or fill a queue; timers (offer acceptance, SLA deadlines, closing
resolved conversations, agent keepalive) live in one heap driven by ``run()`` and
re-check the stored record before acting, so a stale timer is harmless.

Time: ``now()`` is Unix-like seconds derived from trio's clock (so tests run whole
days of timers instantly with ``autojump_clock``), or an injected ``clock``.
"""

from __future__ import annotations

import heapq
import inspect
from collections import deque
from contextlib import asynccontextmanager
import json
import logging
import math
import time
from dataclasses import replace
from typing import Any, Awaitable, Callable

import trio

from . import agents as A
from . import conversations as C
from . import i18n
from . import routing as R
from . import tickets as T
from .bot import Reply, decide as bot_decide, sentiment_label, wants_human
from .contacts import Contact, load_crm, set_attributes, sidebar_lookup
from .conversations import Conversation, Message, Status
from .deskapi import DeskQueries, message_view
from .errors import DeskError, Forbidden, Illegal, Invalid, NotFound
from .events import MESSAGE_CREATED, QUEUE_POSITION, READ, TYPING, Event
from .fanout import Fanout
from .hooks import BotReplied, DeskHooks, MessageReceived, RouteDecided
from .settings import DeskSettings
from .state import Conflict, DeskStore, MemoryStore, StaleToken
from .storage.base import StorageUnavailable
from .topics import Acl, check_id
from .webhooks import Dispatcher

log = logging.getLogger("kefu.desk")

Publisher = Callable[[str, bytes], Awaitable[None]]
LEASE_TTL = 30.0  # seconds the assignment lease lasts; renewed every LEASE_TTL / 3
SHARED_ASSIGN_EVERY = 1.0  # seconds between the lease holder's assignment passes on shared state


async def _discard(topic: str, payload: bytes) -> None:
    return None


class Desk(DeskQueries):
    def __init__(
        self,
        settings: DeskSettings | None = None,
        *,
        store: DeskStore | None = None,
        classify: Callable[[str], Any] | None = None,
        publish: Publisher | None = None,
        hooks: DeskHooks | None = None,
        crm: Any = None,
        webhooks: Dispatcher | None = None,
        clock: Callable[[], float] | None = None,
        node: str = "desk",
    ) -> None:
        self.s = settings or DeskSettings()
        self.store: DeskStore = store if store is not None else MemoryStore()
        self.classify = classify
        self.publish = publish or _discard
        self.hooks = hooks or DeskHooks()
        self.crm = crm if crm is not None else load_crm(self.s.crm)
        self.webhooks = webhooks or Dispatcher(list(self.s.webhooks), self.s.webhook_policy)
        self.node = node
        self._clock = clock
        self._epoch: float | None = None
        self._lock = trio.Lock()
        self._outbox: deque[tuple[str, bytes]] = deque()  # (topic, payload) emitted, not yet published
        self._flushing = False
        self._outbox_wake = trio.Event()
        self._ready = False
        self._token: int | None = None
        self._heap: list[tuple[float, int, str, str]] = []
        self._heap_n = 0
        self._wake = trio.Event()
        self._assignee: dict[str, str] = {}  # conv id -> agent (the ACL's live input)
        self._held: dict[str, int] = {}  # agent id -> live connections keeping it present
        self._last_pos: dict[str, int] = {}
        self._dirty_teams: set[str] = set()
        self._sidebar: dict[str, dict] = {}  # customer id -> CRM result for the agent sidebar
        self.aht = self.s.handle_seconds  # average handle time, learned (EWMA) from resolutions
        self.names = {a.id: a.name for a in self.s.agents}
        self.fanout = Fanout(self.s.topics, self.names)
        self.acl = Acl(self.s.topics, self.assignee_of)
        self.published = 0
        self.publish_errors = 0
        self._later_nursery: trio.Nursery | None = None  # runs deferred bot turns (answer_later)
        self._turns: dict[str, deque] = {}  # conv id -> bot turns waiting, in message order
        self._turns_changed = trio.Event()
        self.stopping = False  # set by kefu.app when it stops: connections closing are not agents leaving

    # --- time and setup ------------------------------------------------------------------
    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._epoch is None:
            self._epoch = time.time() - trio.current_time()
        return self._epoch + trio.current_time()

    def assignee_of(self, conv_id: str) -> str | None:
        return self._assignee.get(conv_id)

    async def setup(self) -> None:
        """Bring configured agents into the store and take the assignment lease. Idempotent."""
        if self._ready:
            return
        self._ready = True
        for cfg_agent in self.s.agents:
            for _ in range(5):
                stored = await self.store.agent(cfg_agent.id)
                merged = A.merge_config(stored, cfg_agent)
                if stored is not None:
                    merged = replace(merged, version=stored.version)
                try:
                    await self.store.commit([merged])
                    break
                except Conflict:
                    continue
        self._token = await self.store.acquire_lease("desk", self.node, LEASE_TTL, self.now())
        for c in await self.store.conversations(status=Status.ASSIGNED):
            self._assignee[c.id] = c.assignee
            if c.accept_deadline is not None:
                self._schedule(c.accept_deadline, "offer", c.id)
        for c in await self.store.conversations(status=Status.RESOLVED):
            self._schedule((c.resolved_at or 0) + self.s.reopen_window, "close", c.id)
        for t in await self.store.tickets(open_only=True):
            due = T.next_deadline(t)
            if due is not None:
                self._schedule(due, "sla", t.id)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Timers, queue-position updates, keepalive sweep and webhook delivery."""
        async with self._locked():
            await self.setup()
        try:
            async with trio.open_nursery() as n:
                await n.start(self.webhooks.run)
                n.start_soon(self._timer_loop)
                n.start_soon(self._outbox_loop)
                n.start_soon(self._position_loop)
                if self.s.agent_keepalive > 0:
                    n.start_soon(self._keepalive_loop)
                n.start_soon(self._lease_loop)
                if getattr(self.store, "shared", False):
                    n.start_soon(self._shared_assign_loop)
                self._later_nursery = n
                task_status.started(self)
        finally:
            self._later_nursery = None  # stopped: later messages take their bot turn inline

    async def _shared_assign_loop(self) -> None:
        """With live state shared between nodes, a conversation queued or an agent freed on
        another node changes nothing here: only the lease holder assigns, and it would wait
        for an event of its own. So the holder also runs the pass every SHARED_ASSIGN_EVERY
        seconds; it reads only the queues of teams with a free agent, so an idle desk pays
        a couple of reads."""
        while True:
            await trio.sleep(SHARED_ASSIGN_EVERY)
            if self._token is None:
                continue
            async with self._locked():
                await self._assign_pass()

    async def _lease_loop(self) -> None:
        """Keep the assignment lease. Without it this node still takes messages and
        commands, but leaves assignment to the node that holds it (its commits would
        be refused as stale anyway)."""
        while True:
            await trio.sleep(LEASE_TTL / 3)
            async with self._locked():
                token = await self.store.acquire_lease("desk", self.node, LEASE_TTL, self.now())
                if token is None and self._token is not None:
                    log.warning("desk %s: another node holds the assignment lease", self.node)
                self._token = token

    async def _timer_loop(self) -> None:
        while True:
            if self._heap:
                when = self._heap[0][0]
                trio_when = trio.current_time() + max(0.0, when - self.now())
            else:
                trio_when = math.inf
            with trio.move_on_at(trio_when):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.fire_due()

    async def _position_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            if self._dirty_teams:
                async with self._locked():
                    teams, self._dirty_teams = self._dirty_teams, set()
                    for team in teams:
                        await self._publish_positions(team)

    async def _keepalive_loop(self) -> None:
        every = max(1.0, self.s.agent_keepalive / 4)
        while True:
            await trio.sleep(every)
            await self.sweep_agents()

    def _schedule(self, when: float, kind: str, key: str) -> None:
        self._heap_n += 1
        first = not self._heap or when < self._heap[0][0]
        heapq.heappush(self._heap, (when, self._heap_n, kind, key))
        if first:
            self._wake.set()

    async def fire_due(self, now: float | None = None) -> None:
        """Run every timer due by ``now``; each re-checks the stored record first."""
        async with self._locked():
            await self.setup()
            now = self.now() if now is None else now
            while self._heap and self._heap[0][0] <= now:
                _, _, kind, key = heapq.heappop(self._heap)
                try:
                    if kind == "offer":
                        await self._offer_expired(key, now)
                    elif kind == "sla":
                        await self._sla_check(key, now)
                    elif kind == "close":
                        await self._close_expired(key, now)
                except Conflict:
                    self._schedule(now, kind, key)  # changed under us: look again
                    break

    async def sweep_agents(self, now: float | None = None) -> list[str]:
        """Set offline the agents with no live connection that missed their keepalive."""
        async with self._locked():
            await self.setup()
            now = self.now() if now is None else now
            agents = [a for a in await self.store.agents() if not self._held.get(a.id)]
            gone = A.expired(agents, now, self.s.agent_keepalive)
            for aid in gone:
                await self._retry(lambda aid=aid: self._set_status(aid, A.AgentStatus.OFFLINE, "keepalive_missed"))
            return gone

    async def _retry(self, fn):
        for attempt in range(8):
            try:
                return await fn()
            except Conflict:
                if attempt == 7:
                    raise Illegal("the conversation keeps changing; try again") from None

    async def _tx(self, fn):
        async with self._locked():
            await self.setup()
            return await self._retry(fn)

    @asynccontextmanager
    async def _locked(self):
        """The desk lock, held only while deciding and committing -- never across a yield that
        it can avoid: an uncontended acquire does not checkpoint (trio's ``acquire`` yields
        *holding* the lock), and what the section emitted is published after release. Every
        message passes through this lock, so each scheduler round spent holding it is a round
        that every other waiting message waits too (measured: p50 latency tens of ms at 666
        messages/s with four rounds per message)."""
        try:
            self._lock.acquire_nowait()
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            yield
        finally:
            self._lock.release()
            if self._outbox:
                await self._flush()

    # --- publishing ---------------------------------------------------------------------
    async def _emit(self, evs: list[Event]) -> None:
        """Queue the events' payloads for publishing (in commit order); webhooks and hooks now."""
        for ev in evs:
            for topic, payload in self.fanout.route(ev):
                try:
                    self._outbox.append((topic, json.dumps(payload, separators=(",", ":"), default=str).encode()))
                except Exception:  # noqa: BLE001 - an unencodable payload must not corrupt state
                    self.publish_errors += 1
                    log.exception("encoding for %s failed", topic)
            self.webhooks.submit(ev)
            await self.hooks.notify(ev)
        if not self._lock.locked():
            await self._flush()

    async def _flush(self) -> None:
        """Publish the outbox in order. One flusher at a time keeps the order across tasks; a
        task whose items another task is already publishing returns without waiting."""
        if self._flushing:
            return
        self._flushing = True
        try:
            while self._outbox:
                topic, payload = self._outbox.popleft()
                try:
                    await self.publish(topic, payload)
                    self.published += 1
                except Exception:  # noqa: BLE001 - a broken publisher must not corrupt state
                    self.publish_errors += 1
                    log.exception("publishing on %s failed", topic)
        finally:
            self._flushing = False
            if self._outbox:  # cancelled mid-way: the background flusher finishes the job
                self._outbox_wake.set()

    async def _outbox_loop(self) -> None:
        while True:
            await self._outbox_wake.wait()
            self._outbox_wake = trio.Event()
            await self._flush()

    async def _commit(self, recs, *, fenced: bool = False):
        out = await self.store.commit(recs, token=self._token if fenced else None)
        for r in out:
            if isinstance(r, Conversation):
                self._track(r)
        return out

    def _track(self, conv: Conversation) -> None:
        if conv.status == Status.ASSIGNED and conv.assignee:
            self._assignee[conv.id] = conv.assignee
        else:
            self._assignee.pop(conv.id, None)
        if conv.status != Status.QUEUED:
            self._last_pos.pop(conv.id, None)

    async def _add_message(self, conv: Conversation, sender: str, text: str, *, sender_id=None, private=False,
                           meta=None) -> tuple[Message, Event]:
        m = await self.store.append_message(
            Message(conv.id, sender, text, self.now(), sender_id=sender_id, private=private, meta=meta or {})
        )
        ev = Event(MESSAGE_CREATED, {"message": message_view(m, conv, self.names), "conversation": conv.summary()}, m.at)
        return m, ev

    # --- customers ------------------------------------------------------------------------
    @asynccontextmanager
    async def _unit(self, wait: bool = True, *, raw: bool = False):
        """One action whose writes are committed to the SQL record before it returns (and so
        before anything is acknowledged to its sender): ``kefu.record.DurableStore.unit``.
        When they cannot be, the outermost action raises ``DeskError`` (503, /chat code
        ``unavailable``: nothing acknowledged, the sender tries again); ``raw`` keeps the
        ``StorageUnavailable`` (the broker glue closes the publisher's connection on it)."""
        unit = getattr(self.store, "unit", None)
        if unit is None:
            yield None
            return
        from .record import in_unit

        outer = not in_unit()
        try:
            async with unit(wait=wait) as pending:
                yield pending
        except StorageUnavailable as e:
            if not outer or raw:
                raise
            raise DeskError(f"not stored, try again: {e.reason}") from None

    async def customer_message(
        self, channel: str, customer_id: str, text: str, *, thread: str = "main", meta: dict | None = None,
        answer_later: bool = False,
    ) -> dict:
        """A customer's message. Returns {"conversation": view, "message": view} once the message
        is committed to the record, with every decision it caused so far.

        The message is stored and published (an assigned agent has it) before the bot's turn.
        ``answer_later`` (the broker's intake, /chat): while the desk runs, the bot's turn (a
        new customer's CRM lookup, classification, the answer or handoff) is left to a
        background task, in message order per conversation, and this returns at once -- the
        sender's acknowledgement never waits for the classifier; the turn commits its own
        decisions. Otherwise it returns after the bot's turn, committed too."""
        async with self._unit():
            conv, msg, created = await self._record_customer_message(channel, customer_id, text, thread, meta)
        if answer_later and conv.status == Status.BOT and self._later_nursery is not None:
            # outside the unit: the background turn must not share this action's write list
            self._answer_later(conv.id, customer_id if created else None, msg.text)
            return {"conversation": conv.summary(), "message": message_view(msg, conv, self.names)}
        async with self._unit():
            if created and self.crm is not None:
                await self._crm_lookup(customer_id)
            if conv.status == Status.BOT:
                await self._bot_turn(conv.id, msg.text)
            conv = await self.store.conversation(conv.id)
        return {"conversation": conv.summary(), "message": message_view(msg, conv, self.names)}

    async def _record_customer_message(
        self, channel: str, customer_id: str, text: str, thread: str, meta: dict | None
    ) -> tuple[Conversation, Message, bool]:
        check_id("customer id", customer_id)
        check_id("thread", thread)
        if not isinstance(text, str) or not text.strip():
            raise Invalid("text: must not be empty")
        if len(text) > self.s.max_text_chars:
            raise Invalid(f"text: longer than {self.s.max_text_chars} characters")
        created: list[bool] = [False]

        async def step() -> tuple[Conversation, Message]:
            now = self.now()
            conv = await self.store.thread_conversation(customer_id, thread)
            contact = await self.store.contact(customer_id)
            recs: list = []
            evs: list[Event] = []
            if contact is None:
                contact = Contact(customer_id, created_at=now, updated_at=now)
                recs.append(contact)
            guessed = self._guess_language(contact, text)
            if guessed is not None:  # a customer who names no language but writes Chinese reads Chinese
                recs = [replace(contact, attributes={**contact.attributes, "language": guessed}, updated_at=now)]
            if conv is not None and conv.status == Status.RESOLVED and conv.csat is None and self.s.csat \
                    and conv.last_assignee and text.strip() in ("1", "2", "3", "4", "5"):
                new, evs = C.rate(conv, int(text.strip()), None, now)
                res = await self._commit(recs + [new])
                m, ev = await self._add_message(res[-1], "customer", text, sender_id=customer_id, meta=meta)
                await self._emit(evs + [ev])
                return res[-1], m
            if conv is not None and conv.status == Status.RESOLVED and not C.can_reopen(conv, now, self.s.reopen_window):
                closed, e = C.close(conv, now, reason="reopen_window_over")
                recs.append(closed)
                evs += e
                conv = None
            requeue = False
            if conv is None or conv.status == Status.CLOSED:
                seq = await self.store.next_seq("conversation")
                conv, e = C.open_conversation(f"cv-{seq}", customer_id, thread, channel, now)
                created[0] = True
                evs += e
            elif conv.status == Status.RESOLVED:
                if conv.team and conv.handoff_reason:
                    conv, e = C.enqueue(
                        conv, team=conv.team, priority=conv.priority, seq=await self.store.next_seq("queue"),
                        now=now, reason="reopened", skills=conv.skills, min_tier=conv.min_tier,
                    )
                    requeue = True
                else:
                    conv, e = C.reopen_to_bot(conv, now)
                evs += e
            filt = await self.hooks.filter(
                "message_received", MessageReceived(conv.id, customer_id, channel, text, dict(meta or {}))
            ) if self.hooks.active("message_received") else None
            body, meta2 = (filt.text, filt.meta) if filt else (text, meta)
            if evs or recs:  # a new, reopened or closed conversation, or a new contact
                res = await self._commit(recs + [conv])
                conv = res[-1]
            m, ev = await self._add_message(conv, "customer", body, sender_id=customer_id, meta=meta2)
            await self._emit(evs + [ev])
            if requeue:
                await self._queued(conv, announce=True)
            return conv, m

        conv, msg = await self._tx(step)
        return conv, msg, created[0]

    async def _crm_lookup(self, customer_id: str) -> None:
        contact = await self.store.contact(customer_id)
        if contact is None:
            return
        with trio.move_on_after(self.s.crm.timeout) as cs:
            result = await sidebar_lookup(self.crm, contact)
        if cs.cancelled_caught:
            result = {"error": f"CRM lookup took longer than {self.s.crm.timeout:g} s"}
        self._sidebar[customer_id] = result
        if len(self._sidebar) > 10_000:
            self._sidebar.pop(next(iter(self._sidebar)))
        tier = (result.get("data") or {}).get(self.s.crm.tier_field) if isinstance(result.get("data"), dict) else None
        if isinstance(tier, str) and tier:
            async def step():
                c = await self.store.contact(customer_id)
                if c is not None and c.tier != tier:
                    await self._commit([replace(c, tier=tier, updated_at=self.now())])
            await self._tx(step)

    def _answer_later(self, conv_id: str, crm_customer: str | None, text: str) -> None:
        waiting = self._turns.get(conv_id)
        if waiting is None:
            waiting = self._turns[conv_id] = deque()
            self._later_nursery.start_soon(self._run_turns, conv_id, waiting)
        waiting.append((crm_customer, text))

    async def _run_turns(self, conv_id: str, waiting: deque) -> None:
        from .record import leave_unit

        leave_unit()  # started inside the message's action: its ack must not wait for the bot
        try:
            while waiting:
                crm_customer, text = waiting[0]
                try:
                    async with self._unit():  # the turn's decisions are committed like any action
                        if crm_customer is not None and self.crm is not None:
                            await self._crm_lookup(crm_customer)
                        await self._bot_turn(conv_id, text)
                except Exception:  # noqa: BLE001 - one failed turn must not stop the conversation's next
                    log.exception("the bot's turn on %s failed", conv_id)
                waiting.popleft()
        finally:
            self._turns.pop(conv_id, None)
            self._turns_changed.set()
            self._turns_changed = trio.Event()

    async def turns_settled(self) -> None:
        """Return once no deferred bot turn (``answer_later``) is waiting or running."""
        while self._turns:
            await self._turns_changed.wait()

    async def _classify(self, text: str) -> tuple[Any, str | None]:
        """(prediction, None), or (None, why the message goes on without an intent): the
        classifier's own ``skip_reason`` (a full queue: ``classifier_busy``), or an error."""
        if self.classify is None:
            return None, "no_classifier"
        try:
            out = self.classify(text)
            if inspect.isawaitable(out):
                out = await out
        except Exception as e:  # noqa: BLE001 - the message goes on without an intent (counted)
            why = getattr(e, "skip_reason", None)
            if why is None:
                why = "classifier_error"
                log.warning("classification failed (%s: %s); the bot hands the message to a human",
                            type(e).__name__, e)
            return None, why
        return out, None if out is not None else "no_classifier"

    async def _bot_turn(self, conv_id: str, text: str) -> None:
        pred, skipped = await self._classify(text)

        async def step() -> None:
            conv = await self.store.conversation(conv_id)
            if conv is None or conv.status != Status.BOT:
                return  # an agent picked it up, or it was resolved, meanwhile
            now = self.now()
            contact = await self.store.contact(conv.customer_id)
            intent = getattr(pred, "intent", None)
            senti = sentiment_label(getattr(pred, "sentiment", None))
            opened = self.s.hours.is_open(now) if self.s.hours else True
            # Route on the intent only when the classifier is sure of it: an out-of-scope or
            # low-confidence guess ("talk to a human please" -> lost_or_stolen_phone at 0.26)
            # must not jump the urgent queue.
            sure = (pred is not None and not getattr(pred, "out_of_scope", False)
                    and float(getattr(pred, "confidence", 0.0) or 0.0) >= self.s.bot.confidence)
            lang = self.language_of(contact)
            facts = R.Facts(intent if sure else None, senti, contact.tier if contact else None, conv.channel, opened)
            route = self.s.router.decide(facts)
            if self.hooks.active("route_decided"):
                route = (await self.hooks.filter("route_decided", RouteDecided(conv.id, facts, route))).route
            if not self.s.bot.enabled:
                reply = Reply("handoff", None, "bot_disabled", intent, getattr(pred, "confidence", None), senti)
            elif pred is None and not wants_human(text, self.s.bot):
                reply = Reply("handoff", self.s.bot.handoff_text(lang), skipped or "no_classifier")
            else:
                reply = bot_decide(
                    text, pred, route=route, answers=self.s.answers, settings=self.s.bot,
                    last_intent=conv.bot_last_intent, failures=conv.bot_failures,
                    contact=_contact_vars(contact), lang=lang,
                )
            if self.hooks.active("bot_reply"):
                reply = (await self.hooks.filter("bot_reply", BotReplied(conv.id, text, reply))).reply
            if reply.intent and (reply.confidence or 0) >= self.s.bot.confidence or conv.intent is None:
                # the agent sees the last intent the classifier was sure of (with its confidence)
                conv = replace(conv, intent=reply.intent or conv.intent, confidence=reply.confidence)
            conv = replace(conv, sentiment=reply.sentiment or conv.sentiment)
            conv = C.record_bot_turn(conv, reply.intent, reply.failed, now)
            if reply.action == "answer":
                (conv,) = await self._commit([conv])
                _, ev = await self._add_message(conv, "bot", reply.text or "", meta={"intent": reply.intent})
                await self._emit([ev])
                return
            await self._handoff(conv, route, reply, now, opened, lang)

        await self._tx(step)

    def language_of(self, contact: Contact | None) -> str:
        """The customer's language (kefu/i18n.py): the contact's ``language`` attribute (the widget's
        hello, a device's message, the API), its browser ``locale``, else ``[desk] language``."""
        a = contact.attributes if contact is not None else {}
        return i18n.pick([a.get("language"), a.get("locale")], default=None) or self.s.language

    @staticmethod
    def _guess_language(contact: Contact, text: str) -> str | None:
        """Chinese, when a contact with no language of its own writes it (kept on the contact)."""
        a = contact.attributes
        if i18n.pick([a.get("language"), a.get("locale")], default=None) is not None:
            return None
        return i18n.guess(text)

    async def _language(self, conv: Conversation) -> str:
        return self.language_of(await self.store.contact(conv.customer_id))

    async def _handoff(self, conv: Conversation, route: R.Route, reply: Reply, now: float, opened: bool,
                       lang: str | None = None) -> None:
        conv, evs = C.enqueue(
            conv, team=route.team, priority=route.priority, seq=await self.store.next_seq("queue"), now=now,
            reason=reply.reason or "handoff", skills=route.skills, min_tier=route.min_tier,
        )
        recs: list = [conv]
        if self.s.ticket_on_handoff and conv.ticket_id is None:
            tid = f"tk-{await self.store.next_seq('ticket')}"
            title = f"{conv.customer_id}: {reply.intent or reply.reason or 'conversation'}"
            t, te = T.open_ticket(tid, title, source="conversation", priority=conv.priority, now=now, sla=self.s.sla,
                                  conv_id=conv.id, customer_id=conv.customer_id, team=conv.team)
            conv = replace(conv, ticket_id=tid)
            recs = [conv, t]
            evs += te
        res = await self._commit(recs)
        conv = res[0]
        self._track(conv)
        if len(res) > 1:
            self._schedule_sla(res[1])
        msgs = []
        if reply.text:
            msgs.append((await self._add_message(conv, "bot", reply.text, meta={"handoff": reply.reason}))[1])
        if not opened and self.s.hours:
            text = self.s.hours.offline_message or i18n.text(lang or self.s.language, "desk.closed")
            msgs.append((await self._add_message(conv, "system", text))[1])
        await self._emit(evs + msgs)
        await self._queued(conv, announce=True)

    async def _queued(self, conv: Conversation, *, announce: bool) -> None:
        """After a conversation joins a queue: try to assign; if it still waits, tell the customer."""
        await self._assign_pass()
        cur = await self.store.conversation(conv.id)
        if cur is None or cur.status != Status.QUEUED:
            return
        self._dirty_teams.add(cur.team or "")
        pos, eta = await self._position_of(cur)
        self._last_pos[cur.id] = pos
        evs = [Event(QUEUE_POSITION, {"conversation": cur.summary(), "position": pos, "eta_s": eta}, self.now())]
        if announce:
            lang = await self._language(cur)
            text = i18n.fill(self.s.queue_message or i18n.text(lang, "desk.queue"),
                             {"position": pos, "wait": i18n.wait_text(lang, eta)})
            evs.append((await self._add_message(cur, "system", text, meta={"queue_position": pos}))[1])
        await self._emit(evs)

    async def _position_of(self, conv: Conversation) -> tuple[int, float | None]:
        pos = await self.store.queue_position(conv.id)  # a binary search in the store's ordered queue
        if pos is None:  # not waiting (any more): where it would stand, at the back
            pos = len(await self.store.waiting(conv.team)) + 1
        return pos, R.estimated_wait(pos, conv.team or "", await self.store.agents(), self.aht)

    async def _publish_positions(self, team: str) -> None:
        waiting = await self.store.waiting(team)
        agents = await self.store.agents()
        evs = []
        for i, c in enumerate(waiting, 1):
            if self._last_pos.get(c.id) != i:
                self._last_pos[c.id] = i
                eta = R.estimated_wait(i, team, agents, self.aht)
                evs.append(Event(QUEUE_POSITION, {"conversation": c.summary(), "position": i, "eta_s": eta}, self.now()))
        await self._emit(evs)

    # --- assignment -----------------------------------------------------------------------
    async def _assign_pass(self) -> int:
        """Offer every waiting conversation that has an eligible agent. Returns how many."""
        done = 0
        if self._token is None:
            return 0  # another node holds the assignment lease
        for _ in range(4):
            # Only the queues of teams with a free agent can move, and the store keeps each
            # queue in order: merging them costs what is read, and plan_ordered stops when
            # the free slots are used up -- a long queue behind full agents costs nothing.
            agents = await self.store.agents()
            loads = await self.store.loads()
            teams = R.free_teams(agents, loads)
            if not teams:
                return done
            queues = [await self.store.waiting(t) for t in sorted(teams)]
            plan = R.plan_ordered(heapq.merge(*queues, key=Conversation.queue_key), agents, loads)
            if not plan:
                return done
            ags = {a.id: a for a in agents}
            try:
                for a in plan:
                    conv = await self.store.conversation(a.conv_id)
                    await self._offer(conv, ags, a)
                    done += 1
                return done
            except Conflict:
                continue  # someone else moved first: plan again from fresh state
            except StaleToken:
                log.warning("desk %s lost the assignment lease; another node assigns now", self.node)
                return done
        return done

    async def _offer(self, conv: Conversation, ags: dict, a: R.Assignment, *, reason="routed", by=None) -> Conversation:
        now = self.now()
        agent = ags[a.agent_id]
        deadline = now + self.s.accept_timeout if self.s.accept_timeout > 0 else None
        new, evs = C.offer(conv, agent.id, now, deadline, reason=reason, by=by)
        recs = [new, replace(agent, rr=a.rr)]
        recs += await self._ticket_assignee(new, agent.id, now, evs)
        res = await self._commit(recs, fenced=True)
        new, ags[agent.id] = res[0], res[1]
        self._track(new)
        if new.team:
            self._dirty_teams.add(new.team)
        if deadline is not None:
            self._schedule(deadline, "offer", new.id)
        await self._emit(await self._decorate(evs, new))
        if deadline is None:
            await self._joined(new)
        return new

    async def _ticket_assignee(self, conv: Conversation, agent_id: str | None, now: float, evs: list) -> list:
        if not conv.ticket_id:
            return []
        t = await self.store.ticket(conv.ticket_id)
        if t is None or not t.is_open or t.assignee == agent_id:
            return []
        t2, te = T.update(t, now, change="assignee", assignee=agent_id, team=conv.team)
        evs += te
        return [t2]

    async def _decorate(self, evs: list[Event], conv: Conversation) -> list[Event]:
        """Give the agent what it needs with an assignment: transcript, intent, sidebar."""
        from .events import CONVERSATION_ASSIGNED

        out = []
        for ev in evs:
            if ev.type == CONVERSATION_ASSIGNED:
                msgs = await self.store.messages(conv.id, limit=50)
                contact = await self.store.contact(conv.customer_id)
                data = dict(ev.data)
                data["offer"] = {"deadline": conv.accept_deadline}
                data["transcript"] = [message_view(m, conv, self.names) for m in msgs]
                data["sidebar"] = await self.sidebar(conv.customer_id, contact)
                ev = Event(ev.type, data, ev.at)
            out.append(ev)
        return out

    async def _joined(self, conv: Conversation) -> None:
        name = self.names.get(conv.assignee or "", conv.assignee)
        text = i18n.text(await self._language(conv), "desk.joined", name=name)
        _, ev = await self._add_message(conv, "system", text, meta={"joined": conv.assignee})
        await self._emit([ev])

    # --- timers -----------------------------------------------------------------------------
    async def _offer_expired(self, conv_id: str, now: float) -> None:
        conv = await self.store.conversation(conv_id)
        if conv is None or conv.status != Status.ASSIGNED or conv.accept_deadline is None or conv.accept_deadline > now:
            return
        new, evs = C.requeue_front(conv, now, reason="accept_timeout", decline=True)
        (new,) = await self._commit([new])
        self._track(new)
        await self._emit(evs)
        await self._queued(new, announce=False)

    def _schedule_sla(self, t: T.Ticket) -> None:
        due = T.next_deadline(t)
        if due is not None:
            self._schedule(due, "sla", t.id)

    async def _sla_check(self, ticket_id: str, now: float) -> None:
        t = await self.store.ticket(ticket_id)
        if t is None:
            return
        kinds = T.due_breaches(t, now)
        if kinds:
            t, evs = T.breach(t, kinds, now)
            (t,) = await self._commit([t])
            await self._emit(evs)
        self._schedule_sla(t)

    async def _close_expired(self, conv_id: str, now: float) -> None:
        conv = await self.store.conversation(conv_id)
        if conv is None or conv.status != Status.RESOLVED or conv.resolved_at is None:
            return
        if now - conv.resolved_at < self.s.reopen_window:
            return
        new, evs = C.close(conv, now, reason="reopen_window_over")
        (new,) = await self._commit([new])
        await self._emit(evs)

    # --- agents -------------------------------------------------------------------------------
    async def _set_status(self, agent_id: str, status: A.AgentStatus, reason: str) -> dict:
        agent = await self.store.agent(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id!r}")
        now = self.now()
        new, evs = A.set_status(agent, status, now, reason=reason)
        recs: list = [new]
        requeued = []
        if status == A.AgentStatus.OFFLINE:
            for conv in await self.store.assigned_to(agent_id):
                c2, e = C.requeue_front(conv, now, reason="agent_offline", decline=False)
                recs.append(c2)
                evs += e
        res = await self._commit(recs)
        for c in res[1:]:
            self._track(c)
            requeued.append(c)
        await self._emit(evs)
        if status == A.AgentStatus.ONLINE or requeued:
            await self._assign_pass()
            for c in requeued:
                await self._queued(c, announce=False)
        return res[0].summary()

    async def agent_connected(self, agent_id: str) -> dict:
        """A live connection (MQTT or /chat) of this agent opened: it is online while one is open."""
        self._held[agent_id] = self._held.get(agent_id, 0) + 1
        return await self._tx(lambda: self._set_status(agent_id, A.AgentStatus.ONLINE, "connected"))

    async def agent_disconnected(self, agent_id: str) -> dict | None:
        """A live connection closed; the last one closing sets the agent offline (requeues its work).
        Not while kefu itself is stopping (``stopping``): the agent did not leave, and its
        conversations must come back assigned to it after the restart."""
        if self.stopping:
            return None
        n = self._held.get(agent_id, 0) - 1
        if n > 0:
            self._held[agent_id] = n
            return None
        self._held.pop(agent_id, None)
        return await self._tx(lambda: self._set_status(agent_id, A.AgentStatus.OFFLINE, "disconnected"))

    async def agent_action(self, agent_id: str | None, action: str, conv_id: str | None = None, **data) -> dict:
        """An agent's command (agent_id None: an operator). See docs/desk.md for the actions."""
        from .deskactions import run_action

        async with self._unit():
            return await self._tx(lambda: run_action(self, agent_id, action, conv_id, data))

    # --- customers' non-message traffic ------------------------------------------------------------
    async def customer_event(self, customer_id: str, thread: str, kind: str, **data) -> dict | None:
        """typing (on), read (up_to), csat (rating, comment) from a customer."""

        async def step():
            conv = await self.store.thread_conversation(customer_id, thread)
            if conv is None:
                raise NotFound(f"no conversation on thread {thread!r}")
            now = self.now()
            author = {"kind": "customer", "id": customer_id, "name": customer_id}
            if kind == "typing":
                await self._emit([Event(TYPING, {"conversation": conv.summary(), "author": author,
                                                 "on": bool(data.get("on"))}, now)])
                return None
            if kind == "read":
                seq = _seq_of(data.get("up_to"), conv.id)
                if seq > conv.customer_read:
                    (conv,) = await self._commit([replace(conv, customer_read=seq)])
                    self._track(conv)
                await self._emit([Event(READ, {"conversation": conv.summary(), "author": author,
                                               "up_to": f"{conv.id}:{seq}"}, now)])
                return None
            if kind == "csat":
                try:
                    new, evs = C.rate(conv, data.get("rating"), data.get("comment"), now)
                except C.TransitionError as e:
                    raise Illegal(str(e)) from None
                except ValueError as e:
                    raise Invalid(str(e)) from None
                (new,) = await self._commit([new])
                await self._emit(evs)
                return new.summary()
            raise Invalid(f"unknown customer event {kind!r}; known: typing, read, csat")

        async with self._unit():
            return await self._tx(step)

    async def set_contact(self, customer_id: str, *, fields: dict | None = None, attributes: dict | None = None,
                          by: str | None = None) -> dict:
        from .contacts import set_fields

        async def step():
            now = self.now()
            c = await self.store.contact(customer_id) or Contact(customer_id, created_at=now, updated_at=now)
            evs = []
            try:
                if fields:
                    c = set_fields(c, now, **fields)
                if attributes:
                    c, evs = set_attributes(c, attributes, now, by=by)
            except ValueError as e:
                raise Invalid(str(e)) from None
            (c,) = await self._commit([c])
            await self._emit(evs)
            return c.summary()

        async with self._unit():
            return await self._tx(step)

    async def sidebar(self, customer_id: str, contact: Contact | None = None) -> dict:
        contact = contact or await self.store.contact(customer_id)
        past = [c.summary() for c in await self.store.conversations(customer_id=customer_id)][-5:]
        return {"contact": contact.summary() if contact else {"id": customer_id},
                "crm": self._sidebar.get(customer_id, {}), "history": past}

    # --- devices ----------------------------------------------------------------------------------
    async def device_alarm(self, payload: bytes, *, device: str | None = None) -> dict:
        """An alarm message; returns {"action": open|repeat|recover|ignore, "ticket": ...}."""
        from .deskactions import handle_alarm

        if not self.s.alarms_enabled:
            raise Forbidden("alarms are disabled ([alarms] enabled = false)")
        try:
            alarm = T.parse_alarm(payload, self.s.alarms, topic_device=device)
        except T.AlarmError as e:
            raise Invalid(str(e)) from None
        async with self._unit():
            return await self._tx(lambda: handle_alarm(self, alarm))

    # --- raw topic traffic (broker glue, bridge taps) --------------------------------------------
    async def ingest(self, topic: str, payload: bytes, *, deferred: bool = False):
        """A message on one of ``topics.desk_filters()``; errors are answered on the sender's topic.
        Returns once its writes are committed -- or, ``deferred``, at once with a ``Pending``
        (None: nothing to wait for) whose ``wait()`` the caller awaits before acknowledging."""
        from .deskactions import ingest

        async with self._unit(wait=not deferred, raw=True) as pending:
            await ingest(self, topic, payload)
        return pending


def _contact_vars(c: Contact | None) -> dict:
    if c is None:
        return {}
    return {**c.attributes, "id": c.id, "name": c.name, "email": c.email, "phone": c.phone, "tier": c.tier}


def _seq_of(up_to: Any, conv_id: str) -> int:
    if isinstance(up_to, int) and not isinstance(up_to, bool):
        return up_to
    if isinstance(up_to, str):
        head, _, tail = up_to.rpartition(":")
        if (not head or head == conv_id) and tail.isdigit():
            return int(tail)
    raise Invalid("up_to: expected a message id (\"<conversation>:<seq>\") or a sequence number")

