"""The narrow interface the bridge needs from the rest of kefu.

The bridge (``/chat``, the HTTP API, the pages) is a front door: it authenticates
browsers and translates their frames and requests; the customer-service core decides
everything. These Protocols are all the bridge assumes about that core and about the
broker, so the bridge is written and tested against them, and ``kefu/app.py`` passes
in the real objects (or a thin adapter where a name differs).

Two channels, on purpose:

* ``Bus`` — the MQTT topic space. A ``/chat`` visitor publishes on the same
  ``{p}/c/{customer}/{thread}/in`` topic a device does and subscribes to the same
  ``.../out`` and ``.../events`` topics, so a device and a browser of one customer sit
  in one conversation without the bridge knowing anything about conversations.
* ``Desk`` — queries and commands that are not a message stream: history, lists for
  the console, agent actions with a result, contacts, tickets, canned responses,
  labels, webhooks. Every method returns plain JSON-able dicts (the views the core
  already produces with ``summary()``/``to_dict()``).

Errors cross the boundary as the core's exception classes (re-exported below), which
the HTTP layer maps to status codes and ``/chat`` to error frames.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

import trio


# The core's errors (kefu/errors.py): each carries its /chat ``code`` and HTTP ``status``.
from kefu.errors import DeskError, Forbidden, Illegal, Invalid, NotFound  # noqa: E402

Conflict = Illegal  # the request is stale or illegal in the current state (409, "conflict")

__all__ = ["Bus", "Conflict", "Desk", "DeskError", "Forbidden", "Illegal", "Invalid", "NotFound"]


Json = dict[str, Any]


@runtime_checkable
class Bus(Protocol):
    """Publish and subscribe on the broker's topic space as a trusted in-process client."""

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None: ...

    def subscribe(self, filters: list[str]) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel]:
        """An async context manager yielding a channel of ``(topic, payload)`` tuples."""
        ...


@runtime_checkable
class Desk(Protocol):
    # --- identities ------------------------------------------------------------------
    def topic_prefix(self) -> str: ...

    async def agent(self, agent_id: str) -> Json | None:
        """The agent's summary (id, name, teams, status, capacity...) or None."""
        ...

    async def set_contact(self, customer_id: str, *, fields: Json | None = None, attributes: Json | None = None,
                          by: str | None = None) -> Json:
        """Create or update a contact (name/email from the widget, page and browser as attributes)."""
        ...

    # --- what customers and agents do --------------------------------------------------
    async def customer_message(self, channel: str, customer_id: str, text: str, *, thread: str = "main",
                               meta: Json | None = None, answer_later: bool = False) -> Json:
        """-> {"conversation": view, "message": view}; the entry point a device's message reaches too.
        ``answer_later``: return once the message is stored; the bot answers in the background."""
        ...

    async def customer_event(self, customer_id: str, thread: str, kind: str, **data) -> Json | None:
        """typing (on), read (up_to), csat (rating, comment)."""
        ...

    async def agent_action(self, agent_id: str | None, action: str, conv_id: str | None = None, **data) -> Json:
        """An agent's (agent_id None: an operator's) command: reply, note, accept, pickup, transfer,
        assign, resolve, reopen, labels, typing, read, status, keepalive. Returns the resulting view."""
        ...

    async def agent_connected(self, agent_id: str) -> Json:
        """A live console connection opened: the agent is online while one is open."""
        ...

    async def agent_disconnected(self, agent_id: str) -> Json | None:
        """A live connection closed; the last one closing sets the agent offline."""
        ...

    # --- conversations ---------------------------------------------------------------
    async def conversations(self, *, viewer: str | None, filters: Json) -> list[Json]:
        """Filters: status, assignee ("me"/"none"/id), team, label, customer, q. viewer is an agent id."""
        ...

    async def conversation(self, conv_id: str) -> Json: ...

    async def open_conversation_of(self, customer_id: str, thread: str) -> Json | None:
        """The customer's current conversation on a thread, or None."""
        ...

    async def messages(self, conv_id: str, *, before: int | None, limit: int, include_private: bool) -> tuple[list[Json], bool]:
        """Messages oldest first, ending just before seq ``before`` (None: the newest); bool: older ones exist."""
        ...

    # --- directory -------------------------------------------------------------------
    async def agents(self) -> list[Json]: ...

    async def contacts(self, *, q: str | None) -> list[Json]: ...

    async def contact(self, customer_id: str) -> Json: ...

    async def tickets(self, *, filters: Json) -> list[Json]: ...

    async def ticket(self, ticket_id: str) -> Json: ...

    async def canned_responses(self) -> list[Json]: ...

    async def labels(self) -> list[Json]: ...

    async def webhooks(self) -> list[Json]: ...

    async def add_webhook(self, url: str, events: list[str]) -> Json: ...

    async def delete_webhook(self, webhook_id: str) -> None: ...

    async def health(self) -> Json:
        """{"ok": bool, ...details} for /readyz."""
        ...
