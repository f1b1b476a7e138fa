"""The broker's durability: MQTT state kept in ``kefu.storage``, acknowledged after commit.

Why it looks like this
----------------------
The broker below the trio driver is sans-I/O and routes a PUBLISH synchronously, so it
cannot await a database. Instead it writes an ordered *log* here, and one persister
task per broker turns everything logged since its last wake-up into ONE storage
operation (``store.broker_batch``: one transaction, one fsync / WAL flush). That is the
group commit: under load a wake-up carries hundreds of messages, at rest one.

* A QoS 1/2 PUBLISH is routed at once (online subscribers, QoS 0 and non-persistent
  fan-out never wait for storage), logged with the persistent sessions it was given
  to at QoS > 0 (their offline queue / inflight rows), and its PUBACK/PUBREC is *held*
  by the protocol machine (``Router.publish`` returns None) until the batch holding it
  has committed: then ``Protocol.release_held`` writes the acknowledgements in order.
  ``storage.ack_after_commit = false`` stores the same way but acknowledges at once.
* Retained messages (any QoS), persistent sessions (subscriptions, expiry, connected
  or not), what they are owed, packet ids given to inflight deliveries (``sent``),
  PUBREC / PUBACK / PUBCOMP from them and PUBREL for inbound QoS 2 are log entries
  too, so the stored queue follows the in-memory one, batched with the rest (never a
  round trip per message). ``restore`` rebuilds sessions, queues, inflight and retained
  messages at start, before the listeners accept.
* The log is applied in order. Within a stretch without session changes or inbound
  releases the publishes go first (one bulk insert): a delivery entry only ever refers
  to a message logged before it, so this keeps every dependency and saves statements.

When the database is unavailable
--------------------------------
The storage writer keeps retrying the batch; acknowledgements stay held meanwhile (a
short lock or failover is only latency). A batch that fails (``StorageUnavailable``:
not committed within ``storage.commit_timeout``, or the writer's buffer is full) is
answered by closing the connections whose acknowledgements it held, acknowledging
nothing (``Protocol.unavailable``: 5.0 gets DISCONNECT 0x89 server busy, 3.1.1 a plain
close): their clients send those messages again after reconnecting (at least once; a
batch that still commits later makes duplicates, never losses). While the database is
down at most ``storage.max_pending`` messages wait here; a QoS 1/2 PUBLISH beyond that
closes its connection at once, unrouted. The first failure and the recovery are logged
once each; ``/readyz`` reports ``store.health()``.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import trio

from ..storage.base import SessionRecord, StorageError, StorageUnavailable, StoredMessage, SubscriptionRecord
from .mqtt.message import Message
from .mqtt.packets import NO_PROPERTIES, PacketType
from .mqtt.properties import encode_properties, read_properties
from .mqtt.session import NEVER_EXPIRES, RELEASED, SessionState
from .topics import filter_matches, parse_shared

log = logging.getLogger("kefu.broker.persist")

FINAL_FLUSH_S = 0.5  # at shutdown, at most this long to store what is still logged

# storage/sqlstore.py SqlStore.B_*: the kinds of log entries
B_PUBLISH, B_SENT, B_PUBREC, B_ACK, B_RELEASE, B_SESSION, B_DEL_SESSION, B_RX_HIGH, B_DROP = range(9)
_BARRIERS = frozenset({B_RELEASE, B_SESSION, B_DEL_SESSION})
_PUBLISH = PacketType.PUBLISH


class Rec:
    """One stored PUBLISH: set as ``Message.rec``; ``id`` is filled in by the commit."""

    __slots__ = ("id", "msg", "recipients", "proto", "rc", "inbound", "replay", "created", "gated")

    def __init__(self, msg: Message | None = None, proto=None, inbound=None, replay=None, created: float = 0.0) -> None:
        self.id = 0
        self.msg = msg
        self.recipients: list = []
        self.proto = proto  # the connection whose acknowledgement waits for the commit
        self.rc = 0
        self.inbound = inbound
        self.replay = replay
        self.created = created
        self.gated = 0  # consumers (the desk) still handling it: its acknowledgement waits for them too


def encode_props(props) -> bytes:
    return b"" if props is NO_PROPERTIES else encode_properties(props, _PUBLISH)


def decode_props(blob: bytes):
    return NO_PROPERTIES if not blob else read_properties(blob, 0, len(blob), _PUBLISH)[0]


def session_record(s: SessionState, proto, wall: float) -> SessionRecord:
    subs = tuple(SubscriptionRecord(f, q, bool(nl), bool(rap), 0, ids[0] if ids else None)
                 for f, (q, nl, rap, ids) in s.subscriptions.items())
    level = proto.version if proto is not None and proto.version else 4
    connected = s.proto is not None
    return SessionRecord(s.client_id, level, s.expiry, subs, connected, None if connected else wall, wall)


class Persister:
    """Logs what the router does to stored state and commits it in groups (see above)."""

    def __init__(self, router, store, *, mqtt: bool = True, ack_after_commit: bool = True, store_unowed: bool = True,
                 max_pending: int = 10000, keyring=None, wall=time.time) -> None:
        self.router = router
        self.store = store
        self.mqtt = mqtt
        self.ack_after_commit = ack_after_commit
        # False: a QoS 1/2 PUBLISH that no persistent session is owed (not retained) is
        # routed and acknowledged at once, not stored: nothing could redeliver it after a
        # crash anyway (storage.store_unowed_messages).
        self.store_unowed = store_unowed
        self.max_pending = max_pending
        self.keyring = keyring  # to un-accept SM4 counters of messages that could not be stored
        self.wall = wall
        self.log: list = []
        self.waiting = 0  # stored PUBLISHes logged or being committed
        self.stored: set[str] = set()  # client ids with a stored session
        self.outage = ""  # why the last batch failed ("" once one commits again)
        self._event = trio.Event()
        self._kicked = False
        self._taken = 0  # batches taken from the log / finished (committed or failed)
        self._finished = 0
        self._done_lot = trio.lowlevel.ParkingLot()
        # ``Rec.gated``: in-process consumers (the desk, through kefu.bridge.bus.RouterBus's
        # router tap) count themselves in while the message is routed, and each calls
        # ``ungate(rec)`` when its own writes are committed; the acknowledgement waits for them.
        self._gated: dict = {}  # proto -> deque of committed Recs, in PUBLISH order, behind a gated one
        # counters (metrics, tests, the benchmark)
        self.batches = 0
        self.committed = 0  # PUBLISHes committed
        self.refused = 0  # PUBLISHes refused unrouted while the buffer was full
        self.unowed = 0  # PUBLISHes acknowledged without storing (store_unowed off, no persistent recipient)
        self.failed = 0  # PUBLISHes whose batch failed (connections closed, nothing acknowledged)

    # ------------------------------------------------------------------ from the router (sync)
    def _kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            self._event.set()

    def route(self, msg: Message, now: float, proto, replay, pid) -> int | None:
        """Route ``msg`` and log it; None when its acknowledgement waits for the commit."""
        qos = msg.qos
        if not self.mqtt or not (qos or msg.retain):
            if replay is not None:
                self.log.append((B_RX_HIGH, replay[0], replay[1]))
                self._kick()
            return self.router.route(msg, now)
        # ack_after_commit off: acknowledged at once while fewer than max_pending wait for
        # storage; beyond that they wait for their commit too (back-pressure, bounded memory)
        hold = proto if (proto is not None and qos and (self.ack_after_commit or self.waiting >= self.max_pending)) \
            else None
        inbound = (proto.client_id, pid) if (qos == 2 and proto is not None and proto.session.expiry) else None
        rec = msg.rec = Rec(msg, hold, inbound, replay, now)
        self.log.append(rec)  # before routing: deliveries made while routing refer to it
        self.waiting += 1
        self._kick()
        rc = rec.rc = self.router.route(msg, now, rec.recipients)
        if (not self.store_unowed and not rec.recipients and not msg.retain and inbound is None and replay is None
                and self.log and self.log[-1] is rec):
            # No persistent session is owed it: nothing to commit, nothing to wait for
            # (the protocol still keeps it behind acknowledgements held before it).
            self.log.pop()
            self.waiting -= 1
            msg.rec = None
            self.unowed += 1
            return rc
        return None if hold is not None else rc

    def refuse(self, proto, replay, now: float) -> bool:
        """While the database is away and ``max_pending`` messages wait: refuse (close)."""
        if self.waiting < self.max_pending or not self.mqtt or not (self.outage or not self.store.health().ready):
            return False
        if not self.refused:
            log.error("storage unavailable and %d messages waiting: refusing QoS 1/2 PUBLISHes (connections "
                      "closed, nothing acknowledged) until it recovers", self.waiting)
        self.refused += 1
        if replay is not None and self.keyring is not None:
            self.keyring.forget_rx(*replay)
        proto.unavailable(now)
        return True

    def attached(self, s: SessionState, proto) -> None:
        if not self.mqtt:
            return
        if s.expiry:
            self.stored.add(s.client_id)
            self.log.append((B_SESSION, session_record(s, proto, self.wall())))
            self._kick()
        elif s.client_id in self.stored:  # resumed with expiry 0: it ends with this connection
            self.session_ended(s)

    def detached(self, s: SessionState, proto) -> None:
        if self.mqtt and s.expiry and s.client_id in self.stored:
            self.log.append((B_SESSION, session_record(s, proto, self.wall())))
            self._kick()

    def session_changed(self, s: SessionState) -> None:
        if self.mqtt and s.client_id in self.stored:
            self.log.append((B_SESSION, session_record(s, s.proto, self.wall())))
            self._kick()

    def session_ended(self, s: SessionState) -> None:
        if s.client_id in self.stored:
            self.stored.discard(s.client_id)
            self.log.append((B_DEL_SESSION, s.client_id))
            self._kick()

    def sent(self, s: SessionState, msg: Message, pid: int) -> None:
        self.log.append((B_SENT, s.client_id, msg.rec, pid))
        self._kick()

    def pubrec(self, s: SessionState, pid: int) -> None:
        self.log.append((B_PUBREC, s.client_id, pid))
        self._kick()

    def done(self, s: SessionState, pid: int) -> None:
        self.log.append((B_ACK, s.client_id, pid))
        self._kick()

    def released(self, s: SessionState, pid: int) -> None:
        self.log.append((B_RELEASE, s.client_id, pid))
        self._kick()

    # ------------------------------------------------------------------ the persister task
    def _entries(self, batch: list, now: float, wall: float) -> tuple[list, list]:
        """Log -> storage entries. A delivery of a message logged in this same batch goes
        into that message's queue row (stored already "sent", or not at all once
        acknowledged) instead of a row plus an update plus a delete; then, within each
        stretch between barriers, the publishes go first."""
        here = {id(e) for e in batch if type(e) is Rec}
        sent_here: dict = {}  # (client id, packet id) -> (Rec, index in its recipients)
        kept = []
        for e in batch:
            if type(e) is not Rec:
                kind = e[0]
                if kind == B_SENT and id(e[2]) in here:
                    rec, cid, pid = e[2], e[1], e[3]
                    rs = rec.recipients
                    for i, r in enumerate(rs):
                        if r is not None and r[0] == cid and len(r) == 2:
                            rs[i] = (cid, r[1], pid, "sent")
                            sent_here[(cid, pid)] = (rec, i)
                            break
                    else:
                        kept.append(e)
                    continue
                if kind == B_ACK or kind == B_PUBREC:
                    hit = sent_here.get((e[1], e[2]))
                    if hit is not None:
                        rec, i = hit
                        r = rec.recipients[i]
                        if kind == B_ACK:  # delivered and acknowledged before it was even stored
                            rec.recipients[i] = None
                            del sent_here[(e[1], e[2])]
                        else:
                            rec.recipients[i] = (r[0], r[1], r[2], "pubrec")
                        continue
            kept.append(e)
        # Runs of one kind are one statement each, so within a stretch the entries are
        # grouped: publishes, sent marks, PUBRECs, acknowledgements, replay marks. A mark
        # only refers to a message or a packet id marked before it, so this keeps every
        # dependency; a sent mark reusing a packet id acknowledged earlier in the stretch
        # starts a new stretch (its row must not be deleted by that acknowledgement).
        out: list = []
        groups: dict[int, list] = {B_PUBLISH: [], B_SENT: [], B_PUBREC: [], B_ACK: [], B_RX_HIGH: [], B_DROP: []}
        touched: set = set()  # (client id, packet id) acknowledged or PUBREC'd in this stretch
        recs: list = []

        def close(barrier=None):
            for kind in (B_PUBLISH, B_SENT, B_PUBREC, B_ACK, B_RX_HIGH, B_DROP):
                if groups[kind]:
                    out.extend(groups[kind])
                    groups[kind] = []
            touched.clear()
            if barrier is not None:
                out.append(barrier)

        for e in kept:
            if type(e) is Rec:
                m = e.msg
                exp = None if m.expires_at is None else wall + (m.expires_at - now)
                sm = StoredMessage(m.topic, m.payload, m.qos, m.retain, encode_props(m.properties), m.origin,
                                   wall - (now - e.created), exp)
                groups[B_PUBLISH].append((B_PUBLISH, sm, tuple(r for r in e.recipients if r is not None), e.inbound,
                                          e.replay, e))
                recs.append(e)
                continue
            kind = e[0]
            if kind in _BARRIERS:
                close(e)
            elif kind == B_SENT:
                if (e[1], e[3]) in touched:
                    close()
                groups[B_SENT].append(e)
            else:
                if kind == B_ACK or kind == B_PUBREC:
                    touched.add((e[1], e[2]))
                groups[kind].append(e)
        close()
        return out, recs

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Commit the log in groups until cancelled (one ``broker_batch`` at a time)."""
        task_status.started(self)
        try:
            while True:
                await self._event.wait()
                self._event = trio.Event()
                self._kicked = False
                await self._commit_log()
        finally:
            # Stopping: store what is logged (delivery marks, session states, messages
            # acknowledged before their commit) if the database takes it within a moment.
            if self.log:
                with trio.CancelScope(shield=True) as cs:
                    cs.deadline = trio.current_time() + FINAL_FLUSH_S
                    await self._commit_log()

    async def _commit_log(self) -> None:
        batch, self.log = self.log, []
        if not batch:
            return
        self._taken += 1
        entries, recs = self._entries(batch, trio.current_time(), self.wall())
        try:
            await self.store.broker_batch(entries)
        except StorageUnavailable as e:
            self._failed(recs, e.reason)
        except Exception as e:  # a bug or a bad value: that batch fails, the broker goes on
            log.exception("storing %d broker log entries failed", len(entries))
            self._failed(recs, f"{type(e).__name__}: {e}")
        else:
            self._committed(recs)
        self._finished += 1
        self._done_lot.unpark_all()

    async def flush(self) -> None:
        """Return once everything logged so far is committed (or has failed)."""
        want = self._taken + (1 if self.log else 0)
        while self._finished < want:
            await self._done_lot.park()

    def _committed(self, recs: list) -> None:
        self.batches += 1
        self.committed += len(recs)
        self.waiting -= len(recs)
        if self.outage:
            log.warning("storage is back: stored messages are acknowledged again")
            self.outage = ""
            self.refused = 0
        by_proto: dict = {}
        gated = self._gated
        waiting: set = set()
        for r in recs:
            r.msg = None  # the Message keeps its Rec (for deliveries); the Rec need not keep it
            if r.proto is not None and (r.gated or r.proto in gated):
                q = gated.get(r.proto)  # acknowledged in order: everything behind a gated one waits
                if q is None:
                    q = gated[r.proto] = deque()
                q.append(r)
                waiting.add(r.proto)
            elif r.proto is not None:
                codes = by_proto.get(r.proto)
                if codes is None:
                    by_proto[r.proto] = [r.rc]
                else:
                    codes.append(r.rc)
                r.proto = None
        if by_proto:
            now = trio.current_time()
            for proto, codes in by_proto.items():
                proto.release_held(codes, now)
        for proto in waiting:
            self._drain(proto)

    def _drain(self, proto) -> None:
        q = self._gated.get(proto)
        if q is None:
            return
        codes = []
        while q and not q[0].gated:
            r = q.popleft()
            r.proto = None
            codes.append(r.rc)
        if not q:
            del self._gated[proto]
        if codes:
            proto.release_held(codes, trio.current_time())

    def ungate(self, rec: Rec, ok: bool = True) -> None:
        """A consumer is done with ``rec`` (its own writes committed). ``ok`` False: it could
        not keep it (storage unavailable): the connection is closed, nothing acknowledged,
        and the client sends the message again."""
        if not rec.gated:
            return
        rec.gated -= 1
        proto = rec.proto
        if proto is None:
            return  # failed or closed meanwhile
        if not ok:
            rec.gated = 0
            q = self._gated.pop(proto, None)
            for r in q or ():
                r.proto = None
            proto.unavailable(trio.current_time())
            return
        if not rec.gated and proto in self._gated:
            self._drain(proto)
        # not committed yet: the commit acknowledges it (gated is 0 now)

    def _failed(self, recs: list, reason: str) -> None:
        self.waiting -= len(recs)
        self.failed += len(recs)
        protos = {r.proto for r in recs if r.proto is not None}
        if not self.outage:
            log.error("storage unavailable: %s; %d messages not stored and not acknowledged, %d connections "
                      "closed so their clients send them again; holding new ones (up to %d)",
                      reason, len(recs), len(protos), self.max_pending)
        self.outage = reason or "storage unavailable"
        if self.keyring is not None:
            for r in recs:
                if r.replay is not None:
                    self.keyring.forget_rx(*r.replay)
        now = trio.current_time()
        for proto in protos:
            for r in self._gated.pop(proto, None) or ():
                r.proto = None
            proto.unavailable(now)
        for r in recs:
            r.proto = None
            r.msg = None

    # ------------------------------------------------------------------ restore at start
    async def restore(self, now: float) -> dict[str, int]:
        """Rebuild retained messages, persistent sessions, their queues and inflight
        messages from storage. Call before the listeners accept."""
        router = self.router
        store = self.store
        limits = router.limits
        counts = {"retained": 0, "sessions": 0, "queued": 0, "inflight": 0, "expired": 0}
        wall = self.wall()
        for sm in await store.load_retained():
            router.retained.set(sm.topic, _message(sm, now, wall, retain=True))
            counts["retained"] += 1
        if not self.mqtt:
            return counts
        messages: dict[int, Message] = {}
        for rec in await store.load_sessions():
            cid = rec.client_id
            expiry = min(rec.expiry_interval, limits.max_session_expiry) if rec.expiry_interval != NEVER_EXPIRES \
                else NEVER_EXPIRES
            gone_at = wall if rec.connected or rec.disconnected_at is None else rec.disconnected_at
            left = None if expiry == NEVER_EXPIRES else gone_at + expiry - wall
            if left is not None and left <= 0 or expiry == 0:
                self.log.append((B_DEL_SESSION, cid))
                counts["expired"] += 1
                continue
            s = SessionState(cid, limits, router.stats)
            s.expiry = expiry
            s.subscriptions = {sub.topic_filter: (sub.qos, sub.no_local, sub.retain_as_published,
                                                  (sub.subscription_id,) if sub.subscription_id else ())
                               for sub in rec.subscriptions}
            s.expires_at = None if left is None else now + left
            queue = await store.load_queue(cid, limit=limits.max_offline_messages + limits.receive_maximum)
            for q in queue:
                msg = messages.get(q.message.id)
                if msg is None:
                    msg = messages[q.message.id] = _message(q.message, now, wall, retain=False)
                    msg.rec = Rec()
                    msg.rec.id = q.message.id
                ids = _sub_ids(s, msg.topic)
                if q.state == "queued" or q.packet_id is None:
                    if s.pending is None:
                        s.pending = deque()
                    s.pending.append((msg, q.qos, False, ids))
                    s.hold(msg)
                    counts["queued"] += 1
                elif q.state == "pubrec":
                    s.inflight[q.packet_id] = RELEASED
                    counts["inflight"] += 1
                else:  # "sent": resent with DUP on reconnect, re-encoded for the client's version
                    s.inflight[q.packet_id] = (msg, q.qos, False, ids, b"", "restored")
                    counts["inflight"] += 1
            inbound = await store.inbound_pending(cid)
            if inbound:
                s.qos2_in = set(inbound)
            router.restore_session(s)
            self.stored.add(cid)
            counts["sessions"] += 1
            if rec.connected:  # kefu stopped while it was connected: it is disconnected now
                self.log.append((B_SESSION, session_record(s, None, wall)))
        if self.log:
            self._kick()
        return counts


def _message(sm: StoredMessage, now: float, wall: float, *, retain: bool) -> Message:
    exp = None if sm.expires_at is None else now + (sm.expires_at - wall)
    return Message(sm.topic, sm.payload, sm.qos, retain, decode_props(sm.properties), exp, sm.sender)


def _sub_ids(s: SessionState, topic: str) -> tuple:
    ids: tuple = ()
    for f, (_q, _nl, _rap, sub_ids) in s.subscriptions.items():
        if sub_ids and filter_matches(parse_shared(f)[1], topic):
            ids += sub_ids
    return ids


# --------------------------------------------------------------------------- wiring


class StorageStartError(StorageError):
    """The broker cannot use the configured storage (one line for the operator)."""


async def attach_storage(broker, store, nursery, cfg) -> Persister | None:
    """Give ``broker`` the opened ``store`` (for ``kefu/app.py``, before ``broker.serve``):
    restore its MQTT state, start the persister (and the SM4 device wire when ``[sm4]
    device_topics`` is set) in ``nursery``. None (nothing attached) when
    ``storage.persist_mqtt`` is off and no device topics are configured."""
    from ..config import ConfigError
    from .sm4wire import DeviceWire, check_device_topics

    sc = cfg.storage
    topics = cfg.sm4.device_topics
    problems = check_device_topics(topics)
    if problems:
        raise ConfigError(problems)
    if not (sc.persist_mqtt or topics):
        return None
    keys = getattr(store, "keys", None)
    if topics and keys is None:
        raise StorageStartError("sm4.device_topics needs the master key: set storage.master_key_file or the "
                                f"environment variable {sc.master_key_env}")
    router = broker.router
    p = Persister(router, store, mqtt=sc.persist_mqtt, ack_after_commit=sc.ack_after_commit,
                  store_unowed=getattr(sc, "store_unowed_messages", True),
                  max_pending=sc.max_pending, keyring=keys.keyring if keys is not None else None)
    counts = await p.restore(trio.current_time())
    if sc.persist_mqtt and any(counts.values()):
        log.info("restored from storage: %(sessions)d sessions (%(expired)d expired), %(queued)d queued and "
                 "%(inflight)d inflight messages, %(retained)d retained messages", counts)
    await nursery.start(p.run)
    router.persister = p
    if topics:
        wire = DeviceWire(router, store, topics)
        await nursery.start(wire.run)
        await wire.seal_restored()
        router.sm4 = wire
    return p
