"""Attach mode against the embedded broker, side by side in one run (issue 16).

    .venv/bin/python benchmarks/attach_bench.py [--devices 100] [--messages 20] [--rounds 2]

For each mode, ``kefu serve`` runs as a child process (SQLite transcripts, intent model
off) and ``--devices`` paho devices each send ``--messages`` customer messages at QoS 1,
as fast as their in-flight window allows:

* embedded: the devices connect to kefu itself;
* attach:   the devices connect to a Mosquitto started here; kefu takes the messages
  through ``$share/kefu/...`` and acknowledges each to Mosquitto after the desk's commit.

Measured per mode: the time from the first send until every message is committed in
kefu's transcript (read from its SQLite file), and the CPU kefu's process (and in attach
mode Mosquitto's) used over that time, per message. The modes alternate ``--rounds``
times, so both see the same load on a shared machine: compare the ratios, not the absolute
numbers.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "attach"))
from harness import Mosquitto, kefu_config  # noqa: E402

WAIT = 120.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def start_kefu(config: Path, log: Path) -> tuple[subprocess.Popen, int | None]:
    proc = subprocess.Popen([sys.executable, "-m", "kefu.cli", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True, cwd=str(config.parent))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] and lines.put(None), daemon=True).start()
    port, http = None, False
    external = 'mode = "external"' in config.read_text()
    while not http or (port is None and not external):
        line = lines.get(timeout=WAIT)
        if line is None:
            raise SystemExit(f"kefu exited; see {log}")
        if m := re.match(r"kefu: MQTT listening on mqtt://127\.0\.0\.1:(\d+)", line):
            port = int(m.group(1))
        if line.startswith("kefu: HTTP API on"):
            http = True
    return proc, port


def committed(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as c:
        return c.execute("select count(*) from chat_messages where sender_kind = 'customer'").fetchone()[0]


def wait_ready_attached(log: Path) -> None:
    deadline = time.monotonic() + WAIT
    while "attached to external broker" not in log.read_text():
        if time.monotonic() > deadline:
            raise SystemExit(f"kefu did not attach; see {log}")
        time.sleep(0.05)


def load(port: int, devices: int, messages: int, db: Path, tag: str) -> float:
    clients = []
    for i in range(devices):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{tag}-{i}", protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(20)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    start = time.monotonic()
    infos = []
    for j in range(messages):
        for i, c in enumerate(clients):
            infos.append(c.publish(f"kefu/c/anon:{tag}-{i}/main/in", f"message {j} from device {i}", qos=1))
    for info in infos:
        info.wait_for_publish(WAIT)
    want = devices * messages
    while committed(db) < want:
        if time.monotonic() - start > WAIT:
            raise SystemExit(f"{tag}: only {committed(db)} of {want} messages committed (folder {db.parent})")
        time.sleep(0.02)
    elapsed = time.monotonic() - start
    for c in clients:
        c.disconnect()
        c.loop_stop()
    return elapsed


def run_mode(mode: str, folder: Path, mosquitto: Mosquitto, devices: int, messages: int, rnd: int) -> dict:
    name = f"{mode}-{rnd}"
    # A group of its own per round: the previous round's node keeps a persistent session in its
    # group, and Mosquitto would go on queueing half the messages for it (docs/deploy.md).
    config = kefu_config(folder / f"{name}.toml", mosquitto.port, f"kefu-{name}",
                         extra={"broker": {"share_group": f"bench{rnd}"}})
    text = config.read_text()
    if mode == "embedded":
        text = re.sub(r'\[broker\]\n(.*\n)*?(?=\[)', "", text)
    config.write_text(text)
    log = folder / f"{name}.log"
    proc, port = start_kefu(config, log)
    try:
        if mode == "attach":
            wait_ready_attached(log)
            port = mosquitto.port
        db = folder / f"kefu-{name}.db"
        k0 = cpu_seconds(proc.pid)
        m0 = cpu_seconds(mosquitto.proc.pid)
        elapsed = load(port, devices, messages, db, name)
        k1 = cpu_seconds(proc.pid)
        m1 = cpu_seconds(mosquitto.proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT)
    n = devices * messages
    return {"mode": mode, "round": rnd, "messages": n, "seconds": elapsed, "rate": n / elapsed,
            "kefu_ms": (k1 - k0) / n * 1000, "broker_ms": (m1 - m0) / n * 1000 if mode == "attach" else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keep", metavar="DIR", help="keep configs, logs and databases in DIR")
    args = ap.parse_args()
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory(prefix="kefu-attach-bench-") as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        mosquitto = Mosquitto(binary, folder).start()
        rows = []
        try:
            for rnd in range(args.rounds):
                for mode in ("embedded", "attach"):
                    rows.append(run_mode(mode, folder, mosquitto, args.devices, args.messages, rnd))
        finally:
            mosquitto.stop()
    load_avg = os.getloadavg()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average now {load_avg[0]:.1f}")
    print(f"{args.devices} devices x {args.messages} messages, QoS 1, SQLite transcripts, intent model off\n")
    print("| mode | round | messages | all committed after | messages/s | kefu CPU / message | Mosquitto CPU / message |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['round'] + 1} | {r['messages']} | {r['seconds']:.2f} s | {r['rate']:.0f} | "
              f"{r['kefu_ms']:.2f} ms | {r['broker_ms']:.2f} ms |")


if __name__ == "__main__":
    main()
