"""Key management on top of a store: device keys, data-key rotation, background re-encryption.

``Keyring`` (storage.crypto) is pure and in memory; this module keeps it in step with
the ``keys`` table, which is the truth shared by every kefu process on the database
(the CLI included):

* ``new_device`` / ``revoke`` / ``rotate`` write the table; running nodes pick the
  change up at their next ``refresh`` (every ``refresh_s``, and at once when an envelope
  names a key id they do not know), so a revocation takes effect within that period.
* ``rotate`` makes a new data key active and marks the previous ones ``retiring``; the
  background task ``run`` re-encrypts rows sealed with retiring keys in small batches
  through the writer (so normal traffic interleaves: no downtime), and marks a key
  ``retired`` once nothing uses it. Old keys keep decrypting until then.
* Egress counters are reserved in blocks (``TX_RESERVE``) and the reservation is
  committed *before* any counter of the block is used: a crash skips counters, it never
  reuses a nonce.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from .crypto import HEADER_SIZE, KeyRecord, Keyring, Opened, UnknownKey, key_id_text

log = logging.getLogger("kefu.storage.keys")


class KeyService:
    def __init__(self, store, keyring: Keyring, *, refresh_s: float = 10.0, batch: int = 500) -> None:
        self.store = store
        self.keyring = keyring
        self.refresh_s = refresh_s
        self.batch = batch
        self._reserve_lock = trio.Lock()
        self._last_refresh = -1e9
        self._last_miss = -1e9

    @classmethod
    async def load(cls, store, keyring: Keyring, **kw) -> "KeyService":
        svc = cls(store, keyring, **kw)
        await svc.refresh()
        return svc

    async def refresh(self) -> None:
        self.keyring.load(await self.store.load_keys())
        self._last_refresh = trio.current_time()

    # ------------------------------------------------------------ administration

    async def ensure_data_key(self) -> int:
        """The active data key, creating the first one if there is none."""
        if self.keyring.active_data_key is None:
            rec, _ = self.keyring.new_key("data")
            await self.store.save_key(rec)
            log.info("created data key %d", rec.key_id)
        return self.keyring.active_data_key

    async def new_device(self, device_id: str, *, replace: bool = False) -> tuple[KeyRecord, bytes]:
        """A new key for one device (its MQTT client id). Returns the record and the raw key,
        which is shown once to be provisioned on the device and never stored unwrapped."""
        await self.refresh()
        old = self.keyring.device_key_id(device_id)
        if old is not None and not replace:
            raise ValueError(f"device {device_id!r} already has active key {key_id_text(old)}; revoke it first or use --replace")
        rec, key = self.keyring.new_key("device", device_id)
        await self.store.save_key(rec)
        if old is not None:
            await self.revoke(old)
        return rec, key

    async def revoke(self, key_id: int) -> KeyRecord:
        await self.refresh()
        rec = self.keyring.records.get(key_id)
        if rec is None:
            raise UnknownKey(f"no key {key_id_text(key_id)}")
        if rec.purpose == "data" and rec.state != "retired" and await self.store.count_key_uses(key_id):
            raise ValueError(f"data key {key_id_text(key_id)} still encrypts stored rows; `kefu keys rotate` retires it safely")
        await self.store.set_key_state(key_id, "revoked")
        return self.keyring.with_state(key_id, "revoked")

    async def rotate(self) -> KeyRecord:
        """A new active data key; the previous active ones become retiring."""
        await self.refresh()
        old = [r for r in self.keyring.records.values() if r.purpose == "data" and r.state == "active"]
        rec, _ = self.keyring.new_key("data")
        await self.store.save_key(rec)
        for r in old:
            await self.store.set_key_state(r.key_id, "retiring")
            self.keyring.with_state(r.key_id, "retiring")
        return rec

    async def rekey(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-encrypt everything sealed with a retiring key; retire those keys. Returns rows."""
        total = 0
        for rec in [r for r in self.keyring.records.values() if r.purpose == "data" and r.state == "retiring"]:
            while True:
                n = await self.store.reencrypt(rec.key_id, self._recrypt, self.batch)
                total += n
                if progress:
                    progress(rec.key_id, total)
                if n == 0:
                    break
                await trio.sleep(0)  # let normal traffic through between batches
            if await self.store.count_key_uses(rec.key_id) == 0:
                await self.store.set_key_state(rec.key_id, "retired")
                self.keyring.with_state(rec.key_id, "retired")
                log.info("data key %d retired (no rows left)", rec.key_id)
        return total

    def _recrypt(self, blob: bytes, ctx: bytes) -> bytes:
        # runs in the writer thread; Keyring's decrypt/encrypt only read its dictionaries
        return self.keyring.encrypt_field(self.keyring.decrypt_field(blob, ctx), ctx)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Background: refresh keys periodically and finish any rotation."""
        task_status.started()
        while True:
            try:
                await self.refresh()
                await self.rekey()
            except Exception:  # noqa: BLE001 - logged and retried at the next period
                log.exception("key maintenance failed; retrying in %.0f s", self.refresh_s)
            await trio.sleep(self.refresh_s)

    # ------------------------------------------------------------ devices on the wire

    async def open_from_device(self, client_id: str, topic: str, data: bytes) -> Opened:
        """Decrypt an envelope (ingress). A key id this node does not know triggers one
        refresh first (at most once a second), so a device provisioned a moment ago by the
        CLI is accepted at once; the rejection, if any, is counted and logged once."""
        if len(data) >= HEADER_SIZE:
            kid = Keyring.key_id_of(data)
            now = trio.current_time()
            if kid not in self.keyring.records and now - self._last_miss >= 1.0:
                self._last_miss = now
                await self.refresh()
        return self.keyring.open_from_device(client_id, topic, data)

    async def seal_for_device(self, client_id: str, topic: str, payload: bytes) -> bytes:
        """Encrypt for one device (egress), with a never-reused counter."""
        while True:
            kid, counter = self.keyring.next_tx(client_id)
            if counter is not None:
                return self.keyring.seal_for_device(client_id, topic, payload, kid, counter)
            async with self._reserve_lock:
                kid, counter = self.keyring.next_tx(client_id)
                if counter is not None:
                    return self.keyring.seal_for_device(client_id, topic, payload, kid, counter)
                limit = self.keyring.tx_reservation(kid)
                await self.store.save_tx_next(kid, limit)
                self.keyring.reserved(kid, limit)

