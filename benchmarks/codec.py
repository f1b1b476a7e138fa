"""MQTT codec throughput: decode/encode of a 64-byte PUBLISH, packets per second.

    .venv/bin/python -m benchmarks.codec        (or: python benchmarks/codec.py)

Decoding is measured the way the connection driver uses it: a 64 KiB-ish chunk of
back-to-back packets is fed, then every packet is pulled out (``stream``), and one
packet per feed (``single``). Encoding: ``encode(Publish)``, ``encode_publish`` and the
router's per-subscriber cost with a ``publish_template`` (splice a packet id).
"""

from __future__ import annotations

import time

from kefu.broker.mqtt.codec import Decoder, encode, encode_publish, publish_template
from kefu.broker.mqtt.packets import Properties, PubAck, Publish

PAYLOAD = bytes(range(64))
TOPIC = "devices/4711/telemetry"


def rate(fn, n: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    rows = []
    for version in (4, 5):
        for qos in (0, 1):
            pub = Publish(TOPIC, PAYLOAD, qos, packet_id=1 if qos else None)
            wire = encode(pub, version)
            batch = 1000
            chunk = wire * batch

            def stream():
                for _ in range(20):
                    d = Decoder(server=True, version=version)
                    d.feed(chunk)
                    for _p in d:
                        pass

            def single():
                d = Decoder(server=True, version=version)
                for _ in range(20000):
                    d.feed(wire)
                    d.next_packet()

            def enc():
                for _ in range(20000):
                    encode(pub, version)

            def enc_fast():
                for i in range(20000):
                    encode_publish(TOPIC, PAYLOAD, version, qos, 1 if qos else None)

            prefix, suffix = publish_template(pub, version)

            def splice():
                for i in range(1, 20001):
                    prefix + i.to_bytes(2, "big") + suffix

            rows.append((f"{'3.1.1' if version == 4 else '5.0'} QoS{qos}", len(wire),
                         rate(stream, 20 * batch), rate(single, 20000), rate(enc, 20000),
                         rate(enc_fast, 20000), rate(splice, 20000) if qos else None))
    props = Properties(message_expiry_interval=60, user_properties=(("k", "v"),))
    pub = Publish(TOPIC, PAYLOAD, 1, packet_id=1, properties=props)
    wire = encode(pub, 5)

    def props_stream():
        for _ in range(20):
            d = Decoder(server=True, version=5)
            d.feed(wire * 1000)
            for _p in d:
                pass

    def props_enc():
        for _ in range(20000):
            encode(pub, 5)

    rows.append(("5.0 QoS1 +props", len(wire), rate(props_stream, 20000), None,
                 rate(props_enc, 20000), None, None))
    ack = encode(PubAck(7), 4)

    def acks():
        for _ in range(20):
            d = Decoder(server=True, version=4)
            d.feed(ack * 1000)
            for _p in d:
                pass

    rows.append(("3.1.1 PUBACK", len(ack), rate(acks, 20000), None, None, None, None))

    head = ("packet", "bytes", "decode stream/s", "decode single/s", "encode()/s",
            "encode_publish/s", "template splice/s")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(" | ".join([r[0], str(r[1])] + ["-" if x is None else f"{x:,.0f}" for x in r[2:]]))


if __name__ == "__main__":
    main()
