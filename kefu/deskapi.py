"""The desk's query side: the views the bridge (REST API, agent console, widget) reads.

Method names and shapes follow ``kefu.bridge.deskport.Desk`` so ``kefu/app.py`` can
hand the desk to the bridge directly. Everything returned is a JSON-able dict; errors
are ``kefu.errors`` classes, each carrying the /chat error ``code`` and HTTP ``status``.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from .conversations import Conversation, Message, Status
from .errors import NotFound
from .webhooks import Endpoint

if TYPE_CHECKING:
    from .desk import Desk

Json = dict[str, Any]


def message_view(m: Message, conv: Conversation, names: dict[str, str]) -> Json:
    """A message as the /chat ``message`` object."""
    sid = m.sender_id or m.sender
    name = names.get(sid, sid) if m.sender == "agent" else {"bot": "Bot", "system": "System"}.get(m.sender, sid)
    return {
        "id": f"{m.conv_id}:{m.seq}",
        "seq": m.seq,
        "conversation": m.conv_id,
        "author": {"kind": m.sender, "id": sid, "name": name},
        "text": m.text,
        "private": m.private,
        "channel": conv.channel,
        "ts": m.at,
        "meta": m.meta,
    }


class DeskQueries:
    """Mixed into ``Desk``; reads only (writes go through Desk's entry points)."""

    def topic_prefix(self: "Desk") -> str:
        return self.s.topics.prefix

    async def agent(self: "Desk", agent_id: str) -> Json | None:
        a = await self.store.agent(agent_id)
        if a is None:
            return None
        return {**a.summary(), "load": len(await self.store.assigned_to(agent_id))}

    async def agents(self: "Desk") -> list[Json]:
        loads = await self.store.loads()
        return [{**a.summary(), "load": loads.get(a.id, 0)} for a in await self.store.agents()]

    async def touch_customer(self: "Desk", customer_id: str, profile: Json) -> Json:
        fields = {k: str(v) for k, v in profile.items() if k in ("name", "email", "phone") and v}
        attrs = {k: v for k, v in profile.items() if k not in ("name", "email", "phone", "tier", "kind")}
        return await self.set_contact(customer_id, fields=fields, attributes=attrs, by=customer_id)

    async def conversations(self: "Desk", *, viewer: str | None = None, filters: Json | None = None) -> list[Json]:
        f = filters or {}
        status = f.get("status")
        try:
            st = Status(status) if status else None
        except ValueError:
            from .errors import Invalid

            raise Invalid(f"status: expected one of {', '.join(s.value for s in Status)}") from None
        convs = await self.store.conversations(status=st, customer_id=f.get("customer"))
        who = f.get("assignee")
        if who == "me":
            who = viewer
        out = []
        q = (f.get("q") or "").lower()
        for c in convs:
            if who == "none" and c.assignee is not None:
                continue
            if who not in (None, "none") and c.assignee != who:
                continue
            if f.get("team") and c.team != f["team"]:
                continue
            if f.get("label") and f["label"] not in c.labels:
                continue
            if q and q not in c.customer_id.lower() and q not in (c.intent or "").lower() and q not in c.id:
                continue
            out.append(c.summary())
        return out

    async def conversation(self: "Desk", conv_id: str) -> Json:
        c = await self.store.conversation(conv_id)
        if c is None:
            raise NotFound(f"no conversation {conv_id!r}")
        view = c.summary()
        if c.status == Status.QUEUED:
            pos, eta = await self._position_of(c)
            view.update(position=pos, eta_s=eta)
        return view

    async def open_conversation_of(self: "Desk", customer_id: str, thread: str) -> Json | None:
        c = await self.store.thread_conversation(customer_id, thread)
        if c is None or c.status == Status.CLOSED:
            return None
        return c.summary()

    async def messages(
        self: "Desk", conv_id: str, *, before: int | None = None, limit: int = 50, include_private: bool = False
    ) -> tuple[list[Json], bool]:
        c = await self.store.conversation(conv_id)
        if c is None:
            raise NotFound(f"no conversation {conv_id!r}")
        msgs = await self.store.messages(conv_id, before=before, limit=limit)
        more = bool(msgs) and msgs[0].seq > 1
        return [message_view(m, c, self.names) for m in msgs if include_private or not m.private], more

    async def agent_command(self: "Desk", agent_id: str | None, action: str, conv_id: str | None, data: Json) -> Json:
        data = dict(data)
        if action == "message":
            action = "note" if data.pop("private", False) else "reply"
        return await self.agent_action(agent_id, action, conv_id, **data)

    async def contacts(self: "Desk", *, q: str | None = None) -> list[Json]:
        q = (q or "").lower()
        out = []
        for c in await self.store.contacts():
            if q and q not in c.id.lower() and q not in c.name.lower() and q not in c.email.lower():
                continue
            out.append(c.summary())
        return out

    async def contact(self: "Desk", customer_id: str) -> Json:
        c = await self.store.contact(customer_id)
        if c is None:
            raise NotFound(f"no contact {customer_id!r}")
        return {**c.summary(), "sidebar": await self.sidebar(customer_id, c)}

    async def tickets(self: "Desk", *, filters: Json | None = None) -> list[Json]:
        f = filters or {}
        out = []
        for t in await self.store.tickets(open_only=f.get("status") == "open"):
            if f.get("status") not in (None, "open") and t.status.value != f["status"]:
                continue
            if f.get("assignee") and t.assignee != f["assignee"]:
                continue
            if f.get("source") and t.source != f["source"]:
                continue
            out.append(t.summary())
        return out

    async def ticket(self: "Desk", ticket_id: str) -> Json:
        t = await self.store.ticket(ticket_id)
        if t is None:
            raise NotFound(f"no ticket {ticket_id!r}")
        return {**t.summary(), "comments": list(t.comments)}

    async def canned_responses(self: "Desk") -> list[Json]:
        return [{"code": k, "text": v} for k, v in sorted(self.s.canned.items())]

    async def labels(self: "Desk") -> list[Json]:
        if self.s.labels:
            return [{"name": x} for x in sorted(self.s.labels)]
        seen = set()
        for c in await self.store.conversations():
            seen |= c.labels
        return [{"name": x} for x in sorted(seen)]

    async def webhooks(self: "Desk") -> list[Json]:
        return [ep.view() for ep in self.webhooks.endpoints]

    async def add_webhook(self: "Desk", url: str, events: list[str]) -> Json:
        """A new endpoint with a fresh secret, returned once (only its receiver should keep it)."""
        from .errors import Invalid
        from .events import WEBHOOK_EVENTS

        secret = secrets.token_urlsafe(32)
        wid = f"wh-{secrets.token_hex(4)}"
        try:
            ep = Endpoint(wid, url, secret, frozenset(events or WEBHOOK_EVENTS))
        except Exception as e:  # noqa: BLE001 - bad URL or event names
            raise Invalid(str(e)) from None
        save = getattr(self.store, "save_record", None)
        if save is not None:  # in the record (secret sealed) before it is confirmed
            await save("webhook", wid, 1, {"url": url, "secret": secret, "events": sorted(ep.events)}, secret=True)
        self.webhooks.add(ep)
        return {**ep.view(), "secret": secret}

    async def delete_webhook(self: "Desk", webhook_id: str) -> None:
        if webhook_id not in {ep.id for ep in self.webhooks.endpoints}:
            raise NotFound(f"no webhook {webhook_id!r}")
        save = getattr(self.store, "save_record", None)
        if save is not None:
            await save("webhook", webhook_id, 2, {"deleted": True})
        try:
            self.webhooks.remove(webhook_id)
        except KeyError:
            raise NotFound(f"no webhook {webhook_id!r}") from None

    async def health(self: "Desk") -> Json:
        return {
            "ok": self._ready,
            "waiting": len(await self.store.waiting()),
            "agents_online": sum(1 for a in await self.store.agents() if a.status.value == "online"),
            "published": self.published,
            "publish_errors": self.publish_errors,
        }
