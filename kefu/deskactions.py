"""What agents, operators and devices can do to conversations and tickets.

Split from desk.py to keep each file readable: these run inside the desk's lock
(``Desk._tx``), read the store, apply the pure transitions and commit. Permission
rules: an agent works only conversations assigned to it, except ``pickup`` (from a
queue of one of its teams), ``note``/``labels`` (any conversation of its teams) and
``reopen`` (its own or its teams' resolved conversations). ``agent_id=None`` is an
operator and may do everything. ``ingest`` maps raw topic traffic onto these calls.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import agents as A
from . import edge
from . import conversations as C
from . import i18n
from . import tickets as T
from .contacts import Contact
from .conversations import Conversation, Status
from .errors import DeskError, Forbidden, Illegal, Invalid, NotFound
from .events import CSAT_REQUESTED, READ, TYPING, Event

if TYPE_CHECKING:
    from .desk import Desk

log = logging.getLogger("kefu.desk")

AGENT_ACTIONS = (
    "status", "sign_in", "sign_out", "keepalive", "accept", "reply", "note", "typing", "read", "resolve",
    "reopen", "transfer", "assign", "pickup", "labels", "contact", "language",
)


async def _text(d: "Desk", data: dict, conv: Conversation) -> str:
    """The message text, or a canned response rendered with the answers' variables and the contact."""
    text = data.get("text")
    code = data.get("canned")
    if code is not None:
        if code not in d.s.canned:
            raise Invalid(f"canned: no canned response {code!r}; known: {', '.join(sorted(d.s.canned)) or 'none'}")
        from .desk import _contact_vars

        text = d.s.answers.render(d.s.canned[code], _contact_vars(await d.store.contact(conv.customer_id)))
    if not isinstance(text, str) or not text.strip():
        raise Invalid("text: must not be empty (or name a canned response)")
    if len(text) > d.s.max_text_chars:
        raise Invalid(f"text: longer than {d.s.max_text_chars} characters")
    return text


async def run_action(d: "Desk", agent_id: str | None, action: str, conv_id: str | None, data: dict) -> dict:
    if action not in AGENT_ACTIONS:
        raise Invalid(f"unknown action {action!r}; known: {', '.join(AGENT_ACTIONS)}")
    now = d.now()
    agent = None
    if agent_id is not None:
        agent = await d.store.agent(agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id!r}")
    if action in ("status", "sign_in", "sign_out", "keepalive", "language"):
        if agent is None:
            raise Invalid(f"{action}: needs an agent")
        if action == "language":  # the agent's console language, kept with the agent
            lang = data.get("language")
            if lang not in i18n.LANGUAGES and lang != "":
                raise Invalid(f"language: expected one of {', '.join(i18n.LANGUAGES)}, or \"\" for the browser's")
            (agent,) = await d._commit([replace(agent, language=lang)])
            return agent.summary()
        if action == "keepalive":
            (agent,) = await d._commit([A.keepalive(agent, now)])
            return agent.summary()
        if action == "status":
            try:
                status = A.AgentStatus(data.get("status"))
            except ValueError:
                raise Invalid("status: expected online, away or offline") from None
        else:
            status = A.AgentStatus.ONLINE if action == "sign_in" else A.AgentStatus.OFFLINE
        return await d._set_status(agent.id, status, action)

    if not conv_id:
        raise Invalid(f"{action}: conversation is required")
    conv = await d.store.conversation(conv_id)
    if conv is None:
        raise NotFound(f"no conversation {conv_id!r}")
    if agent is not None and agent.status != A.AgentStatus.OFFLINE:
        agent = A.keepalive(agent, now)  # committed with the action where the agent record is written

    def holder() -> None:
        if agent_id is not None and conv.assignee != agent_id:
            raise Forbidden(f"conversation {conv.id} is not assigned to {agent_id}")

    def teammate() -> None:
        if agent_id is not None and conv.assignee != agent_id and (conv.team not in agent.teams):
            raise Forbidden(f"conversation {conv.id} is not in a team of {agent_id}")

    try:
        if action == "accept":
            holder()
            new, evs = C.accept(conv, agent_id or conv.assignee, now)
            if not evs:
                return new.summary()
            (new,) = await d._commit([new])
            await d._emit(evs)
            await d._joined(new)
            return new.summary()
        if action in ("reply", "note"):
            text = await _text(d, data, conv)
            (holder if action == "reply" else teammate)()
            return await _reply(d, conv, agent_id, text, private=action == "note", now=now)
        if action == "typing":
            holder()
            await d._emit([Event(TYPING, {"conversation": conv.summary(), "author": _author(d, agent_id),
                                          "on": bool(data.get("on"))}, now)])
            return conv.summary()
        if action == "read":
            holder()
            from .desk import _seq_of

            seq = _seq_of(data.get("up_to"), conv.id)
            if seq > conv.agent_read:
                (conv,) = await d._commit([replace(conv, agent_read=seq)])
            await d._emit([Event(READ, {"conversation": conv.summary(), "author": _author(d, agent_id),
                                        "up_to": f"{conv.id}:{seq}"}, now)])
            return conv.summary()
        if action == "resolve":
            holder()
            return await resolve(d, conv, now, by=agent_id or "operator")
        if action == "reopen":
            if conv.status != Status.RESOLVED:
                raise Illegal(f"conversation {conv.id}: only a resolved conversation can be reopened")
            if agent_id is not None and conv.last_assignee != agent_id and conv.team not in agent.teams:
                raise Forbidden(f"conversation {conv.id} is not in a team of {agent_id}")
            new, evs = C.enqueue(conv, team=conv.team or d.s.router.default.team, priority=conv.priority,
                                 seq=await d.store.next_seq("queue"), now=now, reason="reopened",
                                 skills=conv.skills, min_tier=conv.min_tier, by=agent_id)
            (new,) = await d._commit([new])
            await d._emit(evs)
            await d._queued(new, announce=False)
            return (await d.store.conversation(new.id)).summary()
        if action in ("transfer", "assign"):
            if action == "assign" and agent_id is not None:
                raise Forbidden("assign: operators only (agents use transfer or pickup)")
            holder()
            if data.get("agent"):
                return await _to_agent(d, conv, data["agent"], now, by=agent_id)
            team = data.get("team")
            if not team or team not in d.s.teams:
                raise Invalid(f"team: expected one of {', '.join(sorted(d.s.teams))}")
            new, evs = C.enqueue(conv, team=team, priority=conv.priority, seq=await d.store.next_seq("queue"),
                                 now=now, reason="transfer", by=agent_id)
            new = replace(new, requeued=True)  # it has waited already: front of the new team's queue
            (new,) = await d._commit([new])
            await d._emit(evs)
            await d._queued(new, announce=False)
            return (await d.store.conversation(new.id)).summary()
        if action == "pickup":
            if agent is None:
                raise Invalid("pickup: needs an agent")
            if conv.status != Status.QUEUED:
                raise Illegal(f"conversation {conv.id} is not waiting (it is {conv.status.value})")
            if conv.team not in agent.teams:
                raise Forbidden(f"conversation {conv.id} waits in team {conv.team}, not a team of {agent.id}")
            return await _to_agent(d, conv, agent.id, now, by=agent.id, reason="pickup", agent=agent)
        if action == "labels":
            teammate()
            labels = data.get("labels")
            if not isinstance(labels, list) or not all(isinstance(x, str) and 0 < len(x) <= 64 for x in labels):
                raise Invalid("labels: expected a list of label names")
            if d.s.labels and not set(labels) <= d.s.labels:
                raise Invalid(f"labels: unknown {', '.join(sorted(set(labels) - d.s.labels))}; "
                              f"allowed: {', '.join(sorted(d.s.labels))}")
            new, evs = C.set_labels(conv, frozenset(labels), now, agent_id)
            if evs:
                (new,) = await d._commit([new])
                await d._emit(evs)
            return new.summary()
        if action == "contact":
            teammate()
            c = await d.store.contact(conv.customer_id) or Contact(conv.customer_id, created_at=now, updated_at=now)
            from .contacts import set_attributes

            try:
                c, evs = set_attributes(c, data.get("attributes") or {}, now, by=agent_id)
            except ValueError as e:
                raise Invalid(str(e)) from None
            if evs:
                (c,) = await d._commit([c])
                await d._emit(evs)
            return c.summary()
    except C.TransitionError as e:
        raise Illegal(str(e)) from None
    raise Invalid(f"unknown action {action!r}")  # pragma: no cover - guarded above


def _author(d: "Desk", agent_id: str | None) -> dict:
    if agent_id is None:
        return {"kind": "agent", "id": "operator", "name": "Operator"}
    return {"kind": "agent", "id": agent_id, "name": d.names.get(agent_id, agent_id)}


async def _reply(d: "Desk", conv: Conversation, agent_id: str | None, text: str, *, private: bool, now: float) -> dict:
    evs: list[Event] = []
    recs: list = []
    if not private:
        if conv.status == Status.ASSIGNED and conv.accept_deadline is not None:
            conv, e = C.accept(conv, conv.assignee, now)  # replying is accepting
            evs += e
        if conv.status not in (Status.ASSIGNED,) and agent_id is not None:
            raise Illegal(f"conversation {conv.id} is {conv.status.value}: reopen it to reply")
        if conv.first_reply_at is None:
            conv = replace(conv, first_reply_at=now)
            if conv.ticket_id:
                t = await d.store.ticket(conv.ticket_id)
                if t is not None:
                    t2, te = T.responded(t, now, agent_id or "operator")
                    if te:
                        recs.append(t2)
                        evs += te
        recs.insert(0, conv)
    if recs:
        res = await d._commit(recs)
        conv = res[0]
    sender_id = agent_id or "operator"
    msg, ev = await d._add_message(conv, "agent", text, sender_id=sender_id, private=private)
    await d._emit(evs + [ev])
    from .deskapi import message_view

    return message_view(msg, conv, d.names)


async def resolve(d: "Desk", conv: Conversation, now: float, *, by: str | None, reason: str = "resolved") -> dict:
    new, evs = C.resolve(conv, now, by=by, reason=reason)
    recs: list = [new]
    if conv.ticket_id:
        t = await d.store.ticket(conv.ticket_id)
        if t is not None and t.is_open:
            t2, te = T.resolve_ticket(t, now, by=by)
            recs.append(t2)
            evs += te
    (new, *_) = await d._commit(recs)
    if conv.status == Status.ASSIGNED and conv.offered_at is not None:
        d.aht = 0.9 * d.aht + 0.1 * max(1.0, now - conv.offered_at)
    d._schedule(now + d.s.reopen_window, "close", new.id)
    ask = d.s.csat and new.channel != "alarm"
    if not ask:
        evs = [e for e in evs if e.type != CSAT_REQUESTED]
    await d._emit(evs)
    if ask and any(e.type == CSAT_REQUESTED for e in evs):
        text = d.s.csat_message or i18n.text(await d._language(new), "desk.csat")
        _, ev = await d._add_message(new, "system", text, meta={"csat_request": True})
        await d._emit([ev])
    if conv.status == Status.ASSIGNED:
        await d._assign_pass()  # a slot was freed
    return new.summary()


async def _to_agent(d: "Desk", conv: Conversation, target_id: str, now: float, *, by,
                    reason: str = "transfer", agent=None) -> dict:
    """Transfer, operator assignment or pickup: to an agent that is not offline and has room
    (capacity holds for operators too, so "never over capacity" stays an invariant)."""
    target = agent or await d.store.agent(target_id)
    if target is None:
        raise NotFound(f"no agent {target_id!r}")
    if target.status == A.AgentStatus.OFFLINE:
        raise Illegal(f"agent {target_id} is offline")
    load = (await d.store.loads()).get(target_id, 0)
    if load >= target.capacity:
        raise Illegal(f"agent {target_id} is at capacity ({load}/{target.capacity})")
    if reason == "pickup":
        new, evs = C.offer(conv, target.id, now, None, reason="pickup", by=by)
    else:
        deadline = None if (by == target_id or d.s.accept_timeout <= 0) else now + d.s.accept_timeout
        new, evs = C.transfer_to_agent(conv, target.id, now, deadline, by=by)
    stamp = max((a.rr for a in await d.store.agents()), default=0) + 1
    recs = [new, replace(target, rr=stamp)]
    recs += await d._ticket_assignee(new, target.id, now, evs)
    res = await d._commit(recs)
    new = res[0]
    if new.accept_deadline is not None:
        d._schedule(new.accept_deadline, "offer", new.id)
    if conv.team:
        d._dirty_teams.add(conv.team)
    await d._emit(await d._decorate(evs, new))
    if new.accept_deadline is None:
        await d._joined(new)
    if conv.status == Status.ASSIGNED:
        await d._assign_pass()  # the previous holder has a free slot now
    return new.summary()


# --- device alarms ------------------------------------------------------------------------------


async def handle_alarm(d: "Desk", alarm: T.Alarm) -> dict:
    now = d.now()
    existing = await d.store.alarm_ticket(alarm.device_id, alarm.type)
    dec = T.decide_alarm(existing, alarm)
    if dec.action == "ignore":
        return {"action": "ignore", "ticket": None}
    thread = ("alarm-" + alarm.type)[:64]
    title = T.alarm_title(alarm)
    if dec.action == "open":
        recs: list = []
        evs: list[Event] = []
        if await d.store.contact(alarm.device_id) is None:
            recs.append(Contact(alarm.device_id, kind="device", created_at=now, updated_at=now))
        conv = await d.store.thread_conversation(alarm.device_id, thread)
        if conv is not None and conv.status == Status.RESOLVED:
            closed, e = C.close(conv, now, reason="new_alarm")
            recs.append(closed)
            evs += e
            conv = None
        if conv is None or conv.status == Status.CLOSED:
            conv, e = C.open_conversation(f"cv-{await d.store.next_seq('conversation')}", alarm.device_id, thread,
                                          "alarm", now)
            evs += e
        queued = conv.status == Status.BOT
        if queued:
            conv, e = C.enqueue(conv, team=d.s.alarm_team, priority=dec.priority,
                                seq=await d.store.next_seq("queue"), now=now, reason="alarm")
            evs += e
        tid = f"tk-{await d.store.next_seq('ticket')}"
        t, te = T.open_ticket(tid, title, source="alarm", priority=dec.priority, now=now, sla=d.s.sla,
                              conv_id=conv.id, customer_id=alarm.device_id, team=conv.team,
                              assignee=conv.assignee, device_id=alarm.device_id, alarm_type=alarm.type,
                              severity=alarm.severity)
        conv = replace(conv, ticket_id=tid, intent=conv.intent or alarm.type)
        res = await d._commit(recs + [conv, t])
        conv, t = res[-2], res[-1]
        d._schedule_sla(t)
        _, mev = await d._add_message(conv, "system", title, meta={"alarm": alarm.type, "severity": alarm.severity})
        await d._emit(evs + te + [mev])
        if queued:
            await d._queued(conv, announce=False)
        return {"action": "open", "ticket": t.summary(), "conversation": conv.summary()}

    t = existing
    conv = await d.store.conversation(t.conv_id) if t.conv_id else None
    if dec.action == "repeat":
        t2, evs = T.update(t, now, change="repeat", repeats=t.repeats + 1, severity=alarm.severity or t.severity,
                           comment={"at": now, "author": alarm.device_id, "text": f"repeated: {title}"})
        t3, e2 = T.reprioritise(t2, dec.priority, now, d.s.sla)
        evs += e2
        recs = [t3]
        if conv is not None and conv.priority > dec.priority and conv.status in (Status.QUEUED, Status.ASSIGNED):
            recs.append(replace(conv, priority=dec.priority, updated_at=now))
        res = await d._commit(recs)
        t3 = res[0]
        if len(res) > 1:
            conv = res[1]
        d._schedule_sla(t3)
        if conv is not None:
            text = i18n.text(await d._language(conv), "alarm.repeated", count=t3.repeats, title=title)
            _, mev = await d._add_message(conv, "system", text, meta={"alarm": alarm.type, "repeat": t3.repeats})
            evs.append(mev)
        await d._emit(evs)
        return {"action": "repeat", "ticket": t3.summary()}

    # recover
    t2, evs = T.resolve_ticket(t, now, by=alarm.device_id, note=f"recovered: {alarm.message}".rstrip(": "))
    (t2,) = await d._commit([t2])
    await d._emit(evs)
    if conv is not None:
        text = i18n.text(await d._language(conv), "alarm.recovered", title=title)
        _, mev = await d._add_message(conv, "system", text, meta={"alarm": alarm.type, "recovered": True})
        await d._emit([mev])
        if conv.status in (Status.BOT, Status.QUEUED, Status.ASSIGNED):
            conv = replace(conv, ticket_id=None)  # the ticket is already resolved above
            await resolve(d, conv, now, by=alarm.device_id, reason="alarm_recovered")
    return {"action": "recover", "ticket": t2.summary()}


# --- raw topic traffic ---------------------------------------------------------------------------


def _decode(payload: bytes) -> dict:
    """A JSON object with a "type", or any other UTF-8 text taken as a message."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("payload: not UTF-8 text") from None
    s = text.strip()
    if s.startswith("{"):
        # An MQTT payload has no error frame of its own: lone surrogates ("\ud800", valid
        # JSON, not text) become U+FFFD and the message is kept; too deep is refused.
        try:
            doc = edge.loads_lenient(s, max_bytes=len(payload), max_depth=edge.MAX_DEPTH)
        except edge.EdgeError as e:
            if e.code == "too_deep":
                raise Invalid(f"payload: {e.message}") from None
            raise Invalid("payload: starts with '{' but is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
            raise Invalid("payload: a JSON payload needs a string field \"type\"")
        return doc
    return {"type": "message", "text": text}


async def _device_language(d: "Desk", customer_id: str, tag: Any) -> None:
    lang = i18n.normalize(tag)
    if lang is None:
        raise Invalid(f"language: expected one of {', '.join(i18n.LANGUAGES)} (or a tag such as zh-Hans, en-GB)")
    contact = await d.store.contact(customer_id)
    if contact is None or contact.attributes.get("language") != lang:
        await d.set_contact(customer_id, attributes={"language": lang}, by=customer_id)


async def ingest(d: "Desk", topic: str, payload: bytes) -> None:
    p = d.s.topics.parse(topic)
    if p is None:
        return
    reply_to = None
    try:
        if p.kind == "alarm":
            await d.device_alarm(payload, device=p.device)
            return
        if p.kind == "customer_in":
            reply_to = d.s.topics.customer_events(p.customer, p.thread)
            doc = _decode(payload)
            kind = doc.pop("type")
            if kind == "message":
                if doc.get("language") is not None:  # a device names its language: system messages follow it
                    await _device_language(d, p.customer, doc["language"])
                channel = doc.get("channel") if doc.get("channel") in ("mqtt", "chat", "api") else "mqtt"
                await d.customer_message(channel, p.customer, doc.get("text"), thread=p.thread,
                                         meta=doc.get("meta") if isinstance(doc.get("meta"), dict) else None,
                                         answer_later=True)  # the sender's lane never waits for the classifier
            else:
                doc.pop("conversation", None)
                doc.pop("ref", None)
                await d.customer_event(p.customer, p.thread, kind, **doc)
            return
        reply_to = d.s.topics.agent_inbox(p.agent)
        doc = _decode(payload)
        kind = doc.pop("type")
        action = doc.pop("action", None) if kind == "action" else kind
        action = {"message": "reply", "status": "status"}.get(action, action)
        if p.kind == "agent_conv":
            conv = p.conv
            if action == "reply" and doc.get("private"):
                action = "note"
        else:
            conv = doc.pop("conversation", None)
        doc.pop("conversation", None)
        doc.pop("ref", None)
        doc.pop("private", None)
        await d.agent_action(p.agent, action, conv, **doc)
    except (DeskError, ValueError, TypeError) as e:
        code = getattr(e, "code", "invalid_field")
        log.info("refused %s on %s: %s", payload[:80], topic, e)
        if reply_to is not None:
            frame = {"type": "error", "code": code, "message": str(e), "topic": topic}
            await d.publish(reply_to, json.dumps(frame).encode())

