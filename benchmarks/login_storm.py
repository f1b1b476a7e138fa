"""Bad-login storm against a `kefu serve` child: server RSS and a bystander's MQTT round trip.

Issue 12 item 5: 100 parallel bad logins for 60 s took RSS from 440 MB to 1.2 GB and a normal
client's round trip from 5 ms to 204 ms (p99). This runs the storm twice in one session, side
by side, so the ratio means something on a busy machine:

* ``unbounded``: ``auth.max_concurrent_hashes`` = 1000 and back-off off (how kefu was);
* ``bounded, no back-off``: 4 checks at once (the default), back-off off (many sources);
* ``defaults``: the shipped defaults (4 checks at once, back-off after 5 failures; the
  storm comes from one address, so it is mostly refused with 0x9F / 3.1.1 code 3).

    python benchmarks/login_storm.py --clients 100 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _connect_packet(cid: str, user: str, pw: str) -> bytes:
    def s16(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    body = s16(b"MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 30) + s16(cid.encode()) + s16(user.encode()) + \
        s16(pw.encode())
    return bytes([0x10, len(body)]) + body


def storm(port: int, stop: threading.Event, counts: dict) -> None:
    k = 0
    while not stop.is_set():
        k += 1
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(_connect_packet(f"bad-{threading.get_ident()}-{k}", "dev", f"wrong-{k}"))
                ack = s.recv(4)
                counts[ack[3] if len(ack) == 4 else -1] = counts.get(ack[3] if len(ack) == 4 else -1, 0) + 1
        except OSError:
            counts["error"] = counts.get("error", 0) + 1


def run(variant: str, auth: str, clients: int, seconds: float) -> dict:
    from kefu.broker.auth import hash_password

    tmp = tempfile.mkdtemp(prefix="kefu-storm-")
    mport, hport = _port(), _port()
    cfg = f"""
[listeners.mqtt]
host = "127.0.0.1"
port = {mport}
[listeners.ws]
enabled = false
[listeners.http]
enabled = false
[desk]
enabled = false
[nlp]
enabled = false
[storage]
path = "{tmp}/kefu.db"
[mqtt]
sys_interval = 0
[log]
level = "error"
[auth]
{auth}
[[auth.users]]
username = "dev"
password_hash = "{hash_password('right')}"
[[auth.users]]
username = "probe"
password_hash = "{hash_password('probe-pw')}"
"""
    path = os.path.join(tmp, "kefu.toml")
    open(path, "w").write(cfg)
    proc = subprocess.Popen([sys.executable, "-m", "kefu.cli", "serve", "--config", path], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", mport), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("kefu did not start")
                time.sleep(0.1)
        import paho.mqtt.client as mqtt

        got: queue.Queue = queue.Queue()
        subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe", protocol=mqtt.MQTTv5)
        c.username_pw_set("probe", "probe-pw")
        c.on_message = lambda cl, u, m: got.put(m.payload)
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", mport)
        c.loop_start()
        c.subscribe("probe/echo", qos=1)
        assert subscribed.wait(10)
        rss0 = _rss_mib(proc.pid)
        stop = threading.Event()
        counts: dict = {}
        threads = [threading.Thread(target=storm, args=(mport, stop, counts), daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        rtts, peak = [], rss0
        end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < end:
            k += 1
            t0 = time.perf_counter()
            c.publish("probe/echo", str(k).encode(), qos=1)
            try:
                while got.get(timeout=10) != str(k).encode():
                    pass
                rtts.append(time.perf_counter() - t0)
            except queue.Empty:
                rtts.append(10.0)
            peak = max(peak, _rss_mib(proc.pid))
            time.sleep(0.02)  # pacing of the probe, not synchronisation
        stop.set()
        for t in threads:
            t.join(30)
        c.disconnect()
        c.loop_stop()
        rtts.sort()
        return {"variant": variant, "rss_mib_before": round(rss0, 1), "rss_mib_peak": round(peak, 1),
                "probe_rtt_ms_p50": round(statistics.median(rtts) * 1000, 2),
                "probe_rtt_ms_p99": round(rtts[int(0.99 * (len(rtts) - 1))] * 1000, 2), "probes": len(rtts),
                "connack_codes": {str(k): v for k, v in sorted(counts.items(), key=str)}}
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20)
    a = ap.parse_args()
    out = [run("unbounded", "max_concurrent_hashes = 1000\nlogin_free_failures = 1000000", a.clients, a.seconds),
           run("bounded, no back-off", "login_free_failures = 1000000", a.clients, a.seconds),
           run("defaults", "", a.clients, a.seconds)]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
