"""Which topics an event is published on, and with what payload. Pure.

The payloads use the same JSON shapes as the bridge's /chat server frames
(``message``, ``conversation``, ``queue``, ``typing``, ``read``, ``agent``), so the
bridge forwards them to browsers unchanged and a device reads the same JSON.

Audiences:

* the customer (``.../out`` for bot/agent/system messages, ``.../events`` for the
  rest) sees a reduced conversation view -- no intent, sentiment, labels or notes;
* the assigned agent's ``inbox`` sees everything about its conversations, private
  notes included; a previous assignee hears that it lost the conversation;
* a team's ``queue`` topic hears every conversation entering or leaving its queue;
* ``{p}/desk/events`` carries every event as ``{"type": "event", "event", "at", "data"}``
  for consoles, dashboards and audit.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import events as E
from .events import Event
from .topics import Topics

Pub = tuple[str, dict[str, Any]]

_CUSTOMER_KEYS = ("id", "customer", "thread", "channel", "status", "assignee", "created_at", "updated_at")

_CONV_EVENT = {
    E.CONVERSATION_CREATED: "created",
    E.CONVERSATION_STATUS_CHANGED: "status_changed",
    E.CONVERSATION_ASSIGNED: "assigned",
    E.ASSIGNMENT_ACCEPTED: "assigned",
    E.LABELS_CHANGED: "labels",
    E.CSAT_REQUESTED: "updated",
    E.CSAT_RECEIVED: "updated",
}


def customer_view(conv: Mapping[str, Any], agent_names: Mapping[str, str]) -> dict[str, Any]:
    out = {k: conv.get(k) for k in _CUSTOMER_KEYS}
    if out.get("assignee"):
        out["assignee_name"] = agent_names.get(out["assignee"], out["assignee"])
    return out


class Fanout:
    def __init__(self, topics: Topics, agent_names: Mapping[str, str]) -> None:
        self.t = topics
        self.names = agent_names

    def _cust(self, conv: Mapping[str, Any], kind: str = "events") -> str:
        if kind == "out":
            return self.t.customer_out(conv["customer"], conv["thread"])
        return self.t.customer_events(conv["customer"], conv["thread"])

    def route(self, ev: Event) -> list[Pub]:
        d = ev.data
        out: list[Pub] = [(self.t.desk_events(), {"type": "event", "event": ev.type, "at": ev.at, "data": d})]
        conv = d.get("conversation")
        t = ev.type

        if t == E.MESSAGE_CREATED:
            msg = d["message"]
            frame = {"type": "message", "message": msg}
            if not msg.get("private") and msg["author"]["kind"] != "customer":
                out.append((self._cust(conv, "out"), frame))
            if conv.get("assignee"):
                out.append((self.t.agent_inbox(conv["assignee"]), frame))
            return out

        if t in (E.TYPING, E.READ):
            frame = {"type": t, "conversation": conv["id"], "author": d["author"]}
            frame.update({"on": d["on"]} if t == E.TYPING else {"up_to": d["up_to"]})
            if d["author"]["kind"] == "customer":
                if conv.get("assignee"):
                    out.append((self.t.agent_inbox(conv["assignee"]), frame))
            else:
                out.append((self._cust(conv), frame))
            return out

        if t == E.QUEUE_POSITION:
            out.append((
                self._cust(conv),
                {"type": "queue", "conversation": conv["id"], "position": d["position"], "eta_s": d["eta_s"]},
            ))
            return out

        if t == E.AGENT_STATUS_CHANGED:
            out.append((self.t.agent_inbox(d["agent"]["id"]), {"type": "agent", "agent": d["agent"]}))
            return out

        if t in (E.TICKET_CREATED, E.TICKET_UPDATED, E.SLA_BREACHED):
            tk = d["ticket"]
            if tk.get("assignee"):
                frame = {"type": "ticket", "event": t, "ticket": tk}
                if t == E.SLA_BREACHED:
                    frame["sla"] = d["sla"]
                out.append((self.t.agent_inbox(tk["assignee"]), frame))
            return out

        if conv is None or t not in _CONV_EVENT:
            return out  # contact updates and the like: desk/events only

        name = _CONV_EVENT[t]
        agent_frame = {"type": "conversation", "event": name, "conversation": conv}
        for extra in ("reason", "offer", "sidebar", "transcript", "rating", "comment", "from", "to"):
            if extra in d:
                agent_frame[extra] = d[extra]
        cust_frame = {"type": "conversation", "event": name, "conversation": customer_view(conv, self.names)}

        if t == E.CONVERSATION_ASSIGNED:
            out.append((self.t.agent_inbox(d["agent"]), agent_frame))
            return out
        if t == E.ASSIGNMENT_ACCEPTED:
            out.append((self._cust(conv), cust_frame))
            out.append((self.t.agent_inbox(d["agent"]), {**agent_frame, "event": "updated", "accepted": True}))
            return out
        if t == E.CSAT_REQUESTED:
            out.append((self._cust(conv), {**cust_frame, "csat_request": True}))
            return out
        if t == E.CSAT_RECEIVED:
            if d.get("agent"):
                out.append((self.t.agent_inbox(d["agent"]), agent_frame))
            return out
        if t == E.CONVERSATION_CREATED:
            out.append((self._cust(conv), cust_frame))
            return out
        if t == E.LABELS_CHANGED:
            if conv.get("assignee"):
                out.append((self.t.agent_inbox(conv["assignee"]), agent_frame))
            return out

        # status changed
        out.append((self._cust(conv), {**cust_frame, "reason": d.get("reason")}))
        if conv.get("assignee"):
            out.append((self.t.agent_inbox(conv["assignee"]), agent_frame))
        prev = d.get("previous_assignee")
        if prev and prev != conv.get("assignee"):
            out.append((self.t.agent_inbox(prev), {**agent_frame, "event": "updated", "released": True}))
        if d.get("to") == "queued" or d.get("from") == "queued":
            team = conv.get("team") if d.get("to") == "queued" else d.get("previous_team") or conv.get("team")
            if team:
                out.append((self.t.team_queue(team), agent_frame))
        return out
