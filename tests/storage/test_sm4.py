"""SM4 through OpenSSL, checked against the standard's vectors and against gmssl (pure Python,
an independent implementation); the device envelope and its rejections; the keyring."""

from __future__ import annotations

import logging
import os

import pytest
from gmssl.sm4 import SM4_DECRYPT, SM4_ENCRYPT, CryptSM4

from kefu.storage import crypto
from kefu.storage.crypto import (
    AuthenticationFailed, Keyring, KeyringError, MalformedEnvelope, MasterKey, RejectCounter, ReplayDetected,
    ReplayWindow, RevokedKey, UnknownKey,
)

GB_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
GB_CIPHER = bytes.fromhex("681edf34d206965e86b3e94f536e4246")


def gm_ecb(key: bytes, data: bytes, mode: int) -> bytes:
    c = CryptSM4(padding_mode=3)  # any value other than PKCS7/ZERO: raw blocks, no padding
    c.set_key(key, mode)
    return c.crypt_ecb(data)


def gm_cbc(key: bytes, iv: bytes, data: bytes, mode: int) -> bytes:
    c = CryptSM4()
    c.set_key(key, mode)
    return c.crypt_cbc(iv, data)


# ----------------------------------------------------------------------------- the standard


def test_gbt32907_vector_both_implementations():
    assert crypto.sm4_ecb_encrypt(GB_KEY, GB_KEY) == GB_CIPHER
    assert gm_ecb(GB_KEY, GB_KEY, SM4_ENCRYPT) == GB_CIPHER
    assert crypto.sm4_ecb_decrypt(GB_KEY, GB_CIPHER) == GB_KEY
    assert gm_ecb(GB_KEY, GB_CIPHER, SM4_DECRYPT) == GB_KEY


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 1024])
def test_cbc_cross_check_with_gmssl(size):
    key, iv, data = os.urandom(16), os.urandom(16), os.urandom(size)
    ours = crypto.sm4_cbc_encrypt(key, iv, data)
    assert ours == gm_cbc(key, iv, data, SM4_ENCRYPT)  # byte for byte, PKCS#7 included
    assert gm_cbc(key, iv, ours, SM4_DECRYPT) == data  # encrypt with one, decrypt with the other
    assert crypto.sm4_cbc_decrypt(key, iv, gm_cbc(key, iv, data, SM4_ENCRYPT)) == data


def test_cbc_padding_is_verified_unlike_gmssl():
    key, iv = os.urandom(16), os.urandom(16)
    ct = crypto.sm4_cbc_encrypt(key, iv, b"hello")
    with pytest.raises(AuthenticationFailed):
        crypto.sm4_cbc_decrypt(os.urandom(16), iv, ct)  # wrong key: the padding is garbage
    with pytest.raises(MalformedEnvelope):
        crypto.sm4_cbc_decrypt(key, iv, ct[:-1])


def test_gcm_rfc8998_vector():
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    iv = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    pt = bytes.fromhex("AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
                       "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA")
    sealed = crypto.sm4_gcm_seal(key, iv, pt, aad)
    assert sealed.hex().upper() == (
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
        "83DE3541E4C2B58177E065A9BF7B62EC")
    assert crypto.sm4_gcm_open(key, iv, sealed, aad) == pt


def _gf_mul(x: int, y: int) -> int:
    r, v = 0, x
    for i in range(127, -1, -1):
        if y >> i & 1:
            r ^= v
        v = (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1
    return r


def gmssl_gcm(key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
    """SM4-GCM from gmssl's block function plus textbook CTR and GHASH (NIST SP 800-38D)."""
    block = lambda b: gm_ecb(key, b, SM4_ENCRYPT)  # noqa: E731
    h = int.from_bytes(block(bytes(16)), "big")
    j0 = nonce + b"\0\0\0\1"
    ct = bytearray()
    for i in range(0, len(pt), 16):
        ctr = nonce + (2 + i // 16).to_bytes(4, "big")
        ks = block(ctr)
        ct += bytes(a ^ b for a, b in zip(pt[i:i + 16], ks))

    def blocks(b: bytes):
        b = b + bytes(-len(b) % 16)
        return [int.from_bytes(b[i:i + 16], "big") for i in range(0, len(b), 16)]

    y = 0
    for x in blocks(aad) + blocks(bytes(ct)) + [(len(aad) * 8) << 64 | len(ct) * 8]:
        y = _gf_mul(y ^ x, h)
    tag = (y ^ int.from_bytes(block(j0), "big")).to_bytes(16, "big")
    return bytes(ct) + tag


@pytest.mark.parametrize("size", [0, 5, 16, 33, 200])
def test_gcm_envelope_cross_check_with_gmssl(size):
    """The envelope's SM4-GCM equals one built from gmssl's SM4: encrypt with one, open with the other."""
    key, payload = os.urandom(16), os.urandom(size)
    env = crypto.seal_envelope(key, 7, crypto.DIR_TO_KEFU, 42, "dev-1", "d/dev-1/up", payload)
    parsed = crypto.parse_envelope(env)
    aad = crypto.device_aad(parsed.header, "dev-1", "d/dev-1/up")
    assert gmssl_gcm(key, parsed.nonce, payload, aad) == parsed.sealed
    theirs = gmssl_gcm(key, parsed.nonce, payload, aad)
    assert crypto.sm4_gcm_open(key, parsed.nonce, theirs, aad) == payload


# ----------------------------------------------------------------------------- envelope


@pytest.fixture
def ring():
    kr = Keyring(MasterKey(os.urandom(16), "test"), rejects=RejectCounter(clock=lambda: 0.0))
    rec, key = kr.new_key("device", "dev-1")
    return kr, rec.key_id, key


def device_send(key, kid, counter, payload=b"temp=21", topic="d/dev-1/up", client="dev-1"):
    return crypto.seal_envelope(key, kid, crypto.DIR_TO_KEFU, counter, client, topic, payload)


def test_envelope_layout(ring):
    kr, kid, key = ring
    env = device_send(key, kid, 1, b"hello")
    assert env[0] == 1  # version
    assert int.from_bytes(env[1:5], "big") == kid
    assert env[5:17] == b"\x01\0\0\0" + (1).to_bytes(8, "big")  # direction, zero, counter
    assert len(env) == 17 + 5 + 16


def test_open_round_trip_and_egress(ring):
    kr, kid, key = ring
    out = kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 1))
    assert (out.payload, out.key_id, out.counter) == (b"temp=21", kid, 1)
    k, counter = kr.next_tx("dev-1")
    assert counter is None  # nothing reserved yet: the caller must persist a reservation first
    kr.reserved(kid, kr.tx_reservation(kid))
    k, counter = kr.next_tx("dev-1")
    env = kr.seal_for_device("dev-1", "d/dev-1/down", b"set=22", k, counter)
    parsed = crypto.parse_envelope(env)
    assert parsed.direction == crypto.DIR_TO_DEVICE and parsed.counter == 1
    assert crypto.open_envelope(key, parsed, "dev-1", "d/dev-1/down") == b"set=22"


@pytest.mark.parametrize("case", ["wrong_key", "truncated", "tampered_tag", "tampered_body", "other_topic",
                                  "other_client", "bad_version", "bad_direction", "unknown_key"])
def test_bad_input_is_rejected_with_a_specific_error(ring, case):
    kr, kid, key = ring
    env = bytearray(device_send(key, kid, 5))
    topic, client = "d/dev-1/up", "dev-1"
    expect = AuthenticationFailed
    if case == "wrong_key":
        env = bytearray(device_send(os.urandom(16), kid, 5))
    elif case == "truncated":
        env, expect = env[:20], MalformedEnvelope
    elif case == "tampered_tag":
        env[-1] ^= 1
    elif case == "tampered_body":
        env[18] ^= 0x80
    elif case == "other_topic":
        topic = "d/dev-2/up"
    elif case == "other_client":
        client, expect = "dev-2", UnknownKey  # the key belongs to dev-1
    elif case == "bad_version":
        env[0], expect = 9, MalformedEnvelope
    elif case == "bad_direction":
        env = bytearray(crypto.seal_envelope(key, kid, crypto.DIR_TO_DEVICE, 5, client, topic, b"x"))
        expect = MalformedEnvelope
    elif case == "unknown_key":
        env[1:5], expect = (kid + 1).to_bytes(4, "big"), UnknownKey
    with pytest.raises(expect):
        kr.open_from_device(client, topic, bytes(env))
    assert kr.rejects.totals[expect.reason] == 1
    # the genuine envelope still opens: a rejection never burns the counter
    assert kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 5)).payload == b"temp=21"


def test_replay_rejected_reorder_within_window_accepted(ring):
    kr, kid, key = ring
    kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 10))
    with pytest.raises(ReplayDetected):
        kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 10))
    kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 8))  # late but unseen
    with pytest.raises(ReplayDetected):
        kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 8))
    kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 200))
    with pytest.raises(ReplayDetected):  # older than the 64-counter window
        kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 100))
    assert kr.rejects.totals["replay"] == 3


def test_replay_window_restored_after_restart_rejects_everything_seen():
    w = ReplayWindow.restored(500)
    for c in (1, 450, 499, 500):
        with pytest.raises(ReplayDetected):
            w.check(c)
    w.check(501)


def test_revoked_key(ring):
    kr, kid, key = ring
    kr.with_state(kid, "revoked")
    with pytest.raises(RevokedKey):
        kr.open_from_device("dev-1", "d/dev-1/up", device_send(key, kid, 1))


def test_rejections_logged_once_per_device_per_minute(ring, caplog):
    kr, kid, key = ring
    now = [1000.0]
    kr.rejects.clock = lambda: now[0]
    bad = device_send(os.urandom(16), kid, 1)
    with caplog.at_level(logging.WARNING, logger="kefu.storage.crypto"):
        for _ in range(50):
            with pytest.raises(AuthenticationFailed):
                kr.open_from_device("dev-1", "d/dev-1/up", bad)
        with pytest.raises(UnknownKey):
            kr.open_from_device("dev-9", "d/dev-9/up", bad)  # another device: its own line
        now[0] += 61
        with pytest.raises(AuthenticationFailed):
            kr.open_from_device("dev-1", "d/dev-1/up", bad)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "dev-1" in lines[0] and "auth_failed" in lines[0]
    assert "dev-9" in lines[1]
    assert "+49 more" in lines[2]
    assert kr.rejects.totals["auth_failed"] == 51


# ----------------------------------------------------------------------------- keys at rest


def test_field_encryption_binds_context_and_key_id():
    kr = Keyring(MasterKey(os.urandom(16), "test"))
    rec, _ = kr.new_key("data")
    blob = kr.encrypt_field("张三 13800138000".encode(), b"contacts.pii")
    assert "13800138000".encode() not in blob
    assert Keyring.key_id_of(blob) == rec.key_id
    assert kr.decrypt_field(blob, b"contacts.pii").decode() == "张三 13800138000"
    with pytest.raises(AuthenticationFailed):
        kr.decrypt_field(blob, b"chat_messages.body")


def test_master_key_from_env_or_file_never_shown(tmp_path, monkeypatch):
    key = os.urandom(16)
    monkeypatch.setenv("KEFU_TEST_MK", key.hex())
    mk = crypto.load_master_key("", "KEFU_TEST_MK")
    assert key.hex() not in repr(mk) and key.hex() not in str(mk)
    monkeypatch.delenv("KEFU_TEST_MK")
    f = tmp_path / "mk"
    written = crypto.write_master_key(str(f))
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert crypto.load_master_key(str(f), "KEFU_TEST_MK").fingerprint == written.fingerprint
    with pytest.raises(FileExistsError):
        crypto.write_master_key(str(f))
    with pytest.raises(KeyringError, match="new-master"):
        crypto.load_master_key("", "KEFU_TEST_MK")
    with pytest.raises(KeyringError, match="does not exist"):
        crypto.load_master_key(str(tmp_path / "missing"), "KEFU_TEST_MK")
    (tmp_path / "bad").write_text("not hex at all")
    with pytest.raises(KeyringError, match="not hex"):
        crypto.load_master_key(str(tmp_path / "bad"), "KEFU_TEST_MK")


def test_wrong_master_key_is_named_not_garbage():
    kr = Keyring(MasterKey(os.urandom(16), "a"))
    rec, _ = kr.new_key("data")
    other = Keyring(MasterKey(os.urandom(16), "b"))
    with pytest.raises(KeyringError, match="wrong master key"):
        other.load([rec])


def test_documented_example_envelope():
    """docs/sm4-envelope.md's example is what the implementation produces and opens."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sm4-envelope.md").read_text(encoding="utf-8")
    example = bytes.fromhex(re.search(r"envelope \(38 bytes\):\n([0-9a-f]+)", doc).group(1))
    topic = "kefu/c/dev-1/main/in"  # the desk's topic for a device's message (kefu.topics)
    assert f"topic `{topic}`" in doc
    env = crypto.seal_envelope(GB_KEY, 0x12345678, crypto.DIR_TO_KEFU, 1, "dev-1", topic, b"hello")
    assert env == example
    parsed = crypto.parse_envelope(example)
    assert crypto.open_envelope(GB_KEY, parsed, "dev-1", topic) == b"hello"
    aad = re.search(r"^AAD +([0-9a-f ]+)$", doc, re.M).group(1).replace(" ", "")
    assert bytes.fromhex(aad) == crypto.device_aad(parsed.header, "dev-1", topic)
    from kefu.topics import Topics
    assert Topics().parse(topic).kind == "customer_in"
