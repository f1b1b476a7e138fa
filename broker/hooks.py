"""Broker hooks: a closed, named set of extension points with typed payloads.

The broker calls out at a few fixed moments so that the customer-service core (or an
installed plugin) can take part without the broker importing it: deciding who may
connect and which conversation topics a client may use, and hearing about
connections, subscriptions and messages.

Why a closed set: a registry that accepts any name hides typos (``on_conect`` would
never fire); here ``register`` rejects an unknown name, and each hook has one payload
dataclass so handlers know exactly what they get.

Two kinds of hook:

* Decision hooks (``on_authenticate``, ``on_authorize``) return ``ALLOW``, ``DENY``
  (or ``Decision(False, reason_code)``) or ``None`` for "no opinion". Deny
  overrides: the first handler that denies decides; otherwise any ``ALLOW`` allows;
  when every handler abstains, the configured users/ACL decide. A handler that
  raises denies (fail closed) and is logged.
* Notification hooks (everything else) return nothing. A handler that raises is
  logged and the broker carries on.

Handlers are plain synchronous callables run on the broker's event loop, on hot
paths (``on_authorize`` runs for every PUBLISH it is registered for, every
subscription and, once per client and topic, for deliveries). They must not block:
keep the state they decide on in memory (fed by the notification hooks or by your
own trio tasks) and hand slow work to a bounded queue. Register ``on_authorize`` with
``topics=[...]`` (the filters it decides about) and it costs other topics nothing.

Plugins: an installed distribution declares an entry point in the group
``kefu.broker_hooks`` whose object is a callable taking the registry::

    [project.entry-points."kefu.broker_hooks"]
    conversations = "mypkg.hooks:register"      # def register(hooks: HookRegistry) -> None

``load_plugins(registry)`` calls each; a plugin that fails to import or register
raises ``HookError`` naming it (never skipped silently).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger("kefu.broker.hooks")

ENTRY_POINT_GROUP = "kefu.broker_hooks"

NOT_AUTHORIZED = 0x87


class HookError(Exception):
    """Misuse of the hook registry or a plugin that cannot be loaded."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A decision hook's answer. ``reason_code`` is the 5.0 code sent on a denial."""

    allow: bool
    reason_code: int = 0


ALLOW = Decision(True, 0)
DENY = Decision(False, NOT_AUTHORIZED)


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True, slots=True)
class AuthenticateEvent:
    """A CONNECT to accept or refuse. ``password`` is as sent (bytes) or None."""

    client_id: str
    username: str | None
    password: bytes | None
    protocol_level: int = 4
    peer: str = ""  # "host:port" of the remote end, or "" when unknown


@dataclass(frozen=True, slots=True)
class AuthorizeEvent:
    """A publish to ``topic`` or a subscription to the filter ``topic``.

    ``action`` is ``"publish"`` or ``"subscribe"``; for a shared subscription
    ``topic`` is the inner filter and ``share_group`` the group name. A subscription
    should be allowed when the client may read something under the filter; each
    message is then checked at delivery with a ``"subscribe"`` event whose ``topic``
    is the message's topic name (answers to those are cached per client).
    """

    client_id: str
    username: str | None
    action: str
    topic: str
    share_group: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectedEvent:
    client_id: str
    username: str | None
    protocol_level: int
    clean_start: bool
    session_present: bool
    keep_alive: int
    peer: str = ""


@dataclass(frozen=True, slots=True)
class DisconnectedEvent:
    """The connection ended. ``reason_code`` 0 for a normal DISCONNECT; ``will_sent``
    when the will message was (or will be, after its delay) published."""

    client_id: str
    username: str | None
    reason_code: int
    will_sent: bool = False


@dataclass(frozen=True, slots=True)
class MessagePublishedEvent:
    """A PUBLISH accepted by the broker (after authorisation, before routing).

    ``client_id`` is ``""`` for messages the broker itself publishes (wills, $SYS).
    """

    client_id: str
    username: str | None
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Any = None  # kefu.broker.mqtt.packets.Properties


@dataclass(frozen=True, slots=True)
class SubscribedEvent:
    """A subscription granted; ``topic_filter`` as the client sent it."""

    client_id: str
    username: str | None
    topic_filter: str
    qos: int


@dataclass(frozen=True, slots=True)
class UnsubscribedEvent:
    client_id: str
    username: str | None
    topic_filter: str


@dataclass(frozen=True, slots=True)
class SessionExpiredEvent:
    """A persistent session was discarded (expiry reached or taken over clean)."""

    client_id: str


# name -> (payload type, is a decision hook)
HOOKS: dict[str, tuple[type, bool]] = {
    "on_authenticate": (AuthenticateEvent, True),
    "on_authorize": (AuthorizeEvent, True),
    "on_connected": (ConnectedEvent, False),
    "on_disconnected": (DisconnectedEvent, False),
    "on_message_published": (MessagePublishedEvent, False),
    "on_subscribed": (SubscribedEvent, False),
    "on_unsubscribed": (UnsubscribedEvent, False),
    "on_session_expired": (SessionExpiredEvent, False),
}


class HookRegistry:
    """Handlers per hook name. ``bool(registry.active("on_authorize"))`` is the cheap
    test the broker makes before building a payload on a hot path."""

    def __init__(self) -> None:
        self._handlers: dict[str, tuple[Callable[[Any], Any], ...]] = {name: () for name in HOOKS}
        # on_authorize handlers registered with ``topics``: handler -> filters split on '/'
        self._scopes: dict[Callable[[Any], Any], tuple[tuple[str, ...], ...]] = {}
        # called after every register/unregister (the broker drops cached ACL decisions)
        self.on_change: list[Callable[[], None]] = []

    def register(self, name: str, handler: Callable[[Any], Any], *, topics: Iterable[str] | None = None) -> None:
        """Add ``handler`` for hook ``name`` (called after those registered before).

        ``topics`` (``on_authorize`` only): the topic filters the handler decides about.
        It is then asked only about topics those filters match and subscriptions that
        overlap them; every other topic costs it nothing and its decisions are cached.
        """
        if name not in HOOKS:
            known = ", ".join(sorted(HOOKS))
            raise HookError(f"unknown broker hook {name!r}; the hooks are: {known}")
        if not callable(handler):
            raise HookError(f"handler for {name} is not callable: {handler!r}")
        if topics is not None:
            if name != "on_authorize":
                raise HookError(f"topics= applies to on_authorize only, not {name}")
            from .topics import validate_topic_filter

            scope = []
            for f in topics:
                try:
                    group, inner = validate_topic_filter(f)
                except ValueError as e:
                    raise HookError(f"on_authorize topics: {e}") from None
                if group is not None:
                    raise HookError(f"on_authorize topics: {f!r} is a shared subscription; give its filter")
                scope.append(tuple(inner.split("/")))
            self._scopes[handler] = tuple(scope)
        self._handlers[name] = self._handlers[name] + (handler,)
        self._changed()

    def unregister(self, name: str, handler: Callable[[Any], Any]) -> None:
        if name not in HOOKS:
            raise HookError(f"unknown broker hook {name!r}")
        hs = list(self._handlers[name])
        if handler in hs:
            hs.remove(handler)
            if handler not in hs:
                self._scopes.pop(handler, None)
        self._handlers[name] = tuple(hs)
        self._changed()

    def _changed(self) -> None:
        for cb in self.on_change:
            cb()

    def authorizers(self, topic: str, is_filter: bool) -> tuple[Callable[[Any], Any], ...]:
        """The ``on_authorize`` handlers that decide about ``topic`` (a topic name, or a
        subscription filter when ``is_filter``): unscoped ones and those whose ``topics``
        match it (a name) or overlap it (a filter)."""
        hs = self._handlers["on_authorize"]
        if not hs or not self._scopes:
            return hs
        from .topics import filters_overlap, levels_match

        levels = topic.split("/")
        out = []
        for h in hs:
            scope = self._scopes.get(h)
            if scope is None:
                out.append(h)
            elif is_filter:
                if any(filters_overlap("/".join(f), topic) for f in scope):
                    out.append(h)
            elif any(levels_match(f, levels) for f in scope):
                out.append(h)
        return tuple(out)

    def active(self, name: str) -> bool:
        """True when at least one handler is registered for ``name``."""
        return bool(self._handlers[name])

    def _check(self, name: str, payload: Any, decision: bool) -> tuple[Callable[[Any], Any], ...]:
        spec = HOOKS.get(name)
        if spec is None:
            raise HookError(f"unknown broker hook {name!r}")
        ptype, is_decision = spec
        if is_decision != decision:
            verb = "decide" if is_decision else "notify"
            raise HookError(f"{name} must be called with {verb}()")
        if type(payload) is not ptype:
            raise HookError(f"{name} takes a {ptype.__name__}, got {type(payload).__name__}")
        return self._handlers[name]

    def decide(self, name: str, payload: Any, handlers: tuple | None = None) -> Decision | None:
        """Run a decision hook: the first denial, else ALLOW if any allowed, else None.

        ``handlers``: only these (``authorizers()``'s answer) instead of all of them."""
        allowed = False
        checked = self._check(name, payload, True)
        for handler in checked if handlers is None else handlers:
            try:
                answer = handler(payload)
            except Exception:
                log.exception("broker hook %s handler %r raised; denying", name, handler)
                return DENY
            if answer is None:
                continue
            if not isinstance(answer, Decision):
                log.error("broker hook %s handler %r returned %r, not a Decision; denying", name, handler, answer)
                return DENY
            if not answer.allow:
                if answer.reason_code < 0x80:
                    return DENY
                return answer
            allowed = True
        return ALLOW if allowed else None

    def notify(self, name: str, payload: Any) -> None:
        """Run a notification hook; handler errors are logged, never raised."""
        for handler in self._check(name, payload, False):
            try:
                handler(payload)
            except Exception:
                log.exception("broker hook %s handler %r raised; continuing", name, handler)


def load_plugins(registry: HookRegistry, group: str = ENTRY_POINT_GROUP) -> list[str]:
    """Call every ``group`` entry point with ``registry``; return their names."""
    loaded = []
    for ep in entry_points(group=group):
        try:
            setup = ep.load()
        except Exception as e:
            raise HookError(f"broker hook plugin {ep.name!r} ({ep.value}) failed to import: {e}") from e
        if not callable(setup):
            raise HookError(f"broker hook plugin {ep.name!r} ({ep.value}) is not callable")
        try:
            setup(registry)
        except HookError as e:
            raise HookError(f"broker hook plugin {ep.name!r} ({ep.value}): {e}") from e
        except Exception as e:
            raise HookError(f"broker hook plugin {ep.name!r} ({ep.value}) failed to register: {e}") from e
        loaded.append(ep.name)
    return loaded
