"""HTTP routes of the operations side, served on listeners.http next to the bridge's API.

    GET /metrics                 Prometheus text exposition (refreshes the live gauges first)
    GET /dashboard               the dashboard page (kefu/web/dashboard.html, uPlot shipped in kefu/web/vendor)
    GET /ops/status              what runs and where, storage, connections, queues, firing alerts (JSON)
    GET /ops/series?range=1h[&names=a,b]
                                 stored history for the dashboard and `kefu stats` (JSON)
    GET /ops/static/...          the dashboard's assets
    GET /ops/i18n?lang=...       the dashboard's words in the browser's language (kefu/i18n.py)

``routes(ops)`` returns Starlette routes; the bridge's app includes them (``BridgeState
.extra_routes``). With ``metrics.access = "operator"`` every route but the page and its
assets needs an operator API token (``Authorization: Bearer``, ``api_access_token``, or
``?token=``, which the dashboard page passes on).
"""

from __future__ import annotations

import logging
from importlib import resources

import trio
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import i18n
from .ops import Ops, OpsError

log = logging.getLogger("kefu.ops.http")

WEB = resources.files("kefu").joinpath("web")


def _token(req: Request) -> str | None:
    tok = req.headers.get("api_access_token")
    if tok:
        return tok
    auth = req.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return req.query_params.get("token")


def routes(ops: Ops) -> list:
    cfg = ops.cfg
    ids = None
    if cfg.metrics.access == "operator":
        from .bridge.identity import Identities

        ids = Identities(cfg)

    def denied(req: Request) -> Response | None:
        if ids is None:
            return None
        info = ids.token(_token(req))
        if info is None:
            return JSONResponse({"error": "unauthorized", "message": "metrics.access = operator: send an operator "
                                 "API token (Authorization: Bearer ...)"}, status_code=401)
        if info.role != "operator":
            return JSONResponse({"error": "forbidden", "message": "an operator token is needed"}, status_code=403)
        return None

    async def metrics(req: Request) -> Response:
        if (r := denied(req)) is not None:
            return r
        await ops.metrics.refresh()
        body, ctype = ops.metrics.exposition()
        return Response(body, media_type=ctype)

    async def dashboard(req: Request) -> Response:
        html = WEB.joinpath("dashboard.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    async def status(req: Request) -> Response:
        if (r := denied(req)) is not None:
            return r
        await ops.metrics.refresh()
        return JSONResponse(ops.status())

    async def series(req: Request) -> Response:
        if (r := denied(req)) is not None:
            return r
        names = [n for n in req.query_params.get("names", "").split(",") if n] or None
        try:
            data = await ops.series(req.query_params.get("range", "1h"), names)
        except OpsError as e:
            return JSONResponse({"error": "bad_request" if e.status == 400 else "unavailable", "message": str(e)},
                                status_code=e.status)
        data["interval_s"] = cfg.metrics.sample_interval
        data["alerts_firing"] = ops.alerts.firing() if ops.alerts else []
        return JSONResponse(data)

    async def healthz(req: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def messages(req: Request) -> Response:  # the dashboard's words (kefu/locales/), public like the page
        return JSONResponse(i18n.document(req.query_params.get("lang")), headers={"Cache-Control": "no-cache"})

    return [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/dashboard", dashboard),
        Route("/ops/status", status),
        Route("/ops/series", series),
        Route("/ops/i18n", messages),
        Mount("/ops/static", StaticFiles(directory=str(WEB)), name="ops-static"),
    ]


async def serve_alone(ops: Ops, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve only these routes on listeners.http: for a node whose bridge serves no HTTP (no desk).

    Started with the base URL, like the bridge's listener."""
    from starlette.applications import Starlette

    from kefu.bridge.http import favicon_route, hypercorn_config, local_url, serve_forever

    hc = hypercorn_config(ops.cfg.listeners.http, "kefu.ops.http.server")
    from starlette.middleware import Middleware

    from kefu.bridge.http import SecurityHeaders

    app = Starlette(routes=[*routes(ops), favicon_route()], middleware=[Middleware(SecurityHeaders)])

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve_forever, app, hc)
        task_status.started(local_url(binds[0]))
