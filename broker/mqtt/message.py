"""What the protocol machine routes: ``Message``, plus the server ``Limits`` and ``Stats``.

``Message`` is one application message as the router passes it to subscribers. It
caches its encoded forms so that a fan-out encodes once per distinct
(protocol, QoS, retain flag[, per-delivery 5.0 properties]) and shares the bytes:
100 subscribers on 3.1.1 at QoS 0 get the same ``bytes`` object; QoS 1/2 share a
``(prefix, suffix)`` template around the 2-byte packet id (``codec.publish_template``).
Per-delivery properties (subscription identifiers, the remaining message expiry,
an outbound topic alias) get their own cache entries, so subscribers that share
them still share bytes.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .codec import encode_publish, publish_template
from .packets import MQTT_5, NO_PROPERTIES, Publish

__all__ = ["Limits", "Message", "Stats"]


class Limits:
    """The server settings the machine obeys (from the ``[mqtt]`` config section)."""

    __slots__ = (
        "max_packet_size", "max_keepalive", "receive_maximum", "max_offline_messages",
        "max_queued_bytes", "drop_oldest", "max_session_expiry", "topic_alias_maximum",
        "maximum_qos", "retain_available", "connect_timeout", "response_prefix", "max_stored_bytes",
    )

    def __init__(self, *, max_packet_size=1 << 20, max_keepalive=0, receive_maximum=32,
                 max_offline_messages=1000, max_queued_bytes=16 << 20, drop_oldest=True,
                 max_session_expiry=7 * 86400, topic_alias_maximum=64, maximum_qos=2,
                 retain_available=True, connect_timeout=10.0, response_prefix="kefu/response/",
                 max_stored_bytes=16 << 20):
        self.max_packet_size = max_packet_size
        self.max_keepalive = max_keepalive
        self.receive_maximum = receive_maximum
        self.max_offline_messages = max_offline_messages
        self.max_queued_bytes = max_queued_bytes
        self.drop_oldest = drop_oldest
        self.max_session_expiry = max_session_expiry
        self.topic_alias_maximum = topic_alias_maximum
        self.maximum_qos = maximum_qos
        self.retain_available = retain_available
        self.connect_timeout = connect_timeout
        self.response_prefix = response_prefix
        # Payload bytes of QoS 1/2 messages queued for one session, and queued (in any
        # session) from one publisher; 0: no limit (mqtt.max_queued_stored_bytes).
        self.max_stored_bytes = max_stored_bytes

    @classmethod
    def from_config(cls, mqtt) -> Limits:
        """From a ``kefu.config.model.Mqtt`` (duck-typed: broker.mqtt imports nothing of kefu)."""
        return cls(
            max_packet_size=mqtt.max_packet_size,
            max_keepalive=mqtt.max_keepalive,
            receive_maximum=min(mqtt.receive_maximum, 65535),
            max_offline_messages=mqtt.max_offline_messages,
            max_queued_bytes=mqtt.max_queued_bytes,
            drop_oldest=mqtt.queue_drop_policy == "drop_oldest",
            max_session_expiry=mqtt.max_session_expiry,
            topic_alias_maximum=min(mqtt.topic_alias_maximum, 65535),
            maximum_qos=mqtt.maximum_qos,
            retain_available=mqtt.retain_available,
            connect_timeout=float(mqtt.connect_timeout),
            max_stored_bytes=getattr(mqtt, "max_queued_stored_bytes", 0),
        )


class Stats:
    """Broker-wide counters ($SYS); the machine bumps them, the router publishes them."""

    __slots__ = ("messages_received", "messages_sent", "bytes_received", "bytes_sent",
                 "dropped", "connected", "malformed", "throttled", "held_by_origin")

    def __init__(self) -> None:
        self.messages_received = 0
        self.messages_sent = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.dropped = 0
        self.connected = 0
        self.malformed = 0
        self.throttled = 0  # publishers paused for a subscriber's queue (back-pressure)
        # publisher client id -> payload bytes of its messages waiting in sessions' queues
        # (SessionState.pending), for the per-publisher mqtt.max_queued_stored_bytes quota
        self.held_by_origin: dict[str, int] = {}


class Message:
    """One application message as routed (immutable after creation).

    ``expires_at`` is absolute (the caller's clock) or None. ``origin`` is the
    publisher's client id ('' for the broker's own). The encoded forms are cached per
    (protocol, QoS, retain[, per-delivery properties]) so a fan-out encodes once.
    ``rec`` links a stored message to its storage record (None when not stored).
    """

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "expires_at", "origin", "_cache", "rec")

    def __init__(self, topic, payload, qos, retain, properties=NO_PROPERTIES, expires_at=None, origin=""):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
        self.expires_at = expires_at
        self.origin = origin
        self._cache = None
        self.rec = None  # kefu.broker.persist: the stored message (its id once committed), if stored

    def expired(self, now) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def encoded(self, v5: bool, qos: int, retain: bool, sub_ids, now, alias: int = 0, new_alias: bool = False):
        """QoS 0: the packet bytes. QoS 1/2: ``(prefix, suffix)`` around the packet id.

        None when the message has expired (it must not be delivered). With ``alias``
        (5.0 outbound topic alias) the topic is sent only when ``new_alias``.
        """
        exp = self.expires_at
        if exp is None and not (v5 and (sub_ids or alias)):
            key = (8 if v5 else 0) | (qos << 1) | (1 if retain else 0)
            remaining = None
        else:
            remaining = None
            if exp is not None:
                left = exp - now
                if left <= 0:
                    return None
                remaining = math.ceil(left)
            if not v5:
                key = (qos << 1) | (1 if retain else 0)
            else:
                key = (qos, retain, remaining, sub_ids, alias, new_alias)
        cache = self._cache
        if cache is None:
            cache = self._cache = {}
        else:
            hit = cache.get(key)
            if hit is not None:
                return hit
        topic = self.topic
        if v5:
            props = self.properties
            if remaining is not None or sub_ids or alias:
                changes = {}
                if remaining is not None:
                    changes["message_expiry_interval"] = remaining
                if sub_ids:
                    changes["subscription_identifiers"] = tuple(sub_ids)
                if alias:
                    changes["topic_alias"] = alias
                    if not new_alias:
                        topic = ""
                props = replace(props, **changes)
            version = MQTT_5
        else:
            props = NO_PROPERTIES
            version = 4
        if qos == 0:
            out = encode_publish(topic, self.payload, version, 0, None, retain, False, props)
        else:
            out = publish_template(Publish(topic, self.payload, qos, retain, False, 1, props), version)
        cache[key] = out
        return out

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, {self.payload[:32]!r}, qos={self.qos}, retain={self.retain})"
