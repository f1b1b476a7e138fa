"""The shared broker state: sessions, subscriptions, retained messages, timers, $SYS.

Sans-I/O like the protocol machine: no trio, no sockets, no clock reads. The trio
side (``server.py``/``connection.py``) passes ``now`` in, calls ``tick(now)`` when
``next_deadline`` passes and wakes writers through each ``Protocol.wake``.

The publish fast path
---------------------
A PUBLISH becomes one ``Message``; routing it is:

1. the per-connection publish decision cache (topic -> allowed; valid topics only;
   topics an ``on_authorize`` hook is registered for are asked every time),
2. one dict lookup for the topic's *plan*: the matching subscribers with their
   options already merged per session (overlapping subscriptions of one client give
   one delivery with the highest QoS and every subscription identifier, spec 3.3.4),
   the matching shared groups and the in-process consumers (``Tap``: the desk, the
   bridge). Subscribers that may not read the topic (the ACL at delivery,
   ``Authenticator.may_read``) are left out when the plan is built, so the check costs
   nothing per message. Plans are built from the ``TopicTrie`` on a miss and dropped
   whenever a subscription or the ACL changes,
3. per subscriber ``SessionState.deliver``: the message's encoded bytes are cached
   per (protocol, QoS, retain flag[, per-delivery properties]), so 100 subscribers on
   3.1.1 at QoS 0 share one ``bytes`` object; QoS 1/2 share a (prefix, suffix)
   template and only the packet id is spliced in per subscriber.

Back-pressure (QoS 1/2)
-----------------------
When a delivery leaves an online subscriber's queue at half ``max_offline_messages``
while its client keeps acknowledging (it owed nothing, or acknowledged something, in
the last ``ACK_RECENT`` seconds), the publisher being routed is paused
(``Protocol.paused_by``): its connection stops reading after the current packet until
the queue is down to a quarter (``SessionState.release_throttled``), the subscriber goes
offline, or it stops acknowledging. The publisher's own window then slows it down
instead of the broker dropping messages it has acknowledged. What is still dropped
(offline or stalled subscribers) is counted (``Stats.dropped``: $SYS and
``kefu_messages_rejected_total{reason="queue_overflow"}``); pauses in ``Stats.throttled``.

Sessions and wills
------------------
``attach`` binds a connection to the session for its client id: a live holder is
closed with 0x8E first ([MQTT-3.1.4-3]); clean start discards the old session;
otherwise the session (subscriptions, inflight, queue) continues ("session
present"). ``detach`` runs when a connection ends: the will is published at once
or after min(will delay, session expiry) unless a new connection for the client id
arrives first; a session with expiry 0 ends now, others get an expiry timer.
Timers live in one heap; stale entries are skipped by comparing the deadline
stored on the session.

Storage and SM4
---------------
Two optional parts plug in from the trio side (``kefu.broker.persist``):
``persister`` sees every stored PUBLISH (it returns None from ``publish`` while the
acknowledgement waits for the commit), the persistent recipients ``route`` collects,
session changes and delivery acknowledgements; ``sm4`` opens SM4 envelopes from
devices before routing and seals each delivery to a device with that device's key.
Both are None by default and cost one attribute check on the paths they touch.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import secrets
from dataclasses import replace

from .. import __version__
from .auth import Authenticator
from .hooks import (
    AuthenticateEvent,
    ConnectedEvent,
    DisconnectedEvent,
    HookRegistry,
    MessagePublishedEvent,
    SessionExpiredEvent,
    SubscribedEvent,
    UnsubscribedEvent,
)
from .mqtt.packets import NO_PROPERTIES, ProtocolError, ReasonCode as RC
from .mqtt.session import NEVER_EXPIRES, Limits, Message, SessionState, Stats
from .topics import TopicTrie, parse_shared, validate_topic_filter, validate_topic_name

log = logging.getLogger("kefu.broker")

_WILL, _EXPIRE = 1, 2
ACK_RECENT = 1.0  # seconds: a subscriber that acknowledged this recently is "keeping up"
_PLAN_CACHE_MAX = 16384
_PUB_CACHE_MAX = 1024
_EMPTY = ()


class RetainedStore:
    """Retained messages by topic, in a level tree so a filter finds its topics without a scan."""

    __slots__ = ("_root", "count", "bytes")

    def __init__(self) -> None:
        self._root: list = [{}, None]  # node: [children by level, Message or None]
        self.count = 0
        self.bytes = 0  # payload bytes of all retained messages (mqtt.max_retained_bytes)

    def set(self, topic: str, msg: Message | None) -> None:
        """Store ``msg`` for ``topic``; ``None`` clears it (and prunes empty nodes)."""
        node = self._root
        path = []
        for level in topic.split("/"):
            child = node[0].get(level)
            if child is None:
                if msg is None:
                    return
                child = node[0][level] = [{}, None]
            path.append((node, level))
            node = child
        if msg is None:
            if node[1] is not None:
                self.count -= 1
                self.bytes -= len(node[1].payload)
            node[1] = None
            for parent, level in reversed(path):
                if node[0] or node[1] is not None:
                    break
                del parent[0][level]
                node = parent
        else:
            if node[1] is None:
                self.count += 1
            else:
                self.bytes -= len(node[1].payload)
            self.bytes += len(msg.payload)
            node[1] = msg

    def get(self, topic: str) -> Message | None:
        node = self._root
        for level in topic.split("/"):
            node = node[0].get(level)
            if node is None:
                return None
        return node[1]

    def match(self, topic_filter: str) -> list[Message]:
        """Retained messages whose topic the (plain, valid) filter matches; the $ rule applies."""
        levels = topic_filter.split("/")
        last = len(levels)
        out: list[Message] = []
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == last:
                if node[1] is not None:
                    out.append(node[1])
                continue
            level = levels[i]
            if level == "#":
                if i > 0 and node[1] is not None:  # "a/#" matches "a"
                    out.append(node[1])
                sub = [c for n, c in node[0].items() if not (i == 0 and n.startswith("$"))]
                while sub:
                    n = sub.pop()
                    if n[1] is not None:
                        out.append(n[1])
                    sub.extend(n[0].values())
            elif level == "+":
                for name, child in node[0].items():
                    if i == 0 and name.startswith("$"):
                        continue
                    stack.append((child, i + 1))
            else:
                child = node[0].get(level)
                if child is not None:
                    stack.append((child, i + 1))
        return out


def _online(session: SessionState) -> bool:
    return session.proto is not None


class Tap:
    """An in-process consumer of the topic space (the desk, the bridge's /chat sessions).

    Added with ``Router.add_tap(filters, fn)``: its filters go into the subscription
    trie like a client's, so the router decides once per topic (in the delivery plan)
    whether a message concerns it, and calls ``fn(msg)`` for each one that does, once
    per message however many of its filters match. Traffic outside its filters costs
    it nothing. ``fn`` runs on the publish path: it must not block (hand the message
    to a bounded queue).
    """

    __slots__ = ("fn", "filters", "client_id", "__weakref__")

    def __init__(self, fn, filters: tuple[str, ...]) -> None:
        self.fn = fn
        self.filters = filters
        self.client_id = ""  # the broker itself: never equal to a client's origin

    def __repr__(self) -> str:
        return f"Tap({list(self.filters)!r})"


class Router:
    """Sessions, subscriptions, retained messages; implements session.BrokerPort."""

    def __init__(self, config, hooks: HookRegistry | None = None, auth: Authenticator | None = None) -> None:
        mq = config.mqtt
        self.config = config
        self.limits = Limits.from_config(mq)
        self.stats = Stats()
        self.hooks = hooks if hooks is not None else HookRegistry()
        self.auth = auth if auth is not None else Authenticator(config.auth, self.hooks)
        # CONNECT: on_authenticate hooks run here, on the event loop (hooks.py promises
        # that); users/anonymous are then decided by a hook-less Authenticator, in a
        # worker thread when users are configured (scrypt takes tens of ms).
        self.password_auth = Authenticator(config.auth, HookRegistry())
        self.auth_in_thread = bool(config.auth.users)
        self.max_topic_levels = mq.max_topic_levels
        self.sessions: dict[str, SessionState] = {}
        # Quotas (issue 12: an anonymous client could fill memory and disk); 0: no limit.
        self.max_retained_messages = getattr(mq, "max_retained_messages", 0)
        self.max_retained_bytes = getattr(mq, "max_retained_bytes", 0)
        self.max_retained_payload = getattr(mq, "max_retained_payload", 0)
        self.max_subscriptions = getattr(mq, "max_subscriptions_per_client", 0)
        self.max_persistent_sessions = getattr(mq, "max_persistent_sessions", 0)
        self.persistent: set[str] = set()  # client ids whose session outlives the connection
        self.quota_refused = {"retained": 0, "subscriptions": 0, "sessions": 0, "stored_bytes": 0}
        self.trie = TopicTrie(cache_size=0)  # the router caches whole plans instead
        self.retained = RetainedStore()
        self.subscription_count = 0
        self.acl_denied = 0  # PUBLISHes and subscriptions refused by the ACL (kefu_messages_rejected_total)
        self._plans: dict[str, tuple] = {}
        self._taps = 0  # in-process consumers (Tap) in the trie
        # Back-pressure: an online QoS 1/2 subscriber that keeps acknowledging but whose
        # queue reaches half of max_offline_messages pauses the publisher feeding it.
        self._publisher = None  # the Protocol whose PUBLISH is being routed
        self._high_water = max(1, self.limits.max_offline_messages // 2)
        self._timers: list = []
        self._seq = itertools.count()
        self.on_timer = _ignore  # driver callback(deadline) when an earlier timer appears
        self._id_prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)
        self.sys_interval = mq.sys_interval
        self.hooks.on_change.append(self.acl_changed)
        self.persister = None  # kefu.broker.persist.Persister once storage is attached
        self.sm4 = None  # kefu.broker.sm4wire.DeviceWire when [sm4] device_topics are set
        self.started_at: float | None = None
        self._next_sys: float | None = None

    def start(self, now: float) -> None:
        self.started_at = now
        if self.sys_interval:
            self._next_sys = now
            self.on_timer(now)

    # ------------------------------------------------------------------ connect/disconnect
    def new_client_id(self) -> str:
        return f"kefu-{self._id_prefix}-{next(self._ids)}"

    def authenticate(self, proto, connect) -> int | None:
        """0, a refusal code, or None: finish with ``authenticate_blocking`` in a thread."""
        held = self.sessions.get(proto.client_id)
        if (held is not None and held.proto is not None and held.username != connect.username
                and connect.username not in self.password_auth.usernames):
            # A client id in use by another identity is not free for the taking: an
            # unverified newcomer may not disconnect a signed-in client by naming its id.
            log.info("client %s (%s): refused, the client id is in use by another user", proto.client_id, proto.peer)
            return RC.NOT_AUTHORIZED
        if (self.max_persistent_sessions and proto.session_expiry and proto.client_id not in self.persistent
                and len(self.persistent) >= self.max_persistent_sessions):
            self.quota_refused["sessions"] += 1
            log.info("client %s (%s): refused, mqtt.max_persistent_sessions (%d) reached", proto.client_id,
                     proto.peer, self.max_persistent_sessions)
            return RC.QUOTA_EXCEEDED
        hooks = self.hooks
        if hooks.active("on_authenticate"):
            d = hooks.decide("on_authenticate", AuthenticateEvent(
                proto.client_id, connect.username, connect.password, connect.protocol_level, proto.peer))
            if d is not None:
                return RC.SUCCESS if d.allow else d.reason_code
        if self.auth_in_thread:
            return None
        return self.authenticate_blocking(proto, connect)

    def authenticate_blocking(self, proto, connect) -> int:
        """Users and anonymous access (no hooks); thread safe, may run scrypt."""
        return self.password_auth.authenticate(proto.client_id, connect.username, connect.password,
                                               protocol_level=connect.protocol_level, peer=proto.peer)

    def attach(self, proto, now: float) -> tuple[SessionState, bool]:
        cid = proto.client_id
        s = self.sessions.get(cid)
        if s is not None and s.proto is not None:
            log.info("client %s: session taken over by a new connection from %s", cid, proto.peer)
            s.proto.close(RC.SESSION_TAKEN_OVER, now)
            s = self.sessions.get(cid)
        if s is not None:
            # A new connection before the will delay elapsed: no will ([MQTT-3.1.3-9]).
            s.will = None
            s.will_at = None
            s.expires_at = None
            # A session is never inherited by another identity: its subscriptions were
            # authorised for its owner and its queue holds the owner's messages. (A session
            # restored from storage has no username: it is resumed only when every one of
            # its subscriptions is one the newcomer may make itself.)
            if proto.clean_start or (s.username != proto.username and not self._may_inherit(s, proto)):
                self._end_session(s, now)
                s = None
        present = s is not None
        if present and s.username != proto.username:
            # Delivery plans hold read decisions made for the old identity.
            self.auth.forget(cid)
            if s.subscriptions:
                self._plans.clear()
        if s is None:
            s = SessionState(cid, self.limits, self.stats)
            self.sessions[cid] = s
        s.proto = proto
        s.username = proto.username
        s.expiry = proto.session_expiry
        (self.persistent.add if s.expiry else self.persistent.discard)(cid)
        if self.persister is not None:
            self.persister.attached(s, proto)
        return s, present

    def _may_inherit(self, s: SessionState, proto) -> bool:
        if s.username is not None:
            return False
        return all(self.auth.authorize(proto.client_id, proto.username, "subscribe", f) for f in s.subscriptions)

    def restore_session(self, s: SessionState) -> None:
        """Put back a (disconnected) session read from storage at start: subscriptions into
        the trie, its expiry timer (``s.expires_at``) into the heap."""
        self.sessions[s.client_id] = s
        if s.expiry:
            self.persistent.add(s.client_id)
        for f, value in s.subscriptions.items():
            if self.trie.add(f, s, value):
                self.subscription_count += 1
            self._invalidate(f)
        if s.expires_at is not None:
            self._push(s.expires_at, _EXPIRE, s)

    def connected(self, proto, present: bool, now: float) -> None:
        if self.sm4 is not None:
            self.sm4.connected(proto.client_id)
        if self.hooks.active("on_connected"):
            self.hooks.notify("on_connected", ConnectedEvent(
                proto.client_id, proto.username, proto.version, proto.clean_start, present,
                proto.keep_alive, proto.peer))

    def detach(self, proto, now: float) -> None:
        s = proto.session
        if s is None or s.proto is not proto:
            return
        s.proto = None
        s.release_throttled()  # offline now: publishers no longer wait for it
        will = proto.will
        if will is not None:
            delay = min(proto.will_delay, s.expiry)
            if delay <= 0:
                self._publish_will(will, proto.client_id, proto.username, now)
            else:
                s.will = (will, proto.username)
                s.will_at = now + delay
                self._push(s.will_at, _WILL, s)
        if s.expiry == 0:
            self._end_session(s, now)
        else:
            if s.expiry != NEVER_EXPIRES:
                s.expires_at = now + s.expiry
                self._push(s.expires_at, _EXPIRE, s)
            if self.persister is not None:
                self.persister.detached(s, proto)
        self.auth.forget(proto.client_id)
        if self.hooks.active("on_disconnected"):
            self.hooks.notify("on_disconnected", DisconnectedEvent(
                proto.client_id, proto.username,
                proto.disconnect_code if proto.disconnect_code is not None else (
                    proto.error.reason_code if proto.error is not None else 0),
                will is not None))

    def _end_session(self, s: SessionState, now: float) -> None:
        if s.will is not None:  # the session ends before the will delay: publish now
            will, username = s.will
            s.will = None
            self._publish_will(will, s.client_id, username, now)
        for f in s.subscriptions:
            self.trie.remove(f, s)
            self.subscription_count -= 1
            self._invalidate(f)
        s.subscriptions = {}
        s.release_throttled()
        s.clear_pending()
        s.inflight.clear()
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
            self.persistent.discard(s.client_id)
            if self.persister is not None:
                self.persister.session_ended(s)
        if self.hooks.active("on_session_expired"):
            self.hooks.notify("on_session_expired", SessionExpiredEvent(s.client_id))

    def _publish_will(self, will, client_id: str, username, now: float) -> None:
        topic = will.topic
        try:
            self._check_topic(topic)
        except ProtocolError:
            return
        if not self.auth.authorize(client_id, username, "publish", topic):
            log.info("client %s: will to %r not published (not authorised)", client_id, topic)
            return
        props = will.properties
        exp = props.message_expiry_interval
        if props is not NO_PROPERTIES and (exp is not None or props.will_delay_interval is not None):
            props = replace(props, message_expiry_interval=None, will_delay_interval=None)
        msg = Message(topic, will.payload, will.qos, will.retain, props,
                      None if exp is None else now + exp, client_id)
        if exp is not None:  # keep the interval so encoded() can send what is left
            msg.properties = replace(props, message_expiry_interval=exp)
        self.stats.messages_received += 1
        self._accept(msg, client_id, username, now)

    # ------------------------------------------------------------------ timers
    def _push(self, when: float, kind: int, s: SessionState) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), kind, s))
        if self._timers[0][0] == when:
            self.on_timer(when)

    @property
    def next_deadline(self) -> float | None:
        t = self._timers[0][0] if self._timers else None
        n = self._next_sys
        if n is not None and (t is None or n < t):
            return n
        return t

    def tick(self, now: float) -> float | None:
        """Run what is due (delayed wills, session expiry, $SYS); returns the next deadline."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, kind, s = heapq.heappop(timers)
            if s.proto is not None:
                continue
            if kind == _WILL and s.will_at == when and s.will is not None:
                will, username = s.will
                s.will = None
                s.will_at = None
                self._publish_will(will, s.client_id, username, now)
            elif kind == _EXPIRE and s.expires_at == when and self.sessions.get(s.client_id) is s:
                self._end_session(s, now)
        if self._next_sys is not None and self._next_sys <= now:
            self.publish_sys(now)
            self._next_sys = now + self.sys_interval
        return self.next_deadline

    # ------------------------------------------------------------------ publish
    def _check_topic(self, topic: str) -> None:
        try:
            validate_topic_name(topic, self.max_topic_levels)
        except ValueError as e:
            raise ProtocolError(RC.TOPIC_NAME_INVALID, str(e)) from None

    def _may_publish(self, proto, topic: str) -> bool:
        self._check_topic(topic)
        if topic.startswith("$SYS/") or topic == "$SYS":
            return False  # only the broker writes $SYS
        return self.auth.authorize(proto.client_id, proto.username, "publish", topic)

    def publish(self, proto, topic, payload, qos, retain, props, now, pid=None) -> int | None:
        """A client's PUBLISH (after topic alias resolution). Returns the PUBACK/PUBREC code,
        or None when the acknowledgement waits for the commit (``Protocol.release_held``)."""
        cache = proto.pub_acl
        if cache is None:
            cache = proto.pub_acl = {}
        ok = cache.get(topic)
        if ok is None:
            ok = self._may_publish(proto, topic)
            if not self.auth.hooked(topic):  # hook answers may change: never cached
                if len(cache) >= _PUB_CACHE_MAX:
                    cache.clear()
                cache[topic] = ok
        if not ok:
            self.acl_denied += 1
            return RC.NOT_AUTHORIZED
        if retain and payload and not self._retained_fits(topic, len(payload)):
            self.quota_refused["retained"] += 1
            return RC.QUOTA_EXCEEDED
        cap = self.limits.max_stored_bytes
        if qos and cap and self.stats.held_by_origin.get(proto.client_id, 0) + len(payload) > cap:
            # This publisher already has mqtt.max_queued_stored_bytes waiting in queues
            # (offline or slow subscribers): refused, not routed, not stored.
            self.quota_refused["stored_bytes"] += 1
            return RC.QUOTA_EXCEEDED
        replay = None
        if self.sm4 is not None and self.sm4.covers(topic):
            opened = self.sm4.open(proto.client_id, topic, payload)
            if opened is None:  # rejected (counted, logged): never routed
                return RC.PAYLOAD_FORMAT_INVALID
            payload, replay = opened
            if props.payload_format_indicator:
                props = replace(props, payload_format_indicator=None)
        p = self.persister
        if p is not None and qos and p.refuse(proto, replay, now):
            return None  # cannot be stored now: the connection was closed, nothing acknowledged
        exp = props.message_expiry_interval
        msg = Message(topic, payload, qos, retain, props, None if exp is None else now + exp, proto.client_id)
        if not qos:
            return self._accept(msg, proto.client_id, proto.username, now, proto, replay, pid)
        self._publisher = proto
        try:
            return self._accept(msg, proto.client_id, proto.username, now, proto, replay, pid)
        finally:
            self._publisher = None

    def _retained_fits(self, topic: str, size: int) -> bool:
        """Would retaining ``size`` bytes on ``topic`` stay within the retained quotas?"""
        if self.max_retained_payload and size > self.max_retained_payload:
            return False
        if not (self.max_retained_messages or self.max_retained_bytes):
            return True
        old = self.retained.get(topic)
        count = self.retained.count + (old is None)
        total = self.retained.bytes - (len(old.payload) if old is not None else 0) + size
        return not ((self.max_retained_messages and count > self.max_retained_messages)
                    or (self.max_retained_bytes and total > self.max_retained_bytes))

    def inject(self, topic: str, payload: bytes, now: float, *, qos: int = 0, retain: bool = False,
               properties=NO_PROPERTIES, client_id: str = "", username: str | None = None) -> int:
        """Publish from inside kefu (no client connection): the topic is validated
        (``ValueError``), the ``on_message_published`` hook runs, the message is retained
        if asked and routed like a client's. Returns 0x00, or 0x10 when nobody matched.
        No ACL check: kefu's own code is trusted.
        """
        validate_topic_name(topic, self.max_topic_levels)
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        exp = properties.message_expiry_interval
        msg = Message(topic, bytes(payload), qos, retain, properties,
                      None if exp is None else now + exp, client_id)
        return self._accept(msg, client_id, username, now)

    def _accept(self, msg: Message, client_id: str, username, now: float, proto=None, replay=None,
                pid=None) -> int | None:
        if msg.retain:
            self.retained.set(msg.topic, msg if msg.payload else None)
        hooks = self.hooks
        if hooks.active("on_message_published"):
            hooks.notify("on_message_published", MessagePublishedEvent(
                client_id, username, msg.topic, msg.payload, msg.qos, msg.retain, msg.properties))
        if self.persister is not None:  # stores it; None: the acknowledgement waits for the commit
            return self.persister.route(msg, now, proto, replay, pid)
        return self.route(msg, now)

    def route(self, msg: Message, now: float, recipients: list | None = None) -> int:
        """Deliver to every matching subscriber; 0x10 when there is none. With
        ``recipients``, append (client id, QoS) of each persistent session given it at QoS > 0."""
        plan = self._plans.get(msg.topic)
        if plan is None:
            plan = self._plan(msg.topic)
        targets, groups, taps = plan
        for tap in taps:
            try:
                tap.fn(msg)
            except Exception:
                log.exception("internal consumer %r failed on %r", tap, msg)
        qos = msg.qos
        retain = msg.retain
        origin = msg.origin
        seal = self.sm4.sealer(msg.topic) if self.sm4 is not None else None
        for session, sqos, no_local, rap, sub_ids in targets:
            if no_local and session.client_id == origin:
                continue
            q = qos if qos < sqos else sqos
            if recipients is not None and q and session.expiry:
                recipients.append((session.client_id, q))
            try:
                if seal is None:
                    session.deliver(msg, q, rap and retain, sub_ids, now)
                else:
                    seal(session, msg, q, rap and retain, sub_ids, now)
            except Exception:  # a bug for one subscriber must not cost the publisher or the others
                _delivery_failed(session, msg)
            if q and session.pending is not None and len(session.pending) >= self._high_water:
                self._congested(session, now)
        for group in groups:
            if self._read_checks:
                online, anyone = self._readers(msg.topic)
                picked = group.pick(online) or group.pick(anyone)
            else:
                picked = group.pick(_online) or group.pick()
            if picked is not None:
                session, (sqos, no_local, rap, sub_ids) = picked
                q = qos if qos < sqos else sqos
                if recipients is not None and q and session.expiry:
                    recipients.append((session.client_id, q))
                try:
                    if seal is None:
                        session.deliver(msg, q, rap and retain, sub_ids, now)
                    else:
                        seal(session, msg, q, rap and retain, sub_ids, now)
                except Exception:
                    _delivery_failed(session, msg)
                if q and session.pending is not None and len(session.pending) >= self._high_water:
                    self._congested(session, now)
        if targets or groups or taps:
            return RC.SUCCESS
        return RC.NO_MATCHING_SUBSCRIBERS

    def _congested(self, session: SessionState, now: float) -> None:
        """``session``'s queue is long: pause the publisher being routed until it drains,
        if its client is online and acknowledging (else its queue's drop policy applies)."""
        p = self._publisher
        if p is None or p.paused_by is not None or session.proto is None or session.proto is p:
            return
        if now - session.last_ack > ACK_RECENT:
            return
        p.paused_by = session
        if session.throttled is None:
            session.throttled = []
        session.throttled.append(p)
        self.stats.throttled += 1

    def _invalidate(self, topic_filter: str) -> None:
        """A subscription on ``topic_filter`` changed: forget the plans it can affect."""
        plans = self._plans
        if not plans:
            return
        inner = parse_shared(topic_filter)[1]
        if "+" in inner or "#" in inner:
            plans.clear()  # any cached topic may match
        else:
            plans.pop(inner, None)

    def _plan(self, topic: str) -> tuple:
        plain, groups = self.trie.match_all(topic)
        taps = _EMPTY
        if self._taps and plain:
            taps = tuple({key: None for key, _, _ in plain if type(key) is Tap})
            if taps:
                plain = tuple(e for e in plain if type(e[0]) is not Tap)
        if not plain:
            targets = _EMPTY
        elif len(plain) == 1:
            session, (sqos, no_local, rap, sub_ids), _ = plain[0]
            targets = ((session, sqos, no_local, rap, sub_ids),)
        else:
            merged: dict = {}
            for session, (sqos, no_local, rap, sub_ids), _ in plain:
                prev = merged.get(session)
                if prev is None:
                    merged[session] = [sqos, no_local, rap, sub_ids]
                else:
                    prev[0] = max(prev[0], sqos)
                    prev[1] = prev[1] and no_local
                    prev[2] = prev[2] or rap
                    prev[3] = prev[3] + sub_ids
            targets = tuple((s, q, nl, rap, ids) for s, (q, nl, rap, ids) in merged.items())
        if targets and self._read_checks:
            # The ACL at delivery: decided once per (client, topic), kept in the plan.
            may_read = self.auth.may_read
            targets = tuple(t for t in targets if may_read(t[0].client_id, t[0].username, topic))
        plan = (targets, groups, taps)
        plans = self._plans
        if len(plans) >= _PLAN_CACHE_MAX:
            plans.clear()
        plans[topic] = plan
        return plan

    # ------------------------------------------------------------------ in-process consumers
    def add_tap(self, filters, fn) -> Tap:
        """Hand ``fn(msg)`` every routed message matching one of ``filters`` (see ``Tap``)."""
        filters = tuple(filters)
        for f in filters:
            group, _ = validate_topic_filter(f, self.max_topic_levels)
            if group is not None:
                raise ValueError(f"an internal consumer cannot take a shared subscription: {f!r}")
        tap = Tap(fn, filters)
        for f in filters:
            self.trie.add(f, tap, (0, False, False, _EMPTY))
            self._invalidate(f)
        self._taps += 1
        return tap

    def remove_tap(self, tap: Tap) -> None:
        for f in tap.filters:
            if self.trie.remove(f, tap):
                self._invalidate(f)
        self._taps -= 1

    @property
    def _read_checks(self) -> bool:
        return self.auth.read_restricted

    def _readers(self, topic: str):
        """Shared-group pick predicates with the read check: (online and may read, may read)."""
        may_read = self.auth.may_read

        def anyone(s: SessionState) -> bool:
            return may_read(s.client_id, s.username, topic)

        def online(s: SessionState) -> bool:
            return s.proto is not None and may_read(s.client_id, s.username, topic)

        return online, anyone

    def acl_changed(self) -> None:
        """The ACL's inputs changed (rules replaced, hooks registered): forget every
        cached decision, the delivery plans that hold read decisions included."""
        self.auth.reset()
        self._plans.clear()
        for s in self.sessions.values():
            if s.proto is not None:
                s.proto.pub_acl = None

    # ------------------------------------------------------------------ subscribe
    def subscribe(self, proto, subscriptions, sub_id, now) -> tuple[list, list]:
        """Add subscriptions; -> (SUBACK codes, retained deliveries as (msg, qos, sub_ids))."""
        s = proto.session
        codes: list[int] = []
        retained: list = []
        max_qos = self.limits.maximum_qos
        sub_ids = (sub_id,) if sub_id else _EMPTY
        hooks = self.hooks
        for sub in subscriptions:
            f = sub.topic_filter
            try:
                group, inner = validate_topic_filter(f, self.max_topic_levels)
            except ValueError as e:
                log.info("client %s: subscription refused: %s", proto.client_id, e)
                codes.append(RC.TOPIC_FILTER_INVALID)
                continue
            if group is not None and sub.no_local:  # [MQTT-3.8.3-4]
                raise ProtocolError(RC.PROTOCOL_ERROR, f"no local on the shared subscription {f!r}")
            if not self.auth.authorize(proto.client_id, proto.username, "subscribe", f):
                codes.append(RC.NOT_AUTHORIZED)
                self.acl_denied += 1
                continue
            existed = f in s.subscriptions
            if not existed and self.max_subscriptions and len(s.subscriptions) >= self.max_subscriptions:
                self.quota_refused["subscriptions"] += 1
                codes.append(RC.QUOTA_EXCEEDED)
                continue
            qos = sub.qos if sub.qos < max_qos else max_qos
            value = (qos, sub.no_local, sub.retain_as_published, sub_ids)
            s.subscriptions[f] = value
            if self.trie.add(f, s, value):
                self.subscription_count += 1
            self._invalidate(f)
            codes.append(qos)
            if hooks.active("on_subscribed"):
                hooks.notify("on_subscribed", SubscribedEvent(proto.client_id, proto.username, f, qos))
            rh = sub.retain_handling
            if group is None and (rh == 0 or (rh == 1 and not existed)) and self.retained.count:
                for msg in self.retained.match(inner):
                    if msg.expired(now):
                        self.retained.set(msg.topic, None)
                        continue
                    if sub.no_local and msg.origin == proto.client_id:
                        continue
                    if self._read_checks and not self.auth.may_read(proto.client_id, proto.username, msg.topic):
                        continue
                    rq = msg.qos if msg.qos < qos else qos
                    if self.sm4 is not None and self.sm4.covers(msg.topic):
                        msg = self.sm4.seal_retained(s, msg, rq, sub_ids, now)
                        if msg is None:  # delivered later, once the device's counters are reserved
                            continue
                    retained.append((msg, rq, sub_ids))
        if self.persister is not None and s.expiry:
            self.persister.session_changed(s)
        return codes, retained

    def unsubscribe(self, proto, filters, now) -> list:
        s = proto.session
        codes = []
        hooks = self.hooks
        for f in filters:
            if s.subscriptions.pop(f, None) is not None:
                self.trie.remove(f, s)
                self.subscription_count -= 1
                self._invalidate(f)
                codes.append(RC.SUCCESS)
                if hooks.active("on_unsubscribed"):
                    hooks.notify("on_unsubscribed", UnsubscribedEvent(proto.client_id, proto.username, f))
            else:
                codes.append(RC.NO_SUBSCRIPTION_EXISTED)
        if self.persister is not None and s.expiry:
            self.persister.session_changed(s)
        return codes

    # ------------------------------------------------------------------ stored deliveries
    # The protocol machine reports what happens to stored messages at persistent sessions.
    def delivery_sent(self, session: SessionState, msg: Message, pid: int) -> None:
        if self.persister is not None:
            self.persister.sent(session, msg, pid)

    def delivery_pubrec(self, session: SessionState, pid: int) -> None:
        if self.persister is not None:
            self.persister.pubrec(session, pid)

    def delivery_done(self, session: SessionState, pid: int) -> None:
        if self.persister is not None:
            self.persister.done(session, pid)

    def inbound_released(self, session: SessionState, pid: int) -> None:
        if self.persister is not None:
            self.persister.released(session, pid)

    # ------------------------------------------------------------------ $SYS
    def sys_values(self, now: float) -> dict[str, str]:
        st = self.stats
        up = int(now - self.started_at) if self.started_at is not None else 0
        return {
            "$SYS/broker/version": f"kefu {__version__}",
            "$SYS/broker/uptime": f"{up} seconds",
            "$SYS/broker/clients/connected": str(st.connected),
            "$SYS/broker/clients/total": str(len(self.sessions)),
            "$SYS/broker/messages/received": str(st.messages_received),
            "$SYS/broker/messages/sent": str(st.messages_sent),
            "$SYS/broker/messages/dropped": str(st.dropped),
            "$SYS/broker/bytes/received": str(st.bytes_received),
            "$SYS/broker/bytes/sent": str(st.bytes_sent),
            "$SYS/broker/subscriptions/count": str(self.subscription_count),
            "$SYS/broker/retained/count": str(self.retained.count),
        }

    def publish_sys(self, now: float) -> None:
        """Publish the statistics topics (retained, QoS 0)."""
        for topic, value in self.sys_values(now).items():
            msg = Message(topic, value.encode(), 0, True, NO_PROPERTIES, None, "")
            old = self.retained.get(topic)
            if old is not None and old.payload == msg.payload:
                continue
            self.retained.set(topic, msg)
            self.route(msg, now)

    # ------------------------------------------------------------------ shutdown
    def connected_protocols(self) -> list:
        return [s.proto for s in self.sessions.values() if s.proto is not None]


def _ignore(*_a) -> None:
    pass


def _delivery_failed(session: SessionState, msg: Message) -> None:
    log.exception("internal error delivering %r to client %r; message skipped for it", msg, session.client_id)
