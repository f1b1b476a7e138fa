"""The desk's plugin hooks: a closed, named set with one payload type each.

Why closed: a registry that accepts any name lets ``on_mesage`` sit there never
firing. ``register`` rejects unknown names and the desk checks each payload's type.

Two kinds:

* filter hooks may change what the desk is about to do. A handler gets the payload
  and returns a replacement of the same type, or None to leave it. They run in
  registration order, each seeing the previous one's result:

  - ``message_received`` (MessageReceived): a customer message before the bot sees it
    (redact card numbers, translate...). Only ``text`` and ``meta`` may change.
  - ``route_decided`` (RouteDecided): the routing table's choice for a conversation.
  - ``bot_reply`` (BotReplied): the bot's decision before it is acted on.

* notification hooks hear about every event of one type, after it happened:
  ``conversation_created``, ``conversation_status_changed``, ``conversation_assigned``,
  ``message_created``, ``ticket_created``, ``ticket_updated``, ``sla_breached``,
  ``csat_received``, ``agent_status_changed`` -- each with an ``EventPayload``.

Handlers may be plain or async functions. They run inline on the desk's task, so
they must be quick; slow work belongs on a task or queue of the plugin's own. A
handler that raises is logged; a filter's result is then left unchanged (the desk
carries on with its own decision), a notification is simply skipped.

Plugins: an entry point in group ``kefu.plugins`` naming ``setup(hooks) -> None``::

    [project.entry-points."kefu.plugins"]
    redact = "mypkg.redact:setup"

``load_plugins`` calls each one and raises ``HookError`` naming a plugin that fails.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Callable

from .bot import Reply
from .events import (
    AGENT_STATUS_CHANGED,
    CONVERSATION_ASSIGNED,
    CONVERSATION_CREATED,
    CONVERSATION_STATUS_CHANGED,
    CSAT_RECEIVED,
    MESSAGE_CREATED,
    SLA_BREACHED,
    TICKET_CREATED,
    TICKET_UPDATED,
    Event,
)
from .routing import Facts, Route

log = logging.getLogger("kefu.hooks")

PLUGIN_GROUP = "kefu.plugins"


class HookError(Exception):
    pass


@dataclass(frozen=True)
class MessageReceived:
    conv_id: str
    customer_id: str
    channel: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteDecided:
    conv_id: str
    facts: Facts
    route: Route


@dataclass(frozen=True)
class BotReplied:
    conv_id: str
    text: str
    reply: Reply


@dataclass(frozen=True)
class EventPayload:
    event: Event


FILTERS: dict[str, type] = {
    "message_received": MessageReceived,
    "route_decided": RouteDecided,
    "bot_reply": BotReplied,
}
NOTIFICATIONS: dict[str, type] = {
    name: EventPayload
    for name in (
        CONVERSATION_CREATED,
        CONVERSATION_STATUS_CHANGED,
        CONVERSATION_ASSIGNED,
        MESSAGE_CREATED,
        TICKET_CREATED,
        TICKET_UPDATED,
        SLA_BREACHED,
        CSAT_RECEIVED,
        AGENT_STATUS_CHANGED,
    )
}
HOOKS: dict[str, type] = {**FILTERS, **NOTIFICATIONS}


class DeskHooks:
    def __init__(self) -> None:
        self._h: dict[str, list[Callable[[Any], Any]]] = {name: [] for name in HOOKS}

    def register(self, name: str, handler: Callable[[Any], Any]) -> None:
        if name not in HOOKS:
            raise HookError(f"unknown desk hook {name!r}; the hooks are: {', '.join(sorted(HOOKS))}")
        if not callable(handler):
            raise HookError(f"handler for {name} is not callable: {handler!r}")
        self._h[name].append(handler)

    def active(self, name: str) -> bool:
        return bool(self._h[name])

    async def _call(self, handler, payload):
        out = handler(payload)
        if inspect.isawaitable(out):
            out = await out
        return out

    async def filter(self, name: str, payload: Any) -> Any:
        ptype = FILTERS.get(name)
        if ptype is None:
            raise HookError(f"{name} is not a filter hook")
        if type(payload) is not ptype:
            raise HookError(f"{name} takes a {ptype.__name__}, got {type(payload).__name__}")
        for h in self._h[name]:
            try:
                out = await self._call(h, payload)
            except Exception:
                log.exception("desk hook %s handler %r raised; keeping the desk's decision", name, h)
                continue
            if out is None:
                continue
            if type(out) is not ptype:
                log.error("desk hook %s handler %r returned %r, not a %s; ignored", name, h, out, ptype.__name__)
                continue
            if name == "message_received":
                out = replace(payload, text=out.text, meta=out.meta)  # ids are not the plugin's to change
            payload = out
        return payload

    async def notify(self, event: Event) -> None:
        hs = self._h.get(event.type)
        if not hs:
            return
        payload = EventPayload(event)
        for h in hs:
            try:
                await self._call(h, payload)
            except Exception:
                log.exception("desk hook %s handler %r raised; continuing", event.type, h)


def load_plugins(hooks: DeskHooks, group: str = PLUGIN_GROUP) -> list[str]:
    names = []
    for ep in entry_points(group=group):
        try:
            setup = ep.load()
        except Exception as e:
            raise HookError(f"desk plugin {ep.name!r} ({ep.value}) failed to import: {e}") from e
        try:
            setup(hooks)
        except Exception as e:
            raise HookError(f"desk plugin {ep.name!r} ({ep.value}) failed to set up: {e}") from e
        names.append(ep.name)
    return names
