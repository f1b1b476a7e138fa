"""Helpers for tests with real MQTT clients over real sockets.

``KefuThread`` runs the whole kefu app (``kefu.app.run``) under ``trio.run`` in a
background thread, bound to port 0, and stops it gracefully. ``Paho`` wraps a
paho-mqtt client so a test can wait for CONNACK/SUBACK/messages with timeouts
(threading events and queues; nothing sleeps to synchronise).
"""

from __future__ import annotations

import queue
import os
import tempfile
import threading

import paho.mqtt.client as mqtt
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from kefu.app import run
from kefu.config import Config

WAIT = 10.0  # seconds any single expected event may take before the test fails


def broker_config(**mqtt_kw) -> Config:
    cfg = Config()
    cfg.listeners.mqtt.host = "127.0.0.1"
    cfg.listeners.mqtt.port = 0
    # Broker tests: only the MQTT listeners; the desk, intent engine, browser listeners and
    # storage have their own suites. Storage goes to a throwaway SQLite file.
    cfg.listeners.ws.enabled = False
    cfg.listeners.http.enabled = False
    cfg.desk.enabled = False
    cfg.nlp.enabled = False
    cfg.storage.path = os.path.join(tempfile.mkdtemp(prefix="kefu-broker-test-"), "kefu.db")
    cfg.mqtt.sys_interval = 0
    for k, v in mqtt_kw.items():
        setattr(cfg.mqtt, k, v)
    return cfg


class KefuThread:
    """kefu serving in a background thread; ``port``/``tls_port`` are the bound ports."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.app = None
        self.error: BaseException | None = None
        self._token = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, name="kefu-broker", daemon=True)

    def _main(self) -> None:
        async def main():
            async with trio.open_nursery() as nursery:
                self.app = await nursery.start(run, self.cfg)
                self._token = trio.lowlevel.current_trio_token()
                self._started.set()

        try:
            trio.run(main)
        except BaseException as e:  # noqa: BLE001 - surfaced to the test by start()
            self.error = e
        finally:
            self._started.set()

    def start(self) -> KefuThread:
        self._thread.start()
        if not self._started.wait(WAIT):
            raise RuntimeError("kefu did not start")
        if self.error is not None:
            raise self.error
        return self

    @property
    def port(self) -> int:
        return self.app.port("mqtt")

    @property
    def tls_port(self) -> int:
        return self.app.port("mqtts")

    @property
    def router(self):
        return self.app.broker.router

    def call(self, fn, *args):
        """Run a sync function on the broker's trio thread (to read router state safely)."""

        async def wrapper():
            return fn(*args)

        return trio.from_thread.run(wrapper, trio_token=self._token)

    def stop(self) -> None:
        if self._token is not None and self._thread.is_alive():
            trio.from_thread.run(self.app.stop, trio_token=self._token)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "kefu did not stop"


class Paho:
    """A paho-mqtt client (VERSION2 callbacks) with blocking, time-limited helpers."""

    def __init__(self, port: int, client_id: str, version: int = 4, *, clean: bool = True,
                 session_expiry: int | None = None, will: tuple | None = None, username=None,
                 password=None, tls_ca: str | None = None, loop: bool = True, host: str = "127.0.0.1") -> None:
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        kw = {} if version == 5 else {"clean_session": clean}
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kw)
        self.version = version
        self.port = port
        self.host = host
        self.clean = clean
        self.session_expiry = session_expiry
        self.messages: queue.Queue = queue.Queue()
        self.connacks: queue.Queue = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()
        self.pubacks: dict[int, object] = {}
        self.disconnects: queue.Queue = queue.Queue()
        self._puback_cond = threading.Condition()
        c = self.c
        c.on_connect = lambda cl, ud, flags, rc, props: self.connacks.put((flags, rc, props))
        c.on_subscribe = lambda cl, ud, mid, rcs, props: self.subacks.put((mid, rcs))
        c.on_message = lambda cl, ud, msg: self.messages.put(msg)
        c.on_disconnect = lambda cl, ud, flags, rc, props: self.disconnects.put(rc)
        c.on_publish = self._on_publish
        if will is not None:
            topic, payload, qos, retain = will
            c.will_set(topic, payload, qos, retain)
        if username is not None:
            c.username_pw_set(username, password)
        if tls_ca is not None:
            c.tls_set(ca_certs=tls_ca)
        self.loop = loop

    def _on_publish(self, cl, ud, mid, rc, props) -> None:
        with self._puback_cond:
            self.pubacks[mid] = rc
            self._puback_cond.notify_all()

    def connect(self, keepalive: int = 60):
        """Connect and wait for CONNACK; returns (flags, reason code)."""
        props = None
        if self.version == 5:
            props = PahoProperties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
            self.c.connect(self.host, self.port, keepalive, clean_start=self.clean, properties=props)
        else:
            self.c.connect(self.host, self.port, keepalive)
        if self.loop:
            self.c.loop_start()
            flags, rc, self.connack_properties = self.connacks.get(timeout=WAIT)
        else:
            flags, rc, self.connack_properties = self.pump(self.connacks)
        return flags, rc

    def pump(self, q: queue.Queue):
        """Without a loop thread: run the network loop until ``q`` has something."""
        import time

        deadline = time.monotonic() + WAIT
        while q.empty():
            if time.monotonic() > deadline:
                raise TimeoutError("nothing arrived")
            self.c.loop(0.05)
        return q.get_nowait()

    def subscribe(self, topic, qos: int = 0, **opts) -> list:
        if self.version == 5 and opts:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            rc, mid = self.c.subscribe(topic, options=SubscribeOptions(qos=qos, **opts))
        else:
            rc, mid = self.c.subscribe(topic, qos)
        got_mid, codes = self.subacks.get(timeout=WAIT)
        assert got_mid == mid
        return [c.value for c in codes]

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, props=None):
        """Publish and wait until done (PUBACK/PUBCOMP for QoS > 0); returns the ack reason code."""
        info = self.c.publish(topic, payload, qos, retain, properties=props)
        with self._puback_cond:
            ok = self._puback_cond.wait_for(lambda: info.mid in self.pubacks, WAIT)
        assert ok, f"no acknowledgement for {topic!r}"
        return self.pubacks.pop(info.mid)

    def get(self, timeout: float = WAIT):
        return self.messages.get(timeout=timeout)

    def drop(self) -> None:
        """Break the connection without DISCONNECT (the will applies)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def disconnect(self) -> None:
        self.c.disconnect()
        if self.loop:
            self.c.loop_stop()
