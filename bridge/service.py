"""Starts the bridge's listeners inside kefu's root nursery.

``kefu/app.py`` calls ``run(cfg, broker=..., desk=..., bus=..., announce=...)`` once
the broker is up. The WebSocket listener serves ``/mqtt`` from the broker alone; the
``/chat`` path and the HTTP API need the desk (and a bus joined to the broker) — when
the desk is not given they are not served, and what is not served is said in the
startup lines, never silently skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import trio

from . import http as httpmod
from . import ws as wsmod
from .chat import ChatServer
from .deskport import Bus, Desk
from .identity import Identities, TokenInfo, new_token


@dataclass
class Bridge:
    ws: wsmod.WsListener | None = None
    http: httpmod.HttpListener | None = None
    chat: ChatServer | None = None
    demo_token: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.ws.url if self.ws else ""

    @property
    def http_url(self) -> str:
        return self.http.url if self.http else ""


async def run(
    cfg,
    *,
    broker,
    desk: Desk | None = None,
    bus: Bus | None = None,
    announce: Callable[[str], None] | None = None,
    demo_agent: str | None = None,
    extra_routes: list | None = None,
    store=None,
    visitor_secret: bytes | None = None,
    ready_checks: dict | None = None,
    ready_details: dict | None = None,
    task_status: trio.TaskStatus[Bridge] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve listeners.ws and listeners.http until cancelled; ``started(Bridge)``.
    ``visitor_secret``: the widget's visitor secret kept in the desk's record (used when
    ``widget.visitor_secret`` is not configured), so visitors keep their identity."""
    say = announce or (lambda line: None)
    b = Bridge()
    extra: dict[str, TokenInfo] = {}
    if desk is not None and not cfg.api.tokens and demo_agent:
        b.demo_token = new_token()
        extra[b.demo_token] = TokenInfo("demo", "agent", demo_agent)
    ids = Identities(cfg, extra_tokens=extra, secret=visitor_secret)
    async with trio.open_nursery() as nursery:
        if cfg.listeners.ws.enabled:
            if desk is not None and bus is not None:
                b.chat = ChatServer(cfg, ids, desk, bus)
            b.ws = await nursery.start(lambda task_status: wsmod.run(
                cfg,
                # attach mode: devices use the external broker; kefu serves no MQTT of its own
                mqtt_handler=(lambda stream, info: broker.handle_stream(stream, info.remote))
                if cfg.broker.mode == "embedded" else None,
                chat_handler=b.chat.handle if b.chat else None,
                task_status=task_status,
            ))
            if cfg.broker.mode == "embedded":
                say(f"kefu: MQTT over WebSocket on {b.ws.url}{cfg.listeners.ws.mqtt_path}")
            if b.chat:
                say(f"kefu: browser chat protocol on {b.ws.url}{cfg.listeners.ws.chat_path}")
            else:
                say("kefu: /chat not served: the customer-service desk is not running")
        if cfg.listeners.http.enabled:
            if desk is None:
                say("kefu: HTTP API and pages not served: the customer-service desk is not running")
            else:
                st = httpmod.BridgeState(cfg, desk, ids, ws_url=b.ws_url, extra_routes=list(extra_routes or ()),
                                         store=store)
                st.ready_checks["ws"] = lambda: b.ws is not None or not cfg.listeners.ws.enabled
                st.ready_checks.update(ready_checks or {})
                st.ready_details.update(ready_details or {})
                b.http = await nursery.start(lambda task_status: httpmod.run(st, task_status=task_status))
                base = b.http.url
                say(f"kefu: HTTP API on {base}/api/v1 (OpenAPI: {base}/api/v1/openapi.json)")
                say(f"kefu: agent console on {base}/console")
                if cfg.widget.demo_site:
                    say(f"kefu: widget demo on {base}/demo")
                if b.demo_token:
                    say(f"kefu: no [[api.tokens]] configured; demo agent '{demo_agent}' token for this run: {b.demo_token}")
        task_status.started(b)
