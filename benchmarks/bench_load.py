"""The load generator of ``broker_bench.py``: raw sockets, pre-encoded packets, processes.

Everything here talks plain MQTT over TCP to any broker; the packets are encoded
once with kefu's codec (cross-checked against paho in tests/broker) and then only
sliced and joined, so the generator spends its time in ``send``/``recv``.

Why it stays out of the way of the broker it measures:

* every role (publishers, receivers, idle holders, connectors) is its own process
  (``fork``), so no GIL is shared and the broker process only competes for CPU;
* publishers send batches of 64 pre-encoded PUBLISHes with one ``sendall``;
* QoS 0 receivers never parse: they ``recv_into`` one reusable buffer and divide
  the bytes by the delivery size (learnt from the first packet; all topics of a
  phase have the same length so every delivery has the same size); QoS 1
  receivers walk the length headers only, to cut out packet ids for PUBACKs,
  which are joined into one ``sendall`` per ``recv``;
* counters live in a shared ``RawArray`` (no locks: one writer per slot).

Flow control: a throughput publisher keeps at most ``window`` messages between what
it sent and what the receivers counted (fan-out: deliveries / 100). Without it a
fast publisher would only measure how large the broker lets its queues grow (and
how much it drops); with it the figure is the rate the broker sustains end to end.
QoS 1 publishers also respect the broker's receive maximum (5.0 CONNACK).
"""

from __future__ import annotations

import errno
import select
import selectors
import socket
import time

from kefu.broker.mqtt.codec import Decoder, encode, encode_publish, publish_template
from kefu.broker.mqtt.packets import (
    ConnAck,
    Connect,
    Publish,
    SubAck,
    Subscribe,
    Subscription,
)

PAYLOAD = bytes(range(64))
KEEP_ALIVE = 600  # seconds: no PINGREQ traffic during a run
HOST = "127.0.0.1"
RCVLOWAT = 8192

# ctrl slots (a RawArray shared by the main process and its workers)
GO, STOP, RECORD = 0, 1, 2


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------- packets
def connect_packet(client_id: str, version: int) -> bytes:
    return encode(Connect(client_id=client_id, protocol_level=version, clean_start=True,
                          keep_alive=KEEP_ALIVE), version)


def subscribe_packet(topic_filter: str, qos: int, version: int, packet_id: int = 1) -> bytes:
    return encode(Subscribe(packet_id, (Subscription(topic_filter, qos),)), version)


def publish_packet(topic: str, version: int, payload: bytes = PAYLOAD) -> bytes:
    return encode_publish(topic, payload, version)


def publish_qos1_packets(topic: str, version: int, payload: bytes = PAYLOAD) -> list[bytes]:
    """The PUBLISH for every packet id 1..65535 (index pid - 1)."""
    prefix, suffix = publish_template(Publish(topic, payload, 1, packet_id=1), version)
    return [prefix + pid.to_bytes(2, "big") + suffix for pid in range(1, 65536)]


def scan(data: bytes, want_acks: bool):
    """Walk whole packets in ``data``: -> (PUBLISHes, other packets, PUBACK bodies, used bytes).

    ``want_acks``: collect the packet id of every QoS>0 PUBLISH (as 2 bytes).
    """
    i = 0
    n = len(data)
    pubs = 0
    others = 0
    pids = []
    while i + 1 < n:
        b0 = data[i]
        b = data[i + 1]
        if b < 128:
            rl = b
            j = i + 2
        else:
            rl = b & 127
            mult = 128
            j = i + 2
            while True:
                if j >= n:
                    return pubs, others, pids, i
                b = data[j]
                j += 1
                rl += (b & 127) * mult
                if b < 128:
                    break
                mult *= 128
        end = j + rl
        if end > n:
            break
        if (b0 & 0xF0) == 0x30:
            pubs += 1
            if want_acks and b0 & 6:
                p = j + 2 + ((data[j] << 8) | data[j + 1])
                pids.append(data[p:p + 2])
        else:
            others += 1
        i = end
    return pubs, others, pids, i


def acks_for(pids: list[bytes]) -> bytes:
    """PUBACK (no reason code: success, valid in 3.1.1 and 5.0) for every packet id."""
    return b"\x40\x02" + b"\x40\x02".join(pids)


# ---------------------------------------------------------------------- connecting
def connect_many(port: int, version: int, client_ids: list[str], filters: list[str] | None = None,
                 qos: int = 0, window: int = 64, timeout: float = 60.0, rcvbuf: int | None = None,
                 start_at: float | None = None):
    """Open MQTT clients, at most ``window`` handshakes at a time (non-blocking, epoll).

    Each client: TCP connect, CONNECT, CONNACK, then (``filters``) SUBSCRIBE to its
    filter and SUBACK. Returns ``(sockets, info)``: sockets in client order (blocking
    mode, None where a client failed); ``info`` has ``receive_maximum`` (5.0
    CONNACK), ``failed``, ``error`` (the first failure) and ``elapsed``.
    """
    n = len(client_ids)
    socks: list[socket.socket | None] = [None] * n
    info = {"receive_maximum": None, "failed": 0, "error": None, "elapsed": 0.0}
    sel = selectors.EpollSelector()
    addr = (HOST, port)
    nxt = inprog = done = 0
    if start_at is not None:
        while time.monotonic() < start_at:
            time.sleep(0.001)
    t0 = time.monotonic()
    deadline = t0 + timeout

    def fail(st, why):
        nonlocal inprog
        if info["error"] is None:
            info["error"] = why
        info["failed"] += 1
        inprog -= 1
        try:
            sel.unregister(st[0])
        except (KeyError, ValueError):
            pass
        st[0].close()

    while done + info["failed"] < n:
        while inprog < window and nxt < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            err = s.connect_ex(addr)
            st = [s, nxt, 0, None]
            nxt += 1
            inprog += 1
            if err not in (0, errno.EINPROGRESS):
                fail(st, f"connect: {errno.errorcode.get(err, err)}")
                continue
            sel.register(s, selectors.EVENT_WRITE, st)
        now = time.monotonic()
        if now > deadline:
            break
        for key, _ in sel.select(min(0.5, deadline - now)):
            st = key.data
            s = st[0]
            i = st[1]
            if st[2] == 0:
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(st, f"connect: {errno.errorcode.get(err, err)}")
                    continue
                s.send(connect_packet(client_ids[i], version))
                st[2] = 1
                st[3] = Decoder(server=False, version=version)
                sel.modify(s, selectors.EVENT_READ, st)
                continue
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                fail(st, f"recv: {e}")
                continue
            if not data:
                fail(st, "closed by the broker during the handshake")
                continue
            dec = st[3]
            dec.feed(data)
            finished = False
            try:
                for p in dec:
                    if isinstance(p, ConnAck):
                        if p.reason_code:
                            raise BenchError(f"CONNACK refused: 0x{p.reason_code:02X}")
                        if info["receive_maximum"] is None and version == 5:
                            info["receive_maximum"] = p.properties.receive_maximum or 65535
                        if filters:
                            s.send(subscribe_packet(filters[i], qos, version))
                            st[2] = 2
                        else:
                            finished = True
                    elif isinstance(p, SubAck):
                        if any(c >= 0x80 for c in p.reason_codes):
                            raise BenchError(f"SUBACK refused {filters[i]!r}: {p.reason_codes}")
                        finished = True
            except Exception as e:  # noqa: BLE001 - any failure of one client is reported
                fail(st, str(e))
                continue
            if finished:
                sel.unregister(s)
                s.setblocking(True)
                socks[i] = s
                inprog -= 1
                done += 1
    for key in list(sel.get_map().values()):
        st = key.data
        fail(st, f"not connected within {timeout:.0f} s")
    info["failed"] += n - nxt
    sel.close()
    info["elapsed"] = time.monotonic() - t0
    return socks, info


def _close_all(socks) -> None:
    for s in socks:
        if s is not None:
            s.close()


def _wait_flag(ctrl, slot: int, poll: float = 0.001) -> None:
    while not ctrl[slot]:
        time.sleep(poll)


# ---------------------------------------------------------------------- workers
def receiver_worker(port, version, client_ids, filters, qos, counters, base, ctrl, report):
    """Subscribe every client, then count deliveries into ``counters[base + k]``."""
    socks, info = connect_many(port, version, client_ids, filters, qos)
    if info["failed"]:
        report.put(("error", f"receiver: {info['failed']} clients failed: {info['error']}"))
        _close_all(socks)
        return
    report.put(("ready", None))
    sel = selectors.EpollSelector()
    for k, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, k)
    n = len(socks)
    if qos == 0:
        # Wake only once 8 KiB (~90 deliveries) are buffered: a broker that writes
        # every packet on its own would otherwise cost the receiver one recv each.
        for s in socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, RCVLOWAT)
        buf = bytearray(1 << 18)
        total = [0] * n
        size = [0] * n
        while not ctrl[STOP]:
            for key, _ in sel.select(0.1):
                k = key.data
                nb = socks[k].recv_into(buf)
                if not nb:
                    sel.unregister(socks[k])
                    continue
                if not size[k]:  # every delivery of a phase has this size (< 128 bytes)
                    if buf[0] & 0xF0 != 0x30 or nb < 2 or buf[1] >= 128:
                        report.put(("error", f"receiver: unexpected first packet {bytes(buf[:8]).hex()}"))
                        return
                    size[k] = buf[1] + 2
                total[k] += nb
                counters[base + k] = total[k] // size[k]
    else:
        rest = [b""] * n
        count = [0] * n
        while not ctrl[STOP]:
            for key, _ in sel.select(0.1):
                k = key.data
                s = socks[k]
                data = s.recv(1 << 18)
                if not data:
                    sel.unregister(s)
                    continue
                if rest[k]:
                    data = rest[k] + data
                pubs, _, pids, used = scan(data, True)
                rest[k] = data[used:]
                if pids:
                    s.sendall(acks_for(pids))
                count[k] += pubs
                counters[base + k] = count[k]
    report.put(("done", None))
    _close_all(socks)


def publisher_worker(port, version, client_ids, topics, qos, counters, sent_slot, sent_range,
                     recv_range, fanout, window, ctrl, report, batch=64):
    """Publish to ``topics`` (one client each) as fast as the window allows until STOP.

    ``counters[sent_slot]``: messages this worker sent; the window compares the sum
    over ``sent_range`` (every publisher worker) with the sum over ``recv_range``
    divided by ``fanout``. ``window=0``: no end-to-end window (the flood).
    """
    socks, info = connect_many(port, version, client_ids)
    if info["failed"]:
        report.put(("error", f"publisher: {info['failed']} clients failed: {info['error']}"))
        _close_all(socks)
        return
    s_lo, s_hi = sent_range
    r_lo, r_hi = recv_range
    report.put(("ready", info["receive_maximum"]))
    _wait_flag(ctrl, GO)
    sent = 0
    if qos == 0:
        blobs = [publish_packet(t, version) * batch for t in topics]
        while not ctrl[STOP]:
            if window and sum(counters[s_lo:s_hi]) - sum(counters[r_lo:r_hi]) // fanout > window:
                time.sleep(0.0002)
                continue
            for s, blob in zip(socks, blobs):
                s.sendall(blob)
                sent += batch
            counters[sent_slot] = sent
    else:
        # QoS 1: the broker's receive maximum bounds what is unacknowledged (5.0);
        # 3.1.1 has no such limit, the end-to-end window (or 1000) bounds it.
        limit = info["receive_maximum"] or 65535
        limit = min(limit, window or 1000, 65000)
        packets = [publish_qos1_packets(t, version) for t in topics]
        pids = [0] * len(socks)
        inflight = [0] * len(socks)
        rest = [b""] * len(socks)
        while not ctrl[STOP]:
            progressed = False
            for k, s in enumerate(socks):
                try:
                    while True:
                        data = s.recv(65536, socket.MSG_DONTWAIT)
                        if not data:
                            report.put(("error", "publisher: closed by the broker"))
                            return
                        if rest[k]:
                            data = rest[k] + data
                        _, acks, _, used = scan(data, False)
                        rest[k] = data[used:]
                        inflight[k] -= acks
                        if len(data) < 65536:
                            break
                except BlockingIOError:
                    pass
                room = min(batch, limit - inflight[k])
                if window:
                    room = min(room, window - (sum(counters[s_lo:s_hi]) - sum(counters[r_lo:r_hi]) // fanout))
                if room <= 0:
                    continue
                p = pids[k]
                pk = packets[k]
                if p + room <= 65535:
                    s.sendall(b"".join(pk[p:p + room]))
                else:
                    s.sendall(b"".join(pk[p:] + pk[:p + room - 65535]))
                pids[k] = (p + room) % 65535
                inflight[k] += room
                sent += room
                progressed = True
            counters[sent_slot] = sent
            if not progressed:
                select.select(socks, [], [], 0.001)
    report.put(("done", sent))
    _close_all(socks)


def holder_worker(port, version, client_ids, filters, ctrl, report, window=64, timeout=60.0, start_at_go=False):
    """Open clients (subscribed to ``filters`` if given) and keep them idle until STOP.

    ``start_at_go``: wait for GO, then report ("connected", finish time, failed, error)
    measured on CLOCK_MONOTONIC, which every process shares.
    """
    if start_at_go:
        report.put(("ready", None))
        _wait_flag(ctrl, GO, 0.0002)
    socks, info = connect_many(port, version, client_ids, filters, 0, window=window, timeout=timeout)
    report.put(("connected", (time.monotonic(), info["failed"], info["error"])))
    _wait_flag(ctrl, STOP, 0.05)
    _close_all(socks)
    report.put(("done", None))


def latency_sub_worker(port, version, topic, ctrl, report):
    """Subscribe, then record (now - timestamp in the payload) for every delivery while RECORD."""
    socks, info = connect_many(port, version, ["bench-lat-sub"], [topic], 0)
    if info["failed"]:
        report.put(("error", f"latency subscriber: {info['error']}"))
        return
    s = socks[0]
    s.settimeout(0.1)
    report.put(("ready", None))
    lat = []
    rest = b""
    mono = time.monotonic_ns
    while not ctrl[STOP]:
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        now = mono()
        if not data:
            break
        if rest:
            data = rest + data
        i = 0
        n = len(data)
        while i + 2 <= n:
            rl = data[i + 1]  # deliveries are < 128 bytes: one length byte
            end = i + 2 + rl
            if end > n:
                break
            if ctrl[RECORD] and data[i] & 0xF0 == 0x30:
                lat.append(now - int.from_bytes(data[end - 64:end - 56], "big"))
            i = end
        rest = data[i:]
    report.put(("latencies", lat))
    s.close()


def latency_pub_worker(port, version, topic, rate, ctrl, report):
    """Publish QoS 0 at ``rate`` msg/s, the send time (CLOCK_MONOTONIC ns) in the payload."""
    socks, info = connect_many(port, version, ["bench-lat-pub"])
    if info["failed"]:
        report.put(("error", f"latency publisher: {info['error']}"))
        return
    s = socks[0]
    packet = publish_packet(topic, version)
    head, tail = packet[:-64], PAYLOAD[8:]
    report.put(("ready", None))
    _wait_flag(ctrl, GO)
    mono = time.monotonic
    mono_ns = time.monotonic_ns
    t0 = mono()
    i = 0
    while not ctrl[STOP]:
        delay = t0 + i / rate - mono()
        if delay > 0:
            time.sleep(delay)
        s.sendall(head + mono_ns().to_bytes(8, "big") + tail)
        i += 1
    report.put(("done", i))
    s.close()


def read_sys(port: int, version: int, wait: float = 1.5) -> dict[str, str]:
    """Subscribe to ``$SYS/#`` for ``wait`` seconds; -> topic: latest value."""
    socks, info = connect_many(port, version, [f"bench-sys-{time.monotonic_ns()}"], timeout=10)
    if info["failed"]:
        return {}
    s = socks[0]
    s.sendall(subscribe_packet("$SYS/#", 0, version))  # the retained values follow the SUBACK
    s.settimeout(0.1)
    dec = Decoder(server=False, version=version)
    out: dict[str, str] = {}
    end = time.monotonic() + wait
    try:
        while time.monotonic() < end:
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            dec.feed(data)
            for p in dec:
                if isinstance(p, Publish):
                    out[p.topic] = p.payload.decode(errors="replace")
    finally:
        s.close()
    return out
