"""SM4 (GB/T 32907) for kefu: the device envelope, at-rest field encryption, the keyring.

All SM4 work goes through OpenSSL (the `cryptography` wheel) in GCM mode; the pure-Python
``gmssl`` package is used only by the tests and the benchmark as an independent check.

Why the envelope looks like this (byte layout in docs/sm4-envelope.md):

    version(1) | key id(4, BE) | nonce(12) | ciphertext(n) | tag(16)

* The nonce is *structured*: byte 0 is the direction (0x01 device -> kefu, 0x02 kefu ->
  device), bytes 1-3 are zero and bytes 4-11 a per-key, per-direction counter (uint64 BE).
  GCM needs a nonce that never repeats under one key; a counter guarantees that where a
  random 96-bit value only makes it likely, and the same counter gives replay protection
  for free: kefu keeps a sliding window (highest counter + 64-bit bitmap) per device key.
  The direction byte keeps the two directions' nonce spaces apart under one shared key.
* The additional authenticated data binds the header, the MQTT client id and the topic,
  so an envelope lifted onto another topic, or sent by another client, fails the tag.
* A rejected envelope raises a specific ``CryptoError`` subclass. It is counted per
  reason and logged at most once per device per minute (a misconfigured device sending
  10 messages/s must not flood the log); nothing is ever decrypted into garbage and
  passed on, because GCM checks the tag before any plaintext is released.

At rest, message bodies and contact personal data are stored as the same layout with a
random nonce (direction byte 0x00), the key id of the data key that sealed them, and AAD
naming the column ("chat_messages.body"). Data keys and device keys are themselves kept
wrapped (SM4-GCM) by the master key, which comes from a file or an environment variable,
never from the config file, and is never logged (its repr is a fingerprint).
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
import secrets
import stat
import struct
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding as _padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

log = logging.getLogger("kefu.storage.crypto")

KEY_SIZE = 16
NONCE_SIZE = 12
TAG_SIZE = 16
ENVELOPE_VERSION = 1
HEADER = struct.Struct(">BI12s")  # version, key id, nonce
HEADER_SIZE = HEADER.size  # 17
OVERHEAD = HEADER_SIZE + TAG_SIZE  # 33
DIR_AT_REST = 0x00
DIR_TO_KEFU = 0x01
DIR_TO_DEVICE = 0x02
MAX_COUNTER = (1 << 63) - 1  # stored in signed 64-bit columns
REPLAY_WINDOW = 64
TX_RESERVE = 1024  # egress counters reserved (persisted) per step, so a crash never reuses one


# ---------------------------------------------------------------------------------------
# errors



def key_id_text(key_id: int) -> str:
    """A key id as people read it (docs/sm4-envelope.md, `kefu keys`): 0x + 8 hex digits."""
    return f"0x{key_id:08x}"


def parse_key_id(text: str) -> int | None:
    """``0x1234abcd`` (as printed) or decimal digits -> key id; None for anything else."""
    t = text.strip().lower()
    try:
        n = int(t, 16) if t.startswith("0x") else int(t) if t.isdigit() else None
    except ValueError:
        return None
    return n if n is not None and 0 <= n < 2**32 else None

class CryptoError(Exception):
    """An envelope or blob was rejected. ``reason`` is a short stable label for metrics."""

    reason = "error"


class MalformedEnvelope(CryptoError):
    """Truncated, unknown version, or a nonce that breaks the documented structure."""

    reason = "malformed"


class UnknownKey(CryptoError):
    """The key id names no key this node knows (or one that belongs to another device)."""

    reason = "unknown_key"


class RevokedKey(CryptoError):
    """The key id names a revoked key."""

    reason = "revoked_key"


class AuthenticationFailed(CryptoError):
    """The tag did not verify: wrong key, tampered bytes, or another topic / client id."""

    reason = "auth_failed"


class ReplayDetected(CryptoError):
    """The counter was seen before, or is older than the replay window."""

    reason = "replay"


class KeyringError(Exception):
    """The master key or the key table is unusable; the message says how to fix it."""


# ---------------------------------------------------------------------------------------
# SM4 primitives (OpenSSL)


def sm4_gcm_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM encrypt; returns ciphertext || 16-byte tag."""
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    if aad:
        enc.authenticate_additional_data(aad)
    ct = enc.update(plaintext) + enc.finalize()
    return ct + enc.tag


def sm4_gcm_open(key: bytes, nonce: bytes, data: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM decrypt ciphertext || tag; raises AuthenticationFailed on any mismatch."""
    if len(data) < TAG_SIZE:
        raise MalformedEnvelope("shorter than the 16-byte tag")
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, data[-TAG_SIZE:])).decryptor()
    if aad:
        dec.authenticate_additional_data(aad)
    body = dec.update(data[:-TAG_SIZE])
    try:
        return body + dec.finalize()
    except InvalidTag:
        raise AuthenticationFailed("tag mismatch (wrong key, tampered data, or other topic/client)") from None


def sm4_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    """Raw SM4-ECB over whole blocks (test vectors and cross-checks only)."""
    enc = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def sm4_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.SM4(key), modes.ECB()).decryptor()
    return dec.update(data) + dec.finalize()


def sm4_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-CBC with PKCS#7 padding (what gmssl's crypt_cbc produces)."""
    padder = _padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    enc = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
    return enc.update(padded) + enc.finalize()


def sm4_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """SM4-CBC decrypt and *verify* the PKCS#7 padding (gmssl does not)."""
    if not data or len(data) % 16:
        raise MalformedEnvelope("CBC ciphertext is not a whole number of 16-byte blocks")
    dec = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
    padded = dec.update(data) + dec.finalize()
    unpadder = _padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise AuthenticationFailed("bad PKCS#7 padding (wrong key or corrupted data)") from None


# ---------------------------------------------------------------------------------------
# envelope layout


@dataclass(frozen=True, slots=True)
class Envelope:
    version: int
    key_id: int
    nonce: bytes
    sealed: bytes  # ciphertext || tag

    @property
    def direction(self) -> int:
        return self.nonce[0]

    @property
    def counter(self) -> int:
        return int.from_bytes(self.nonce[4:], "big")

    @property
    def header(self) -> bytes:
        return HEADER.pack(self.version, self.key_id, self.nonce)


def counter_nonce(direction: int, counter: int) -> bytes:
    if not (1 <= counter <= MAX_COUNTER):
        raise ValueError("counter out of range 1..2**63-1")
    return bytes((direction, 0, 0, 0)) + counter.to_bytes(8, "big")


def parse_envelope(data: bytes) -> Envelope:
    """Split an envelope into its fields; MalformedEnvelope when it cannot be one."""
    if len(data) < OVERHEAD:
        raise MalformedEnvelope(f"{len(data)} bytes; an envelope has at least {OVERHEAD}")
    version, key_id, nonce = HEADER.unpack_from(data)
    if version != ENVELOPE_VERSION:
        raise MalformedEnvelope(f"unknown envelope version {version}")
    return Envelope(version, key_id, nonce, bytes(data[HEADER_SIZE:]))


def device_aad(header: bytes, client_id: str, topic: str) -> bytes:
    c = client_id.encode()
    t = topic.encode()
    return header + len(c).to_bytes(2, "big") + c + len(t).to_bytes(2, "big") + t


def seal_envelope(key: bytes, key_id: int, direction: int, counter: int, client_id: str, topic: str,
                  payload: bytes) -> bytes:
    """Build one device envelope (what a device, or kefu on egress, sends)."""
    nonce = counter_nonce(direction, counter)
    header = HEADER.pack(ENVELOPE_VERSION, key_id, nonce)
    return header + sm4_gcm_seal(key, nonce, payload, device_aad(header, client_id, topic))


def open_envelope(key: bytes, env: Envelope, client_id: str, topic: str) -> bytes:
    return sm4_gcm_open(key, env.nonce, env.sealed, device_aad(env.header, client_id, topic))


# ---------------------------------------------------------------------------------------
# replay window and rejection accounting


class ReplayWindow:
    """Sliding anti-replay window over a 64-bit counter (RFC 4303 style).

    Accepts any counter above the highest seen, and counters up to 63 below it that were
    not seen yet (MQTT redelivery may reorder a little). ``restored(high)`` builds the
    conservative window used after a restart: everything at or below ``high`` counts as
    seen, because which of those arrived is no longer known.
    """

    __slots__ = ("high", "bits")

    def __init__(self) -> None:
        self.high = 0
        self.bits = 0  # bit i set: counter (high - i) seen

    @classmethod
    def restored(cls, high: int) -> "ReplayWindow":
        w = cls()
        w.high = high
        w.bits = (1 << REPLAY_WINDOW) - 1 if high else 0
        return w

    def check(self, counter: int) -> None:
        if counter <= 0:
            raise ReplayDetected("counter 0 is never valid")
        if counter > self.high:
            return
        age = self.high - counter
        if age >= REPLAY_WINDOW:
            raise ReplayDetected(f"counter {counter} is older than the window (highest {self.high})")
        if self.bits >> age & 1:
            raise ReplayDetected(f"counter {counter} was already accepted")

    def accept(self, counter: int) -> None:
        if counter > self.high:
            shift = counter - self.high
            self.bits = ((self.bits << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.high = counter
        else:
            self.bits |= 1 << (self.high - counter)

    def forget(self, counter: int) -> None:
        """Un-accept ``counter`` (its message could not be stored, so the device's resend of
        the same envelope must be accepted). Only possible inside the window."""
        age = self.high - counter
        if 0 <= age < REPLAY_WINDOW:
            self.bits &= ~(1 << age)


class RejectCounter:
    """Counts rejected envelopes per reason; logs at most once per device per interval."""

    def __init__(self, logger: logging.Logger = log, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.totals: Counter[str] = Counter()
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def reject(self, device: str, error: CryptoError) -> None:
        self.totals[error.reason] += 1
        now = self.clock()
        last = self._last.get(device)
        if last is not None and now - last < self.interval:
            self._suppressed[device] += 1
            return
        more = self._suppressed.pop(device, 0)
        self._last[device] = now
        tail = f" (+{more} more rejected since the last report)" if more else ""
        self.logger.warning("rejected SM4 envelope from %r: %s: %s%s", device, error.reason, error, tail)


# ---------------------------------------------------------------------------------------
# master key


class MasterKey:
    """The key that wraps every data and device key. Its repr shows only a fingerprint."""

    __slots__ = ("_key", "fingerprint", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) != KEY_SIZE:
            raise KeyringError(f"master key from {source} must be {KEY_SIZE} bytes (32 hex digits), got {len(key)}")
        self._key = bytes(key)
        self.fingerprint = hashlib.new("sm3", b"kefu-master-key\x00" + key).hexdigest()[:16]
        self.source = source

    def __repr__(self) -> str:
        return f"MasterKey(fingerprint={self.fingerprint}, source={self.source})"

    __str__ = __repr__

    def wrap(self, key: bytes, aad: bytes) -> bytes:
        nonce = bytes((DIR_AT_REST,)) + os.urandom(NONCE_SIZE - 1)
        return nonce + sm4_gcm_seal(self._key, nonce, key, aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        return sm4_gcm_open(self._key, wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], aad)


def _decode_key_text(text: str, source: str) -> bytes:
    text = text.strip()
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise KeyringError(f"master key in {source} is not hex (expected 32 hex digits)") from None


def load_master_key(file: str = "", env: str = "KEFU_MASTER_KEY") -> MasterKey:
    """The master key from the environment variable ``env`` if set, else from ``file``.

    The file holds 32 hex digits (as written by `kefu keys new-master`) or 16 raw bytes.
    """
    if env and os.environ.get(env):
        return MasterKey(_decode_key_text(os.environ[env], f"${env}"), f"${env}")
    if not file:
        raise KeyringError(
            f"no master key: set the environment variable {env or '(storage.master_key_env)'} "
            "or storage.master_key_file (create one with `kefu keys new-master FILE`)"
        )
    p = Path(file)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise KeyringError(f"master key file {file} does not exist (create it with `kefu keys new-master {file}`)") from None
    except OSError as e:
        raise KeyringError(f"cannot read master key file {file}: {e.strerror}") from None
    mode = p.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("master key file %s is readable by group/others (mode %o); chmod 600 it", file, mode & 0o777)
    if len(raw) == KEY_SIZE:
        return MasterKey(raw, file)
    return MasterKey(_decode_key_text(raw.decode("ascii", "replace"), file), file)


def write_master_key(file: str) -> MasterKey:
    """Create a new master key file (mode 0600); refuses to overwrite one."""
    key = secrets.token_bytes(KEY_SIZE)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return MasterKey(key, file)


# ---------------------------------------------------------------------------------------
# keyring


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One wrapped key as stored (table ``keys``)."""

    key_id: int
    purpose: str  # "data" | "device"
    device_id: str | None
    wrapped: bytes
    master_fp: str
    state: str  # "active" | "retiring" | "retired" | "revoked"
    created_at: float
    rx_high: int = 0  # device keys: highest accepted device -> kefu counter (persisted)
    tx_next: int = 1  # device keys: first kefu -> device counter not yet reserved


@dataclass(frozen=True, slots=True)
class Opened:
    payload: bytes
    key_id: int
    counter: int


def _wrap_aad(key_id: int, purpose: str, device_id: str | None) -> bytes:
    return b"kefu-key\x00" + struct.pack(">I", key_id) + purpose.encode() + b"\x00" + (device_id or "").encode()


class _DeviceState:
    __slots__ = ("key", "window", "tx", "tx_limit")

    def __init__(self, key: bytes, rx_high: int, tx_next: int) -> None:
        self.key = key
        self.window = ReplayWindow.restored(rx_high)
        self.tx = tx_next  # next egress counter to use
        self.tx_limit = tx_next  # counters below this are reserved (persisted)


class Keyring:
    """Unwrapped keys in memory, plus per-device replay windows and egress counters.

    Pure and synchronous: persistence is the caller's (``storage.keys``): records come in
    through ``load``, new ones go out as ``KeyRecord`` values to save.
    """

    def __init__(self, master: MasterKey, *, rejects: RejectCounter | None = None) -> None:
        self.master = master
        self.rejects = rejects or RejectCounter()
        self.records: dict[int, KeyRecord] = {}
        self._data: dict[int, bytes] = {}
        self._devices: dict[int, _DeviceState] = {}
        self._device_keys: dict[str, int] = {}  # device id -> active key id
        self.active_data_key: int | None = None

    # -- records in and out

    def load(self, records: Iterable[KeyRecord]) -> None:
        """Take (or refresh from) the stored key table; keeps live replay/counter state."""
        for rec in records:
            if rec.master_fp != self.master.fingerprint:
                raise KeyringError(
                    f"key {key_id_text(rec.key_id)} was wrapped by master key {rec.master_fp}, but the configured master key "
                    f"is {self.master.fingerprint} ({self.master.source}): wrong master key"
                )
            old = self.records.get(rec.key_id)
            self.records[rec.key_id] = rec
            if rec.state == "revoked":
                self._data.pop(rec.key_id, None)
                self._devices.pop(rec.key_id, None)
                if self._device_keys.get(rec.device_id or "") == rec.key_id:
                    del self._device_keys[rec.device_id or ""]
                continue
            if old is not None and (rec.key_id in self._data or rec.key_id in self._devices):
                continue
            try:
                key = self.master.unwrap(rec.wrapped, _wrap_aad(rec.key_id, rec.purpose, rec.device_id))
            except CryptoError:
                raise KeyringError(f"key {key_id_text(rec.key_id)} does not unwrap with the master key: the key table is damaged") from None
            if rec.purpose == "data":
                self._data[rec.key_id] = key
            else:
                self._devices[rec.key_id] = _DeviceState(key, rec.rx_high, rec.tx_next)
        self._reindex()

    def _reindex(self) -> None:
        active = [r for r in self.records.values() if r.purpose == "data" and r.state == "active"]
        self.active_data_key = max(active, key=lambda r: (r.created_at, r.key_id)).key_id if active else None
        self._device_keys = {}
        for r in sorted(self.records.values(), key=lambda r: r.created_at):
            if r.purpose == "device" and r.state == "active" and r.device_id:
                self._device_keys[r.device_id] = r.key_id

    def _new_id(self) -> int:
        while True:
            kid = secrets.randbelow(2**31 - 2) + 1
            if kid not in self.records:
                return kid

    def new_key(self, purpose: str, device_id: str | None = None, *, now: float | None = None) -> tuple[KeyRecord, bytes]:
        """A fresh random key, wrapped; returns (record to save, raw key). Loaded here too."""
        if purpose not in ("data", "device"):
            raise ValueError("purpose must be 'data' or 'device'")
        if purpose == "device" and not device_id:
            raise ValueError("a device key needs the device (MQTT client) id")
        key = secrets.token_bytes(KEY_SIZE)
        kid = self._new_id()
        rec = KeyRecord(
            key_id=kid, purpose=purpose, device_id=device_id,
            wrapped=self.master.wrap(key, _wrap_aad(kid, purpose, device_id)),
            master_fp=self.master.fingerprint, state="active",
            created_at=time.time() if now is None else now,
        )
        self.load([rec])
        return rec, key

    def with_state(self, key_id: int, state: str) -> KeyRecord:
        rec = self.records.get(key_id)
        if rec is None:
            raise UnknownKey(f"no key {key_id_text(key_id)}")
        rec = replace(rec, state=state)
        self.load([rec])
        return rec

    def device_key_id(self, device_id: str) -> int | None:
        return self._device_keys.get(device_id)

    # -- at rest

    def encrypt_field(self, plaintext: bytes, context: bytes) -> bytes:
        kid = self.active_data_key
        if kid is None:
            raise KeyringError("no active data key: run `kefu keys rotate` once to create one")
        nonce = bytes((DIR_AT_REST,)) + os.urandom(NONCE_SIZE - 1)
        header = HEADER.pack(ENVELOPE_VERSION, kid, nonce)
        return header + sm4_gcm_seal(self._data[kid], nonce, plaintext, header + context)

    def decrypt_field(self, blob: bytes, context: bytes) -> bytes:
        env = parse_envelope(blob)
        key = self._data.get(env.key_id)
        if key is None:
            rec = self.records.get(env.key_id)
            if rec is not None and rec.state == "revoked":
                raise RevokedKey(f"data key {key_id_text(env.key_id)} is revoked")
            raise UnknownKey(f"data key {key_id_text(env.key_id)} is not in the keyring")
        return sm4_gcm_open(key, env.nonce, env.sealed, env.header + context)

    @staticmethod
    def key_id_of(blob: bytes) -> int:
        return HEADER.unpack_from(blob)[1]

    # -- devices

    def open_from_device(self, client_id: str, topic: str, data: bytes) -> Opened:
        """Check and decrypt one envelope a device sent on ``topic``.

        Raises a CryptoError subclass (already counted and rate-limit logged) on any
        problem. On success the counter is marked seen; persist ``Opened.counter`` as
        the key's ``rx_high`` with the message (``persist_publish(replay=...)``).
        """
        try:
            env = parse_envelope(data)
            if env.nonce[0] != DIR_TO_KEFU or env.nonce[1:4] != b"\0\0\0":
                raise MalformedEnvelope("nonce is not device->kefu (first byte 0x01, then three zero bytes)")
            st = self._devices.get(env.key_id)
            rec = self.records.get(env.key_id)
            if st is None or rec is None:
                if rec is not None and rec.state == "revoked":
                    raise RevokedKey(f"key {key_id_text(env.key_id)} is revoked")
                raise UnknownKey(f"no device key {key_id_text(env.key_id)}")
            if rec.device_id != client_id:
                raise UnknownKey(f"key {key_id_text(env.key_id)} does not belong to client {client_id!r}")
            counter = env.counter
            if counter > MAX_COUNTER:
                raise MalformedEnvelope("counter above 2**63-1")
            st.window.check(counter)
            payload = open_envelope(st.key, env, client_id, topic)
            st.window.accept(counter)
            return Opened(payload, env.key_id, counter)
        except CryptoError as e:
            self.rejects.reject(client_id, e)
            raise

    def next_tx(self, client_id: str) -> tuple[int, int | None]:
        """(key id, counter) for one egress envelope, or (key id, None) when the caller
        must first persist a new reservation (``tx_reservation`` then ``reserved``)."""
        kid = self._device_keys.get(client_id)
        if kid is None:
            raise UnknownKey(f"no active key for device {client_id!r}")
        st = self._devices[kid]
        if st.tx >= st.tx_limit:
            return kid, None
        counter = st.tx
        st.tx = counter + 1
        return kid, counter

    def tx_left(self, key_id: int) -> int:
        """Egress counters of this device key still reserved (usable without a write)."""
        st = self._devices.get(key_id)
        return st.tx_limit - st.tx if st else 0

    def tx_reservation(self, key_id: int) -> int:
        """The ``tx_next`` value to persist before counters up to it may be used."""
        return self._devices[key_id].tx + TX_RESERVE

    def reserved(self, key_id: int, tx_next: int) -> None:
        st = self._devices[key_id]
        st.tx_limit = max(st.tx_limit, tx_next)

    def seal_for_device(self, client_id: str, topic: str, payload: bytes, kid: int, counter: int) -> bytes:
        return seal_envelope(self._devices[kid].key, kid, DIR_TO_DEVICE, counter, client_id, topic, payload)

    def forget_rx(self, key_id: int, counter: int) -> None:
        """The message carrying this device counter was not stored: accept its resend."""
        st = self._devices.get(key_id)
        if st is not None:
            st.window.forget(counter)

    def rx_high(self, key_id: int) -> int:
        st = self._devices.get(key_id)
        return st.window.high if st else 0
