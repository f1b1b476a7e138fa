"""SM4 on the wire to devices: envelopes opened on ingress, sealed per device on egress.

The envelope, keys and replay window are ``kefu.storage.crypto`` (docs/sm4-envelope.md);
this module puts them in the broker's path for the topics named by ``[sm4]
device_topics``. A *device* is a client whose MQTT client id has an active key
(``kefu keys new-device ID``); everybody else (kefu's desk, agents, back ends) uses
plaintext on those topics.

* Ingress (``open``, called by ``Router.publish`` before anything sees the message): a
  device's PUBLISH must be a valid envelope for its key, client id and topic; the
  plaintext is routed (so the desk, the intent engine and internal subscribers read
  it) and the counter is stored with the message as the key's replay high-water mark.
  A PUBLISH that carries a device->kefu envelope header from a client kefu does not
  know as a device is treated as an envelope too (refused as unknown_key, and the keys
  are reloaded): a device provisioned a moment ago is then known for its next message.
  Rejections (malformed, unknown or revoked key, tag mismatch, replay) are counted per
  reason and logged at most once per device per minute by the keyring's
  ``RejectCounter``; the router answers 5.0 with PUBACK 0x99 and drops them for 3.1.1.
* Egress (``sealer``, used by ``Router.route`` per recipient): a delivery to a device on
  a device topic gets its own copy sealed with that device's key and a fresh counter.
  Counters are used only from a block reserved in the database first (kefu never
  reuses a nonce, even after a crash); the blocks are reserved ahead by this module's
  task. If a device ever runs out before the task caught up, its deliveries wait here,
  in order, and go out sealed once the block is reserved. A delivery to a client whose
  key was revoked is dropped (and counted), never sent in plaintext.

Stored messages hold the plaintext (kept SM4-encrypted at rest only where
``storage.encrypt_at_rest`` covers them); what a device is owed after a restart is
sealed again at start (``seal_restored``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import replace

import trio

from ..storage.base import StorageUnavailable
from ..storage.crypto import (
    DIR_TO_KEFU, ENVELOPE_VERSION, OVERHEAD, TX_RESERVE, CryptoError, UnknownKey,
)
from .mqtt.message import Message
from .mqtt.session import RELEASED
from .topics import filter_matches, validate_topic_filter

log = logging.getLogger("kefu.broker.sm4")

_COVER_CACHE_MAX = 16384


def check_device_topics(filters) -> list[str]:
    """Problems with ``[sm4] device_topics`` (config-style lines), [] when fine."""
    if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
        return ["sm4.device_topics: expected a list of MQTT topic filters (strings)"]
    out = []
    for f in filters:
        try:
            group, _ = validate_topic_filter(f)
        except ValueError as e:
            out.append(f"sm4.device_topics: {e}")
            continue
        if group is not None:
            out.append(f"sm4.device_topics: {f!r} is a shared subscription, not a topic filter")
    return out


def looks_like_envelope(data: bytes) -> bool:
    """A device->kefu envelope header (version 1, direction 0x01, reserved zero bytes)."""
    return (len(data) >= OVERHEAD and data[0] == ENVELOPE_VERSION and data[5] == DIR_TO_KEFU
            and data[6:9] == b"\0\0\0")


class DeviceWire:
    def __init__(self, router, store, device_topics: list[str]) -> None:
        self.router = router
        self.store = store
        self.keys = store.keys  # KeyService
        self.keyring = self.keys.keyring
        self.filters = list(device_topics)
        self._covers: dict[str, bool] = {}
        self._deferred: dict[str, deque] = {}  # client id -> deliveries waiting for counters
        self._reserve: set[int] = set()  # device key ids whose next counter block is wanted
        self._refresh_wanted = False
        self._event = trio.Event()
        self._lot = trio.lowlevel.ParkingLot()
        self._nrec = -1
        self._ever: set[str] = set()  # device ids that have (or had) a key
        self.opened = 0
        self.sealed = 0
        self.dropped = 0  # deliveries to a device without an active key (revoked)

    @property
    def rejects(self):
        """``RejectCounter``: ``.totals`` per reason (malformed, unknown_key, ...)."""
        return self.keyring.rejects

    def covers(self, topic: str) -> bool:
        hit = self._covers.get(topic)
        if hit is None:
            hit = any(filter_matches(f, topic) for f in self.filters)
            if len(self._covers) >= _COVER_CACHE_MAX:
                self._covers.clear()
            self._covers[topic] = hit
        return hit

    def _kick(self) -> None:
        self._event.set()

    # ------------------------------------------------------------------ ingress
    def open(self, client_id: str, topic: str, payload: bytes):
        """-> (plaintext, (key id, counter) or None), or None when rejected."""
        kr = self.keyring
        if kr.device_key_id(client_id) is None and not looks_like_envelope(payload):
            return payload, None  # not a device: plaintext passes
        try:
            o = kr.open_from_device(client_id, topic, payload)
        except UnknownKey:
            self._refresh_wanted = True  # maybe provisioned since the last refresh
            self._kick()
            return None
        except CryptoError:
            return None
        self.opened += 1
        return o.payload, (o.key_id, o.counter)

    # ------------------------------------------------------------------ egress
    def connected(self, client_id: str) -> None:
        kid = self.keyring.device_key_id(client_id)
        if kid is not None and self.keyring.tx_left(kid) < TX_RESERVE // 2:
            self._reserve.add(kid)
            self._kick()

    def _is_device(self, client_id: str) -> bool:
        records = self.keyring.records
        if len(records) != self._nrec:
            self._nrec = len(records)
            self._ever = {r.device_id for r in records.values() if r.purpose == "device" and r.device_id}
        return client_id in self._ever

    def _sealed(self, client_id: str, msg: Message) -> Message | None:
        """A copy of ``msg`` sealed for ``client_id``; None when no counter is reserved."""
        kr = self.keyring
        kid, counter = kr.next_tx(client_id)
        if kr.tx_left(kid) < TX_RESERVE // 2 and kid not in self._reserve:
            self._reserve.add(kid)
            self._kick()
        if counter is None:
            return None
        props = msg.properties
        if props.payload_format_indicator:
            props = replace(props, payload_format_indicator=None)
        copy = Message(msg.topic, kr.seal_for_device(client_id, msg.topic, msg.payload, kid, counter), msg.qos,
                       msg.retain, props, msg.expires_at, msg.origin)
        copy.rec = msg.rec
        self.sealed += 1
        return copy

    def sealer(self, topic: str):
        return self._seal if self.covers(topic) else None

    def _seal(self, session, msg: Message, qos: int, retain: bool, sub_ids, now) -> None:
        cid = session.client_id
        if self.keyring.device_key_id(cid) is None:
            if self._is_device(cid):  # its key was revoked: never plaintext to it
                self.dropped += 1
                return
            session.deliver(msg, qos, retain, sub_ids, now)
            return
        waiting = self._deferred.get(cid)
        if waiting is None:
            sealed = self._sealed(cid, msg)
            if sealed is not None:
                session.deliver(sealed, qos, retain, sub_ids, now)
                return
            waiting = self._deferred[cid] = deque()
        if len(waiting) >= self.router.limits.max_offline_messages:
            waiting.popleft()
            self.router.stats.dropped += 1
        waiting.append((session, msg, qos, retain, sub_ids))

    def seal_retained(self, session, msg: Message, qos: int, sub_ids, now) -> Message | None:
        """A retained message for a subscriber: its sealed copy, the message itself for
        a non-device, or None when it is delivered later (or not at all: revoked)."""
        cid = session.client_id
        if self.keyring.device_key_id(cid) is None:
            if self._is_device(cid):
                self.dropped += 1
                return None
            return msg
        if cid not in self._deferred:
            sealed = self._sealed(cid, msg)
            if sealed is not None:
                return sealed
            self._deferred[cid] = deque()
        self._deferred[cid].append((session, msg, qos, True, sub_ids))
        return None

    # ------------------------------------------------------------------ background
    async def _reserve_block(self, kid: int) -> None:
        kr = self.keyring
        limit = kr.tx_reservation(kid)
        await self.store.save_tx_next(kid, limit)  # committed before any counter of the block is used
        kr.reserved(kid, limit)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reserve counter blocks ahead, reload keys on demand, send deferred deliveries."""
        task_status.started(self)
        last_refresh = -1e9
        while True:
            await self._event.wait()
            self._event = trio.Event()
            try:
                if self._refresh_wanted and trio.current_time() - last_refresh >= 1.0:
                    self._refresh_wanted = False
                    last_refresh = trio.current_time()
                    await self.keys.refresh()
                while self._reserve:
                    kid = self._reserve.pop()
                    if kid in self.keyring.records:
                        await self._reserve_block(kid)
            except StorageUnavailable as e:
                log.warning("SM4: cannot reserve egress counters now (%s); deliveries to devices wait", e.reason)
                await trio.sleep(1.0)
                self._kick()
                continue
            self._flush_deferred()
            self._lot.unpark_all()
            if self._refresh_wanted:  # asked again within the second: try once it has passed
                await trio.sleep(1.0)
                self._kick()

    async def settle(self) -> None:
        """Return once no reservation, key reload or deferred delivery is outstanding."""
        while self._deferred or self._reserve or self._refresh_wanted:
            await self._lot.park()

    def _flush_deferred(self) -> None:
        now = trio.current_time()
        for cid in list(self._deferred):
            waiting = self._deferred[cid]
            while waiting:
                session, msg, qos, retain, sub_ids = waiting[0]
                if self.keyring.device_key_id(cid) is None:
                    self.dropped += len(waiting)
                    waiting.clear()
                    break
                sealed = self._sealed(cid, msg)
                if sealed is None:
                    break
                waiting.popleft()
                session.deliver(sealed, qos, retain, sub_ids, now)
            if not waiting:
                del self._deferred[cid]

    async def seal_restored(self) -> None:
        """At start: seal what restored device sessions are owed on device topics."""
        kr = self.keyring
        for s in list(self.router.sessions.values()):
            kid = kr.device_key_id(s.client_id)
            if kid is None:
                continue
            entries = [(pid, e) for pid, e in s.inflight.items() if e is not RELEASED and self.covers(e[0].topic)]
            pending = [i for i, e in enumerate(s.pending or ()) if self.covers(e[0].topic)]
            need = len(entries) + len(pending)
            while kr.tx_left(kid) < need:
                await self._reserve_block(kid)
            for pid, (msg, qos, retain, sub_ids, packet, tag) in entries:
                s.inflight[pid] = (self._sealed(s.client_id, msg), qos, retain, sub_ids, b"", "restored")
            for i in pending:
                msg, qos, retain, sub_ids = s.pending[i]
                sealed = self._sealed(s.client_id, msg)
                if sealed is not None:
                    s.unhold(msg)
                    s.hold(sealed)
                s.pending[i] = (sealed, qos, retain, sub_ids)


__all__ = ["DeviceWire", "check_device_topics", "looks_like_envelope"]
