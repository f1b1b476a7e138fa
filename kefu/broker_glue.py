"""The desk on the embedded broker: ACL, presence, message intake and publishing.

The desk itself knows no broker. This module is the thin adapter:

* ``on_authenticate``: a username naming an agent (``agent:<id>``) or a service must be
  a configured ``[[auth.users]]`` entry with a verified password -- otherwise anyone
  could claim to be an agent on an anonymous broker;
* ``on_authorize`` (registered for kefu's namespace only): kefu's topic ACL
  (``kefu.topics.Acl``) decides publishes, subscriptions and deliveries there;
  outside it the broker's own ``[auth]`` ACL decides;
* ``on_connected`` / ``on_disconnected``: an agent's MQTT connection keeps it online;
  the last one closing (or the broker's keepalive timeout) sets it offline, which
  requeues its conversations at the front;
* intake: the bus's consumer for ``topics.desk_filters()`` feeds ``Desk.ingest``
  through ordered lanes -- messages of one sender keep their order, different
  senders are handled concurrently (one slow classification never stalls the rest);
* the desk publishes through the bus (``RouterBus.publish``: into the router as the
  broker itself).

Broker hooks are synchronous and run on the broker's hot path, so presence changes
are queued to a task here; the ACL decides from memory (the desk's assignment map).
"""

from __future__ import annotations

import functools
import logging
import zlib
from pathlib import Path
from typing import Any, Callable

import trio

from .broker.hooks import ALLOW, DENY, Decision, HookRegistry
from .desk import Desk
from .settings import DeskSettings
from .storage.base import StorageUnavailable
from .settings import from_config as settings_from_config
from .config import ConfigError
from .topics import Verdict, identify, reserved_customer_id

log = logging.getLogger("kefu.desk.glue")

BAD_USER_NAME_OR_PASSWORD = 0x86


class DeskGlue:
    def __init__(self, desk: Desk, hooks: HookRegistry, *, users: frozenset[str], lanes: int = 64,
                 lane_queue: int = 256) -> None:
        self.desk = desk
        self.hooks = hooks
        self.users = users
        s = desk.s
        self._agents = {a.id: a.teams for a in s.agents}
        self._prefix = s.agent_username_prefix
        self._services = s.service_users
        self._presence_send, self._presence_recv = trio.open_memory_channel(10_000)
        self._lanes = [trio.open_memory_channel(lane_queue) for _ in range(lanes)]
        self._lane_queue = lane_queue
        self.refused_logins = 0
        self.presence_dropped = 0

    # --- broker hooks (synchronous, hot path) -------------------------------------------------
    def install(self) -> None:
        self.hooks.register("on_authenticate", self.on_authenticate)
        # Asked only about kefu's namespace (and the alarm topics): every other topic
        # costs the desk nothing and its ACL decisions are cached by the broker.
        self.hooks.register("on_authorize", self.on_authorize, topics=self.acl_scope())
        self.hooks.register("on_connected", self.on_connected)
        self.hooks.register("on_disconnected", self.on_disconnected)

    def acl_scope(self) -> list[str]:
        t = self.desk.s.topics
        scope = [f"{t.prefix}/#"]
        alarm = t.alarm_topic.format(p=t.prefix, device="+")
        if not alarm.startswith(f"{t.prefix}/"):
            scope.append(alarm)
        return scope

    def _privileged(self, username: str | None) -> bool:
        return bool(username) and (username.startswith(self._prefix) or username in self._services)

    def on_authenticate(self, ev) -> Decision | None:
        if self._privileged(ev.username) and ev.username not in self.users:
            self.refused_logins += 1
            log.warning("refused %r from %s: agent and service names must be [[auth.users]] entries",
                        ev.username, ev.peer or "?")
            return Decision(False, BAD_USER_NAME_OR_PASSWORD)
        return None  # the broker's users/anonymous rules decide (and verify the password)

    def principal(self, username: str | None, client_id: str):
        return identify(username, client_id, agents=self._agents, service_users=self._services,
                        agent_prefix=self._prefix, verified_users=self.users)

    def on_authorize(self, ev) -> Decision | None:
        who = self.principal(ev.username, ev.client_id)
        acl = self.desk.acl
        v = acl.subscribe(who, ev.topic) if ev.action == "subscribe" else acl.publish(who, ev.topic)
        if v == Verdict.ALLOW:
            return ALLOW
        if v == Verdict.DENY:
            return DENY
        return None

    def _agent_of(self, username: str | None) -> str | None:
        if username and username.startswith(self._prefix):
            aid = username[len(self._prefix):]
            if aid in self._agents:
                return aid
        return None

    def on_connected(self, ev) -> None:
        aid = self._agent_of(ev.username)
        if aid is not None:
            self._queue_presence(aid, ev.client_id, True)

    def on_disconnected(self, ev) -> None:
        aid = self._agent_of(ev.username)
        if aid is not None:
            self._queue_presence(aid, ev.client_id, False)

    def _queue_presence(self, aid: str, client_id: str, up: bool) -> None:
        try:
            self._presence_send.send_nowait((aid, client_id, up))
        except trio.WouldBlock:
            self.presence_dropped += 1
            log.error("presence queue full: lost %s %s", "connect" if up else "disconnect", aid)

    # --- tasks --------------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._presence_loop)
            for _, recv in self._lanes:
                n.start_soon(self._lane, recv)
            task_status.started(self)

    async def _presence_loop(self) -> None:
        # Connections are counted by client id: a session taken over by a new connection
        # with the same client id is one connection, whatever order the broker reports in.
        conns: dict[str, set[str]] = {}
        async for aid, client_id, up in self._presence_recv:
            mine = conns.setdefault(aid, set())
            was = bool(mine)
            (mine.add if up else mine.discard)(client_id)
            try:
                if mine and not was:
                    await self.desk.agent_connected(aid)
                elif was and not mine:
                    await self.desk.agent_disconnected(aid)
            except Exception:  # noqa: BLE001 - one agent's trouble must not stop presence for all
                log.exception("presence update for %s failed", aid)

    async def ingest(self, topic: str, payload: bytes, ack=None) -> None:
        """Bus consumer: hand the message to its sender's lane (order kept per sender).
        ``ack``: what waits for the desk's commit of this message -- the bus's ``Ack``
        (``ack.done(ok)``: the embedded broker's PUBACK) or attach mode's
        ``done(exception | None)`` (kefu/attach.py acknowledges to the external broker)."""
        key = topic.rsplit("/", 1)[0] if "/conv/" not in topic else topic.split("/conv/")[0]
        send, _ = self._lanes[zlib.crc32(key.encode()) % len(self._lanes)]
        await send.send((topic, payload, ack))

    async def _lane(self, recv) -> None:
        # The publisher's acknowledgement waits for ``ack`` -- given once the desk's writes for
        # this message are committed, refused when they cannot be. The lane goes on with its
        # next message meanwhile; its acker waits for the commits in order (one sender's
        # acknowledgements keep their order, and a commit never stalls the lane).
        send, acks = trio.open_memory_channel(self._lane_queue)
        async with trio.open_nursery() as n:
            n.start_soon(self._acker, acks)
            async for topic, payload, ack in recv:
                pending = None
                try:
                    pending = await self.desk.ingest(topic, payload, deferred=True)
                except StorageUnavailable as e:
                    log.error("desk could not store %s (%s): not acknowledged", topic, e.reason)
                    _finish(ack, e)
                    continue
                except Exception:  # noqa: BLE001 - logged; the sender got an error frame where possible
                    log.exception("desk failed on %s", topic)
                await send.send((topic, ack, pending))

    async def _acker(self, recv) -> None:
        async for topic, ack, pending in recv:
            failure = None
            try:
                if pending is not None:
                    await pending.wait()
            except Exception as e:  # noqa: BLE001 - StorageUnavailable, or one write's own error
                failure = e
                log.error("desk could not store %s (%s): not acknowledged", topic, getattr(e, "reason", e))
            finally:
                _finish(ack, failure)


def _finish(ack, failure: BaseException | None) -> None:
    """Release a message's acknowledgement: given when ``failure`` is None, refused otherwise."""
    if ack is None:
        return
    if callable(ack):  # attach mode's done(exception | None)
        ack(failure)
    else:  # the bus's Ack
        ack.done(failure is None)


def reserved_user_problems(cfg) -> list[str]:
    """Broker usernames the desk keeps for anonymous customers (a check of kefu/checks.py)."""
    reserved = sorted({u.username for u in cfg.auth.users if reserved_customer_id(u.username)})
    if not reserved:
        return []
    return [f"auth.users: {', '.join(reserved)}: names starting with anon: or anon- are kept "
            "for anonymous customers; choose another username"]


async def run(
    cfg,
    *,
    broker,
    bus,
    classify: Callable[[str], Any] | None = None,
    settings: DeskSettings | None = None,
    base_dir: str | Path | None = None,
    store=None,
    desk_hooks=None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Start the desk on ``broker`` (publishing and consuming through ``bus``, a
    ``kefu.bridge.bus.RouterBus``); ``started(desk)``. Runs until cancelled."""
    s = settings or settings_from_config(cfg, base_dir=base_dir)
    if desk_hooks is None:
        from .hooks import DeskHooks, load_plugins

        desk_hooks = DeskHooks()
        names = load_plugins(desk_hooks)  # entry points in group kefu.plugins; a broken one raises
        if names:
            log.info("desk plugins: %s", ", ".join(names))
    desk = Desk(s, classify=classify, publish=bus.publish, store=store, hooks=desk_hooks)
    users = frozenset(u.username for u in cfg.auth.users)
    problems = reserved_user_problems(cfg)
    if problems:
        raise ConfigError(problems)
    glue = DeskGlue(desk, broker.hooks, users=users)
    glue.install()
    desk.glue = glue
    async with trio.open_nursery() as n:
        await n.start(desk.run)
        await n.start(glue.run)
        await n.start(functools.partial(bus.consume, s.topics.desk_filters(), glue.ingest, acks=True))
        task_status.started(desk)
