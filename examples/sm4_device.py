"""Reference device for kefu's SM4 envelope (docs/sm4-envelope.md), with paho-mqtt.

Self-contained on purpose: it imports nothing of kefu, only ``cryptography`` (OpenSSL's
SM4) and ``paho-mqtt``, so device makers can read the whole flow in one file and port it.

    # on the kefu host: create the device's key (printed once), seal the desk's topics
    kefu keys new-device dev-1          # prints: key id 0x12b2f91e, key 6a29...
    #   kefu.toml: [sm4] device_topics = ["kefu/c/#"]
    # on the device
    python examples/sm4_device.py --host kefu.example --client-id dev-1 \
        --key-id 0x12b2f91e --key 6a29c61b8bc4e88abf7fb74ffb320154 --state dev-1.state \
        --text "hello, my fan is noisy"

It talks to the desk on the desk's own conversation topics (``[desk] topic_prefix``,
"kefu" by default): messages go to ``kefu/c/{client id}/{thread}/in``, the desk's answers
come sealed on ``.../out`` (bot and agent messages) and ``.../events`` (queue position,
status), as JSON frames.

What it shows:
* every uplink payload is sealed: version 1, key id, nonce = 0x01 000000 counter,
  SM4-GCM with AAD = header + client id + topic;
* the counter never repeats, even across power loss: blocks of counters are reserved
  in a state file *before* they are used (a reboot skips ahead, it never goes back);
* downlinks from kefu (nonce direction 0x02) are opened, and ones whose counter is not
  above the last accepted one are dropped as replays.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

VERSION = 1
TO_KEFU, TO_DEVICE = 0x01, 0x02
HEADER = struct.Struct(">BI12s")  # version, key id, nonce
TAG = 16
RESERVE = 100  # counters reserved per state-file write


def aad(header: bytes, client_id: str, topic: str) -> bytes:
    c, t = client_id.encode(), topic.encode()
    return header + struct.pack(">H", len(c)) + c + struct.pack(">H", len(t)) + t


def seal(key: bytes, key_id: int, counter: int, client_id: str, topic: str, payload: bytes,
         direction: int = TO_KEFU) -> bytes:
    nonce = bytes((direction, 0, 0, 0)) + counter.to_bytes(8, "big")
    header = HEADER.pack(VERSION, key_id, nonce)
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad(header, client_id, topic))
    ct = enc.update(payload) + enc.finalize()
    return header + ct + enc.tag


def open_envelope(key: bytes, client_id: str, topic: str, data: bytes, direction: int = TO_DEVICE):
    """-> (key id, counter, payload); ValueError for anything that is not a valid envelope."""
    if len(data) < HEADER.size + TAG:
        raise ValueError("truncated envelope")
    version, key_id, nonce = HEADER.unpack_from(data)
    if version != VERSION or nonce[0] != direction or nonce[1:4] != b"\0\0\0":
        raise ValueError("not an envelope for this direction")
    header = data[:HEADER.size]
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, data[-TAG:])).decryptor()
    dec.authenticate_additional_data(aad(header, client_id, topic))
    body = dec.update(data[HEADER.size:-TAG])
    try:
        body += dec.finalize()
    except InvalidTag:
        raise ValueError("authentication failed (wrong key, tampered, or other topic)") from None
    return key_id, int.from_bytes(nonce[4:], "big"), body


class CounterState:
    """Egress counter and downlink replay mark, persisted so a reboot never reuses a nonce."""

    def __init__(self, path: str) -> None:
        self.path = path
        st = {"tx_reserved": 1, "rx_high": 0}
        if os.path.exists(path):
            with open(path) as f:
                st.update(json.load(f))
        self.next = st["tx_reserved"]  # everything below was (maybe) used before the reboot
        self.reserved = st["tx_reserved"]
        self.rx_high = st["rx_high"]
        self.lock = threading.Lock()

    def _save(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"tx_reserved": self.reserved, "rx_high": self.rx_high}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def take(self) -> int:
        with self.lock:
            if self.next >= self.reserved:
                self.reserved = self.next + RESERVE
                self._save()  # persisted before any counter of the block goes out
            c = self.next
            self.next += 1
            return c

    def accept_downlink(self, counter: int) -> bool:
        with self.lock:
            if counter <= self.rx_high:
                return False
            self.rx_high = counter
            self._save()
            return True


def desk_topics(client_id: str, thread: str = "main", prefix: str = "kefu") -> tuple[str, list[str]]:
    """(uplink topic, downlink topics) of one conversation thread on the desk (kefu/topics.py)."""
    base = f"{prefix}/c/{client_id}/{thread}"
    return f"{base}/in", [f"{base}/out", f"{base}/events"]


def run(host: str, port: int, client_id: str, key: bytes, key_id: int, state: CounterState,
        messages: list[bytes], up: str, down: str | list[str], wait_downlinks: int = 0,
        timeout: float = 10.0, username: str | None = None, password: str | None = None) -> list[bytes]:
    """Subscribe to ``down`` (a topic or several), publish ``messages`` sealed at QoS 1 on
    ``up``; return the downlinks opened (waits for ``wait_downlinks`` of them, at most
    ``timeout`` seconds). ``username``/``password``: the device's ``[[auth.users]]`` entry
    (without one the broker treats it as the anonymous customer ``anon:<client id>``)."""
    import paho.mqtt.client as mqtt

    got: list[bytes] = []
    done = threading.Event()

    def on_message(client, userdata, msg):
        try:
            _, counter, payload = open_envelope(key, client_id, msg.topic, msg.payload)
        except ValueError as e:
            print(f"dropped downlink on {msg.topic}: {e}", file=sys.stderr)
            return
        if not state.accept_downlink(counter):
            print(f"dropped replayed downlink (counter {counter})", file=sys.stderr)
            return
        got.append(payload)
        if len(got) >= wait_downlinks:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                    clean_session=False)
    c.on_message = on_message
    if password is not None:
        c.username_pw_set(username or client_id, password)
    c.connect(host, port)
    c.loop_start()
    try:
        for topic in [down] if isinstance(down, str) else down:
            c.subscribe(topic, qos=1)
        for payload in messages:
            c.publish(up, seal(key, key_id, state.take(), client_id, up, payload), qos=1).wait_for_publish(timeout)
        if wait_downlinks:
            done.wait(timeout)
    finally:
        c.loop_stop()
        c.disconnect()
    return got


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--key", required=True, help="32 hex digits from `kefu keys new-device`")
    ap.add_argument("--key-id", type=lambda x: int(x, 0), required=True,
                    help="as `kefu keys new-device` prints it (0x12345678; decimal works too)")
    ap.add_argument("--state", required=True, help="file keeping the counters across reboots")
    ap.add_argument("--thread", default="main", help="the device's conversation thread")
    ap.add_argument("--prefix", default="kefu", help="the desk's [desk] topic_prefix")
    ap.add_argument("--text", action="append", help="a message to send (repeat for more)")
    ap.add_argument("--wait", type=int, default=1, help="downlinks to wait for (at most 10 s)")
    ap.add_argument("--username", help="the device's [[auth.users]] name (default: its client id)")
    ap.add_argument("--password-env", default="KEFU_DEVICE_PASSWORD",
                    help="environment variable holding the device's password (default: KEFU_DEVICE_PASSWORD)")
    args = ap.parse_args()
    state = CounterState(args.state)
    up, downs = desk_topics(args.client_id, args.thread, args.prefix)
    texts = args.text or ["hello"]
    msgs = [json.dumps({"type": "message", "text": t}, ensure_ascii=False).encode() for t in texts]
    for payload in run(args.host, args.port, args.client_id, bytes.fromhex(args.key), args.key_id, state,
                       msgs, up, downs, wait_downlinks=args.wait,
                       username=args.username, password=os.environ.get(args.password_env)):
        print("downlink:", payload.decode(errors="replace"))
    print(f"sent {len(msgs)} sealed messages to {up}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
