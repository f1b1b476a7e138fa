"""The /chat protocol: JSON frames for browsers, mapped onto kefu's conversation topics.

A browser that should not carry an MQTT library (the widget, the agent console) speaks
small JSON frames (schemas in bridge/schemas/, examples in docs/chat-protocol.md). This
module is the translation, nothing more:

* a **visitor** is a customer exactly like a device: its messages, typing, read
  receipts and ratings reach the desk entry points that a device's traffic on
  ``{p}/c/{customer}/{thread}/in`` reaches (``customer_message``, ``customer_event``),
  and it hears ``.../out`` and ``.../events`` — the topics a device subscribes to. So a
  device and a browser of the same customer on the same thread share one conversation.
  (Calling the entry point rather than publishing on ``.../in`` lets the ``ack`` carry
  the stored message and the conversation, or the desk's refusal.)
* an **agent** works through the desk's command API (``Desk.agent_action``), which
  answers with the result or a refusal the console can show, and hears the desk's
  event stream (``{p}/desk/events``) for its live lists.

Abuse handling, per connection: frames over ``chat.close_frame_bytes`` close with
1009; frames over ``chat.max_frame_bytes``, malformed frames and frames beyond the
token-bucket rate limit get an error frame and count as errors; more than
``chat.max_errors`` errors close with 1008. No frame for ``chat.idle_timeout`` seconds
closes with 1000 ("idle timeout"); the widget pings every 25 s while open.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from kefu import edge

from .deskport import Bus, Desk, DeskError
from .frames import FrameError, parse_client_frame
from .identity import AuthError, Identities
from .visibility import Visibility, visible
from .ws import CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, ConnInfo, origin_allowed

log = logging.getLogger("kefu.bridge.chat")

# ---------------------------------------------------------------------------------------
# Wire mapping between the core's topic payloads and /chat frames. Kept in one place so
# a change in the desk's payloads (docs/desk.md) is one edit here.
# ---------------------------------------------------------------------------------------

AUTHOR_KINDS = {"customer", "agent", "bot", "system"}
PASS_THROUGH = {"message", "conversation", "queue", "typing", "read", "agent", "error"}


def message_view(m: dict) -> dict:
    """Core message dict (conv_id, seq, sender, sender_id, text, private, at, meta) -> /chat message.
    A view already in /chat shape (the desk's ``message_view``) passes through."""
    if "author" in m and "id" in m:
        return m
    kind = m.get("sender", "system")
    author = {"kind": kind if kind in AUTHOR_KINDS else "system", "id": str(m.get("sender_id") or kind)}
    meta = m.get("meta") or {}
    if meta.get("sender_name"):
        author["name"] = str(meta["sender_name"])
    out = {
        "id": f"{m.get('conv_id')}:{m.get('seq')}" if "seq" in m else str(m.get("id", "")),
        "conversation": str(m.get("conv_id") or m.get("conversation") or ""),
        "author": author,
        "text": str(m.get("text", "")),
        "private": bool(m.get("private", False)),
        "ts": float(m.get("at", m.get("ts", 0.0)) or 0.0),
    }
    if meta.get("channel") or m.get("channel"):
        out["channel"] = str(meta.get("channel") or m.get("channel"))
    if meta:
        out["meta"] = meta
    return out


def conversation_view(c: dict) -> dict:
    out = {
        "id": str(c["id"]),
        "status": str(c.get("status", "")),
        "customer": str(c.get("customer_id") or c.get("customer") or ""),
        "assignee": c.get("assignee"),
        "team": c.get("team"),
        "priority": c.get("priority"),
        "labels": list(c.get("labels") or []),
        "channel": str(c.get("channel") or ""),
    }
    for k in ("created_at", "updated_at"):
        if isinstance(c.get(k), (int, float)):
            out[k] = float(c[k])
    for k in ("thread", "intent", "sentiment", "handoff_reason", "accepted", "ticket_id", "csat", "last_message", "unread"):
        if k in c:
            out[k] = c[k]
    return out


_CONV_EVENTS = {
    "conversation_created": "created",
    "conversation_status_changed": "status_changed",
    "conversation_assigned": "assigned",
    "assignment_accepted": "assigned",
    "labels_changed": "labels",
    "csat_received": "updated",  # the customer rated: the console shows the rating
}


def event_frames(evt: dict, *, for_agent: bool) -> list[dict]:
    """Core event ({"event", "at", "data"}) or bare message dict -> /chat frames."""
    t = evt.get("type")
    if t in PASS_THROUGH:
        # The desk publishes /chat frames on the customer and agent topics (kefu/fanout.py).
        if t == "message" and evt["message"].get("private") and not for_agent:
            return []
        return [evt]
    if "event" not in evt:
        return []
    kind, data = evt["event"], evt.get("data") or {}
    conv = data.get("conversation") if isinstance(data.get("conversation"), dict) else None
    conv_id = str(data.get("conv_id") or (conv or {}).get("id") or data.get("id") or "")
    if kind in _CONV_EVENTS:
        view = conversation_view(conv if conv else {**data, "id": conv_id})
        frame = {"type": "conversation", "event": _CONV_EVENTS[kind], "conversation": view}
        if kind == "csat_received" and isinstance(data.get("rating"), int):
            frame["rating"] = data["rating"]
            if isinstance(data.get("comment"), str) and data["comment"]:
                frame["comment"] = data["comment"]
        return [frame]
    if kind == "message_created":
        m = data.get("message") if isinstance(data.get("message"), dict) else data
        if m.get("private") and not for_agent:
            return []
        return [{"type": "message", "message": message_view(m)}]
    if kind == "queue_position":
        return [{"type": "queue", "conversation": conv_id, "position": int(data.get("position", 0)),
                 "eta_s": data.get("eta_s", data.get("estimated_wait"))}]
    if kind in ("typing", "read"):
        who = data.get("author") if isinstance(data.get("author"), dict) else {"kind": "system", "id": ""}
        if kind == "typing":
            return [{"type": "typing", "conversation": conv_id, "author": who, "on": bool(data.get("on", True))}]
        return [{"type": "read", "conversation": conv_id, "author": who, "up_to": str(data.get("up_to", ""))}]
    if kind == "agent_status_changed" and for_agent:
        a = data.get("agent") if isinstance(data.get("agent"), dict) else data
        return [{"type": "agent", "agent": {"id": str(a.get("id") or a.get("agent_id") or ""),
                                            "status": str(a.get("status", "offline")),
                                            **({"name": a["name"]} if a.get("name") else {})}}]
    return []


# ---------------------------------------------------------------------------------------
# Connection handling
# ---------------------------------------------------------------------------------------


class Closing(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    e: BaseException = group
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class ChatServer:
    """The ``chat_handler`` for ``bridge.ws``: one ``handle`` call per /chat connection."""

    def __init__(self, cfg, identities: Identities, desk: Desk, bus: Bus) -> None:
        self.cfg = cfg
        self.c = cfg.chat
        self.ids = identities
        self.desk = desk
        self.bus = bus
        self.prefix = desk.topic_prefix()
        self.thread = cfg.widget.thread
        self.visibility = Visibility(cfg, desk)
        self.connections = 0
        self.frames_in = 0

    async def handle(self, ws: WebSocketConnection, info: ConnInfo) -> None:
        self.connections += 1
        s = _Session(self, ws, info)
        try:
            await s.run()
        except* Closing as group:
            c = _first_leaf(group)
            with trio.move_on_after(2) as cs:
                cs.shield = True
                await ws.aclose(c.code, c.reason)
        except* ConnectionClosed:
            pass  # the browser went away: nothing to answer
        finally:
            self.connections -= 1


class _Session:
    def __init__(self, server: ChatServer, ws: WebSocketConnection, info: ConnInfo) -> None:
        self.srv = server
        self.ws = ws
        self.info = info
        self.errors = 0
        self.bucket = TokenBucket(server.c.rate_per_second, server.c.rate_burst, trio.current_time())
        self.role: str | None = None
        self.id = ""
        self.conv_id: str | None = None
        self.send_lock = trio.Lock()
        # An agent console: its teams (None: sees everything) and what it knows of the
        # conversations it hears about (id -> (team, assignee)), to filter the live stream.
        self.teams: frozenset[str] | None = None
        self.seen: dict[str, tuple[str | None, str | None]] = {}

    # --- I/O helpers -----------------------------------------------------------------
    async def send(self, frame: dict) -> None:
        async with self.send_lock:
            # dumps_text: always valid UTF-8, whatever another party's text contained.
            await self.ws.send_message(edge.dumps_text(frame))

    async def refuse(self, e: FrameError | DeskError | AuthError, ref: str | None = None, *, counts: bool = True) -> None:
        if isinstance(e, FrameError):
            frame = e.frame()
        elif isinstance(e, AuthError):
            frame = {"type": "error", "code": "auth_failed", "message": str(e)}
        else:
            frame = {"type": "error", "code": e.code, "message": str(e) or e.code}
        if ref and "ref" not in frame:
            frame["ref"] = ref
        await self.send(frame)
        if counts:
            self.errors += 1
            if self.errors > self.srv.c.max_errors:
                raise Closing(CLOSE_POLICY, f"too many bad frames ({self.errors})")

    async def next_frame(self, timeout: float) -> dict | None:
        """The next valid frame, or None when the peer went away; errors answered inline."""
        while True:
            with trio.move_on_after(timeout):
                try:
                    raw = await self.ws.get_message()
                except ConnectionClosed:
                    return None
                break
            raise Closing(CLOSE_NORMAL, "idle timeout" if self.role else "authentication timeout")
        self.srv.frames_in += 1
        size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8"))
        if size > self.srv.c.close_frame_bytes:
            raise Closing(CLOSE_TOO_BIG, f"frame of {size} bytes is over {self.srv.c.close_frame_bytes}")
        if not self.bucket.take(trio.current_time()):
            await self.refuse(FrameError("rate_limited", f"over {self.srv.c.rate_per_second:g} frames per second; slow down"))
            return {}
        try:
            frame = parse_client_frame(raw, self.srv.c.max_frame_bytes)
        except FrameError as e:
            await self.refuse(e)
            return {}
        text = frame.get("text")
        if isinstance(text, str) and len(text) > self.srv.c.max_text_chars:
            await self.refuse(FrameError("too_large", f"text of {len(text)} characters is over {self.srv.c.max_text_chars}", "text", frame.get("ref")))
            return {}
        return frame

    # --- lifecycle -------------------------------------------------------------------
    async def run(self) -> None:
        deadline = trio.current_time() + self.srv.c.auth_timeout
        while self.role is None:
            frame = await self.next_frame(max(0.0, deadline - trio.current_time()))
            if frame is None:
                return
            if not frame:
                continue
            if frame["type"] == "ping":
                await self.send({"type": "pong", **({"ref": frame["ref"]} if "ref" in frame else {})})
                continue
            if frame["type"] != "auth":
                await self.refuse(FrameError("auth_required", "send an auth frame first", "type", frame.get("ref")))
                continue
            try:
                ready = await (self.auth_visitor(frame) if frame["role"] == "visitor" else self.auth_agent(frame))
            except (AuthError, DeskError) as e:
                await self.refuse(e, frame.get("ref"), counts=False)
                raise Closing(CLOSE_POLICY, "authentication failed") from None
            if "ref" in frame:
                ready["ref"] = frame["ref"]
            ready["limits"] = {
                "max_frame_bytes": self.srv.c.max_frame_bytes,
                "max_text_chars": self.srv.c.max_text_chars,
                "rate_per_second": self.srv.c.rate_per_second,
                "idle_timeout": self.srv.c.idle_timeout,
            }
            await self.send(ready)
        if self.role == "visitor":
            filters = [self.topic("out"), self.topic("events")]
        else:
            # Everything, as {"type": "event", ...}: the console's All list is live too.
            filters = [f"{self.srv.prefix}/desk/events"]
        async with self.srv.bus.subscribe(filters) as events:
            if self.role == "agent":
                await self.srv.desk.agent_connected(self.id)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self.forward, events)
                    await self.serve_frames()
                    nursery.cancel_scope.cancel()
            finally:
                if self.role == "agent":
                    # The last open console of an agent closing sets it offline (the desk
                    # requeues its conversations); shielded so a cancelled connection still tells.
                    with trio.move_on_after(2) as cs:
                        cs.shield = True
                        try:
                            await self.srv.desk.agent_disconnected(self.id)
                        except DeskError as e:
                            log.info("chat: agent %s disconnect: %s", self.id, e)

    def topic(self, leaf: str) -> str:
        return f"{self.srv.prefix}/c/{self.id}/{self.srv.thread}/{leaf}"

    async def auth_visitor(self, frame: dict) -> dict:
        site = self.srv.ids.site(frame["site"])
        if site is None:
            raise AuthError("unknown site token")
        if not origin_allowed(self.info.origin, list(site.allowed_origins)):
            raise AuthError(f"origin {self.info.origin} is not allowed for site {site.name}")
        vid, token, identified = self.srv.ids.visitor(
            site, identity=frame.get("identity"), visitor_token=frame.get("visitor_token")
        )
        self.role, self.id = "visitor", vid
        fields, attrs = {}, {}
        ident = frame.get("identity") or {}
        profile = frame.get("profile") or {}
        for k in ("name", "email"):
            v = ident.get(k) or profile.get(k)
            if v:
                fields[k] = v
        for k in ("page", "locale", "language", "user_agent"):  # language: the widget's, for the desk's messages
            if profile.get(k):
                attrs[k] = profile[k]
        attrs.update({"site": site.name, "identified": identified})
        contact = await self.srv.desk.set_contact(vid, fields=fields or None, attributes=attrs)
        conv = await self.srv.desk.open_conversation_of(vid, self.srv.thread)
        self.conv_id = conv["id"] if conv else None
        out = {"type": "ready", "role": "visitor", "id": vid, "visitor_token": token,
               "conversation": conversation_view(conv) if conv else None}
        if contact.get("name"):
            out["name"] = str(contact["name"])
        return out

    async def auth_agent(self, frame: dict) -> dict:
        info = self.srv.ids.token(frame["token"])
        if info is None or info.role != "agent" or not info.agent:
            raise AuthError("unknown token, or not an agent's token")
        agent = await self.srv.desk.agent(info.agent)
        if agent is None:
            raise AuthError(f"agent {info.agent} is not configured")
        self.role, self.id = "agent", info.agent
        self.teams = await self.srv.visibility.teams_of(info.agent)
        return {"type": "ready", "role": "agent", "id": info.agent, "name": str(agent.get("name") or info.agent),
                "agent": agent}

    # --- server -> client ------------------------------------------------------------
    async def forward(self, events: trio.MemoryReceiveChannel) -> None:
        agent = self.role == "agent"
        async for topic, payload in events:
            try:
                evt = json.loads(payload)
            except ValueError:
                log.warning("chat: undecodable payload on %s", topic)
                continue
            if not isinstance(evt, dict):
                continue
            for frame in event_frames(evt, for_agent=agent):
                if not agent:
                    self.track(frame)
                elif not await self.agent_may_see(frame):
                    continue
                try:
                    await self.send(frame)
                except ConnectionClosed:
                    return  # the reader side notices too and ends the session
        # The subscription was closed under us: this browser fell too far behind.
        raise Closing(1013, "too slow; reconnect and fetch history")

    async def agent_may_see(self, frame: dict) -> bool:
        """The live stream: a console receives only frames of conversations its agent may read."""
        if self.teams is None:
            return True
        t = frame["type"]
        if t == "conversation":
            c = frame["conversation"]
            before = self.seen.get(c["id"])
            self.seen[c["id"]] = (c.get("team"), c.get("assignee"))
            if len(self.seen) > 10_000:
                self.seen.pop(next(iter(self.seen)))
            # Visible now, or it was until this change (the console drops it from its lists).
            return visible(c.get("team"), c.get("assignee"), self.id, self.teams) or (
                before is not None and visible(before[0], before[1], self.id, self.teams))
        if t == "message":
            conv = frame["message"].get("conversation")
        elif t in ("typing", "read", "queue"):
            conv = frame.get("conversation")
        else:
            return True  # agent presence: not a conversation's content
        if not conv:
            return False
        known = self.seen.get(conv)
        if known is None:
            try:
                c = await self.srv.desk.conversation(conv)
            except DeskError:
                return False
            known = self.seen[conv] = (c.get("team"), c.get("assignee"))
        return visible(known[0], known[1], self.id, self.teams)

    def track(self, frame: dict) -> None:
        if frame["type"] == "conversation":
            self.conv_id = frame["conversation"]["id"]
        elif frame["type"] == "message" and frame["message"]["conversation"]:
            self.conv_id = frame["message"]["conversation"]

    # --- client -> server ------------------------------------------------------------
    async def serve_frames(self) -> None:
        while True:
            frame = await self.next_frame(self.srv.c.idle_timeout)
            if frame is None:
                return
            if not frame:
                continue
            ref = frame.get("ref")
            try:
                await (self.visitor_frame(frame) if self.role == "visitor" else self.agent_frame(frame))
            except DeskError as e:
                await self.refuse(e, ref)
            except FrameError as e:
                await self.refuse(e)

    def own_conversation(self, frame: dict) -> str:
        conv = frame.get("conversation")
        if conv is None:
            if self.conv_id is None:
                raise FrameError("not_found", "no conversation yet; send a message first", "conversation", frame.get("ref"))
            return self.conv_id
        return conv

    async def visitor_frame(self, f: dict) -> None:
        t, ref, d = f["type"], f.get("ref"), self.srv.desk
        who, thread = self.id, self.srv.thread
        extra: dict[str, Any] = {}
        if t == "ping":
            await self.send({"type": "pong", **({"ref": ref} if ref else {})})
            return
        if t in ("action", "status", "auth"):
            raise FrameError("forbidden", f"{t} frames are for agents" if t != "auth" else "already authenticated", "type", ref)
        if "conversation" in f and t != "history":
            await self.check_owner(f["conversation"], ref)
        if t == "message":
            if f.get("private"):
                raise FrameError("forbidden", "visitors cannot write private notes", "private", ref)
            # The same entry point a device's message on .../in reaches (kefu/deskactions.ingest).
            # answer_later: the ack follows the stored message; the bot's answer comes when it is ready.
            res = await d.customer_message("chat", who, f["text"], thread=thread, meta={"ref": ref} if ref else None,
                                           answer_later=True)
            self.conv_id = res["conversation"]["id"]
            extra = {"message": message_view(res["message"]), "conversation": conversation_view(res["conversation"])}
        elif t == "typing":
            await d.customer_event(who, thread, "typing", on=f["on"])
        elif t == "read":
            await d.customer_event(who, thread, "read", up_to=f["up_to"])
        elif t == "csat":
            await d.customer_event(who, thread, "csat", rating=f["rating"], comment=f.get("comment"))
        elif t == "history":
            conv = self.own_conversation(f)
            await self.check_owner(conv, ref)
            await self.send_history(conv, f, include_private=False)
            return
        if ref:
            await self.send({"type": "ack", "ref": ref, **extra})

    async def check_owner(self, conv_id: str, ref: str | None) -> dict:
        conv = await self.srv.desk.conversation(conv_id)
        if str(conv.get("customer") or conv.get("customer_id")) != self.id:
            raise FrameError("forbidden", "not your conversation", "conversation", ref)
        return conv

    async def send_history(self, conv: str, f: dict, *, include_private: bool) -> None:
        limit = min(int(f.get("limit", self.srv.c.history_page)), self.srv.c.history_page)
        before = _seq(f["before"], f.get("ref")) if "before" in f else None
        msgs, more = await self.srv.desk.messages(conv, before=before, limit=limit, include_private=include_private)
        frame: dict[str, Any] = {"type": "history", "conversation": conv, "messages": [message_view(m) for m in msgs],
                                 "more": more}
        if f.get("ref"):
            frame["ref"] = f["ref"]
        await self.send(frame)

    async def agent_frame(self, f: dict) -> None:
        t, ref, d = f["type"], f.get("ref"), self.srv.desk
        extra: dict[str, Any] = {}
        if t == "ping":
            await d.agent_action(self.id, "keepalive")
            await self.send({"type": "pong", **({"ref": ref} if ref else {})})
            return
        if t in ("auth", "csat"):
            raise FrameError("forbidden", "already authenticated" if t == "auth" else "csat frames are for visitors", "type", ref)
        if t in ("message", "typing", "read", "history", "action") and "conversation" not in f:
            raise FrameError("missing_field", "missing field conversation", "conversation", ref)
        if t == "message":
            res = await d.agent_action(self.id, "note" if f.get("private") else "reply", f["conversation"], text=f["text"])
            if isinstance(res, dict) and "author" in res:
                extra = {"message": message_view(res)}
            elif isinstance(res, dict) and isinstance(res.get("message"), dict):
                extra = {"message": message_view(res["message"])}
        elif t == "typing":
            await d.agent_action(self.id, "typing", f["conversation"], on=f["on"])
        elif t == "read":
            await d.agent_action(self.id, "read", f["conversation"], up_to=f["up_to"])
        elif t == "history":
            if not await self.srv.visibility.may_read(self.id, f["conversation"]):
                raise FrameError("not_found", f"no conversation {f['conversation'][:40]!r}", "conversation", ref)
            await self.send_history(f["conversation"], f, include_private=True)
            return
        elif t == "status":
            await d.agent_action(self.id, "status", None, status=f["status"])
        elif t == "action":
            data = {k: f[k] for k in ("agent", "team", "labels") if k in f}
            res = await d.agent_action(self.id, f["action"], f["conversation"], **data)
            if isinstance(res, dict) and "status" in res and "id" in res:
                extra = {"conversation": conversation_view(res)}
        if ref:
            await self.send({"type": "ack", "ref": ref, **extra})


def _seq(mid: str, ref: str | None) -> int:
    """A message id ("<conversation>:<seq>", as the desk issues them) -> its sequence number."""
    tail = mid.rpartition(":")[2]
    if tail.isdigit():
        return int(tail)
    raise FrameError("invalid_field", f"message id {mid[:40]!r} is not one this server issued", "before", ref)
