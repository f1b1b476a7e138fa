"""The HTTP side: REST API under /api/v1, the pages, /healthz and /readyz.

A Starlette app served by Hypercorn's trio worker inside kefu's root nursery (no second
event loop, no thread). The API is shaped like Chatwoot's where that fits — list
envelopes ``{"data": {"meta": ..., "payload": [...]}}``, ``toggle_status``,
``assignments``, ``api_access_token`` — so people and tools that know Chatwoot find
their way; kefu-specific parts (tickets, device info) follow the same style.

Every API route is declared once in ``ROUTES`` with its summary, auth and response
schema; the OpenAPI document at /api/v1/openapi.json is generated from that table and
tests/bridge/test_http_api.py checks the app's routes and real responses against it,
so the document cannot drift from the code.

Auth: ``api_access_token: <token>`` or ``Authorization: Bearer <token>`` for agents
and operators (see ``identity.py``); an agent token acts as that agent, an operator
token as the desk itself. The widget's endpoints take the site's public token.

Transcript search (``GET /search``) reads the SQL store (``BridgeState.store``: SQLite
FTS5 trigram, PostgreSQL pg_trgm), not the live desk, so it finds closed and old
conversations too. Who sees what: an operator token every match; an agent token the
matches in conversations assigned to that agent, queued for one of its teams, or in
the desk's common pool (no team, no assignee) -- checked per conversation against the
live desk first, the stored row when the desk no longer holds it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Awaitable, Callable

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kefu import __version__, edge, i18n

from .deskport import Desk, DeskError
from .identity import Identities, TokenInfo
from .visibility import Visibility, visible

log = logging.getLogger("kefu.bridge.http")

WEB = resources.files("kefu.bridge").joinpath("web")
MAX_BODY = 1_000_000


@dataclass
class BridgeState:
    """What the HTTP side needs to know about the running process."""

    cfg: Any
    desk: Desk
    ids: Identities
    ws_url: str = ""  # base ws:// URL of listeners.ws once it is up ("" when disabled)
    ready_checks: dict[str, Callable[[], bool]] = field(default_factory=dict)
    ready_details: dict[str, Callable[[], dict]] = field(default_factory=dict)  # extra /readyz fields
    extra_routes: list = field(default_factory=list)  # added by other parts: kefu/ops_web.py (/metrics, /dashboard)
    store: Any = None  # kefu.storage store: its health() is part of /readyz
    visibility: Visibility | None = None  # who may read which conversation (set from cfg and desk)

    def __post_init__(self) -> None:
        if self.visibility is None:
            self.visibility = Visibility(self.cfg, self.desk)


# ---------------------------------------------------------------------------------------
# Schemas (OpenAPI components)
# ---------------------------------------------------------------------------------------

def _obj(required: list[str], **props) -> dict:
    return {"type": "object", "required": required, "properties": props}


S = {"type": "string"}
N = {"type": "number"}
I = {"type": "integer"}
B = {"type": "boolean"}
NS = {"type": ["string", "null"]}
ARR_S = {"type": "array", "items": S}


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


COMPONENTS: dict[str, dict] = {
    "Error": _obj(["error", "message"], error=S, message=S),
    "Conversation": _obj(
        ["id", "status", "customer"], id=S, customer=S, thread=S, channel=S, status=S, team=NS,
        priority=S, assignee=NS, accepted=B, intent=NS, sentiment=NS, handoff_reason=NS, labels=ARR_S,
        ticket_id=NS, csat={"type": ["integer", "null"], "description": "the customer's rating, 1-5, once given"},
        created_at=N, updated_at={"type": ["number", "null"]},
    ),
    "Message": _obj(["id", "conversation", "author", "text", "ts"], id=S, seq=I, conversation=S,
                    author=_obj(["kind", "id"], kind={"enum": ["customer", "agent", "bot", "system"]}, id=S, name=NS),
                    text=S, private=B, channel=S, ts=N, meta={"type": "object"}),
    "Agent": _obj(["id", "status"], id=S, name=S, teams=ARR_S, skills=ARR_S, capacity=I, tier=I, status=S, load=I,
                  language={"type": "string", "description": "console language: en, zh-CN, or \"\" (the browser's)"}),
    "Contact": _obj(["id"], id=S, name=NS, email=NS, phone=NS, tier={"type": ["string", "integer", "null"]}, kind=S, attributes={"type": "object"},
                    sidebar={"type": "object", "description": "contact, CRM data and recent conversations"}),
    "Ticket": _obj(["id", "status"], id=S, title=S, status=S, priority=S, source=S, conv_id=NS, customer_id=NS,
                   team=NS, assignee=NS, device_id=NS),
    "CannedResponse": _obj(["code", "text"], code=S, text=S),
    "Label": _obj(["name"], name=S),
    "Webhook": _obj(["id", "url", "events"], id=S, url=S, events=ARR_S,
                    secret={"type": "string", "description": "only in the answer to POST: keep it to verify signatures"}),
    "Health": _obj(["status"], status=S, checks={"type": "object"}, version=S),
    "Profile": _obj(["role", "ws_url"], role=S, name=S, agent={"oneOf": [ref("Agent"), {"type": "null"}]}, ws_url=S),
    "SearchHit": _obj(
        ["id", "conversation", "author", "ts", "snippet", "highlights"],
        id={"type": "string", "description": "the message id as the messages API gives it (<conversation>:<seq>)"},
        message_id={"type": "integer", "description": "the stored row's id"}, seq={"type": ["integer", "null"]},
        conversation=S, customer=NS, status=NS,
        author=_obj(["kind", "id"], kind={"enum": ["customer", "agent", "bot", "system"]}, id=S, name=NS),
        ts=N, private=B,
        snippet={"type": "string", "description": "the match with up to 40 characters either side (… where cut)"},
        highlights={"type": "array", "description": "the snippet cut into parts; match: true for the matched text",
                    "items": _obj(["text", "match"], text=S, match=B)},
    ),
    "WidgetConfig": _obj(["title", "ws_url", "site"], site=S, title=S, greeting=S, color=S, ws_url=S,
                         chat_path=S, thread=S),
}


def listing(item: str, meta: dict | None = None) -> dict:
    return _obj(["data"], data=_obj(["meta", "payload"], meta=meta or {"type": "object"},
                                    payload={"type": "array", "items": ref(item)}))


def single(item: str) -> dict:
    return _obj(["data"], data=ref(item))


# ---------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------

Handler = Callable[[Request, "Ctx"], Awaitable[Any]]


@dataclass
class Ctx:
    st: BridgeState
    who: TokenInfo | None

    @property
    def agent(self) -> str | None:
        return self.who.agent if self.who and self.who.role == "agent" else None


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str  # relative to /api/v1, Starlette syntax: /conversations/{id}
    handler: Handler
    summary: str
    tag: str
    auth: str  # "token" | "operator" | "site" | "none"
    response: dict
    status: int = 200
    body: dict | None = None
    query: tuple[tuple[str, str], ...] = ()


async def _json_body(req: Request) -> dict:
    raw = await req.body()
    if len(raw) > MAX_BODY:
        raise HTTPException(413, "request body over 1 MB")
    try:
        # The edge check: valid UTF-8, no lone surrogates, nesting bounded (kefu/edge.py).
        body = edge.loads(raw or b"{}", max_bytes=MAX_BODY)
    except edge.EdgeError as e:
        raise HTTPException(400, f"body refused: {e.message}") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "body must be a JSON object")
    return body


def _need(body: dict, key: str, typ: type | tuple = str) -> Any:
    if key not in body:
        raise HTTPException(422, f"missing field {key}")
    if not isinstance(body[key], typ) or isinstance(body[key], bool) and typ is not bool:
        raise HTTPException(422, f"field {key}: wrong type")
    return body[key]


def _filters(req: Request, ctx: Ctx) -> dict:
    q = req.query_params
    f = {k: q[k] for k in ("status", "assignee", "team", "label", "customer", "q", "channel") if q.get(k)}
    if f.get("assignee") == "me":
        if ctx.agent is None:
            raise HTTPException(422, "assignee=me needs an agent's token")
        f["assignee"] = ctx.agent
    return f


OPEN_STATUSES = ("bot", "queued", "assigned")


async def list_conversations(desk: Desk, viewer: str | None, f: dict, vis: Visibility | None = None) -> list[dict]:
    """The desk's list, with status "open" meaning bot, queued or assigned (the console's lists),
    and only what ``viewer`` may read (bridge/visibility.py)."""
    if f.get("status") != "open":
        out = await desk.conversations(viewer=viewer, filters=f)
    else:
        out = []
        for st in OPEN_STATUSES:
            out += await desk.conversations(viewer=viewer, filters={**f, "status": st})
        out.sort(key=lambda c: c.get("updated_at") or c.get("created_at") or 0, reverse=True)
    return out if vis is None else await vis.filter(viewer, out)


async def h_conversations(req: Request, ctx: Ctx):
    d = ctx.st.desk
    f = _filters(req, ctx)
    vis = ctx.st.visibility
    items = await list_conversations(d, ctx.agent, f, vis)
    base = {k: v for k, v in f.items() if k != "assignee"}
    base["status"] = base.get("status", "open")
    mine = len(await list_conversations(d, ctx.agent, {**base, "assignee": ctx.agent}, vis)) if ctx.agent else 0
    unassigned = len(await list_conversations(d, ctx.agent, {**base, "assignee": "none"}, vis))
    all_ = len(await list_conversations(d, ctx.agent, base, vis))
    meta = {"mine_count": mine, "unassigned_count": unassigned, "all_count": all_}
    return {"data": {"meta": meta, "payload": items}}


async def _readable(ctx: Ctx, conv_id: str) -> None:
    """404 for a conversation this token may not read (as for one that does not exist)."""
    if not await ctx.st.visibility.may_read(ctx.agent, conv_id):
        raise HTTPException(404, f"no conversation {conv_id!r}")


async def h_conversation(req: Request, ctx: Ctx):
    await _readable(ctx, req.path_params["id"])
    return {"data": await ctx.st.desk.conversation(req.path_params["id"])}


async def h_messages(req: Request, ctx: Ctx):
    await _readable(ctx, req.path_params["id"])
    q = req.query_params
    before = _int_param(q.get("before"), "before")
    limit = min(_int_param(q.get("limit"), "limit") or 50, 200)
    msgs, more = await ctx.st.desk.messages(req.path_params["id"], before=before, limit=limit, include_private=True)
    return {"data": {"meta": {"more": more}, "payload": msgs}}


class ApiError(Exception):
    """An answer with its own status and error code (the 503s of transcript search)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# Trigram search (FTS5 trigram, pg_trgm) indexes 3-character sequences. Shorter terms are
# still found (the store scans for them), and two characters is a whole word in Chinese
# (退款, 发票), so a query needs one term of at least 2 characters; a single character
# would match nearly every line and only costs a full scan.
SEARCH_MIN_CHARS = 2
SEARCH_MAX_LIMIT = 50
SNIPPET_CONTEXT = 40


def highlight(body: str, terms: list[str], width: int = SNIPPET_CONTEXT) -> list[dict]:
    """The first match of any term with ``width`` characters either side, cut into parts
    ({"text", "match"}) so a client can mark every term without parsing markup."""
    pattern = re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE)
    first = pattern.search(body)
    a, b = (0, min(len(body), 2 * width)) if first is None else \
        (max(0, first.start() - width), min(len(body), first.end() + width))
    window = body[a:b]
    parts: list[dict] = [{"text": "…", "match": False}] if a else []
    at = 0
    for m in pattern.finditer(window):
        if m.start() > at:
            parts.append({"text": window[at:m.start()], "match": False})
        parts.append({"text": m.group(0), "match": True})
        at = m.end()
    if at < len(window):
        parts.append({"text": window[at:], "match": False})
    if b < len(body):
        parts.append({"text": "…", "match": False})
    merged: list[dict] = []
    for p in parts:  # "…" beside plain text: one part
        if merged and not p["match"] and not merged[-1]["match"]:
            merged[-1] = {"text": merged[-1]["text"] + p["text"], "match": False}
        else:
            merged.append(p)
    return merged


async def _visible(ctx: Ctx, conv_ids: list[str]) -> dict[str, dict | None]:
    """conversation id -> {"customer", "status"} when the token may see it, else None."""
    st, out = ctx.st, {}
    teams = await st.visibility.teams_of(ctx.agent)  # None: sees everything
    for cid in conv_ids:
        try:
            c = await st.desk.conversation(cid)
            customer, status, team, assignee = c.get("customer"), c.get("status"), c.get("team"), c.get("assignee")
        except DeskError:  # no longer in the live desk: the stored row (written behind by the desk)
            row = await st.store.get_conversation(cid)
            if row is None:
                out[cid] = None if teams is not None else {"customer": None, "status": None}
                continue
            customer, status = row.contact_id, row.state
            team, assignee = (row.meta or {}).get("team"), row.assigned_agent
        ok = visible(team, assignee, ctx.agent or "", teams)
        out[cid] = {"customer": customer, "status": status} if ok else None
    return out


async def h_search(req: Request, ctx: Ctx):
    from kefu.storage.base import SearchUnavailable, StorageUnavailable

    q = (req.query_params.get("q") or "").strip()
    limit = _int_param(req.query_params.get("limit"), "limit") or 20
    if not 1 <= limit <= SEARCH_MAX_LIMIT:
        raise HTTPException(400, f"query limit: expected 1 to {SEARCH_MAX_LIMIT}")
    terms = q.split()
    if not terms or max(len(t) for t in terms) < SEARCH_MIN_CHARS:
        raise HTTPException(400, f"query q: too short for transcript search; at least one word of "
                                 f"{SEARCH_MIN_CHARS} or more characters is needed (terms of 3 or more use the "
                                 f"trigram index)")
    store = ctx.st.store
    if store is None:
        raise ApiError(503, "search_unavailable", "transcript search needs the SQL store ([storage]); "
                                                  "this process serves the API without one")
    # An agent sees only some conversations: ask for more than it will get, then filter.
    fetch = limit if ctx.agent is None else min(limit * 4, 200)
    try:
        hits = await store.search(q, limit=fetch)
    except SearchUnavailable as e:
        raise ApiError(503, "search_unavailable", str(e)) from None
    except StorageUnavailable as e:
        raise ApiError(503, "storage_unavailable", f"the database cannot be read now: {e.reason}") from None
    seen = await _visible(ctx, list(dict.fromkeys(h.conversation_id for h in hits)))
    names = {a["id"]: a.get("name") for a in await ctx.st.desk.agents()}
    out = []
    for h in hits:
        conv = seen.get(h.conversation_id)
        if conv is None:
            continue
        rows = await store.list_messages(h.conversation_id, after_id=h.message_id - 1, limit=1)
        row = rows[0] if rows and rows[0].id == h.message_id else None
        meta = row.meta if row else {}
        seq = (row.seq or None) if row else None
        seq = meta.get("seq") if seq is None else seq  # rows stored before migration 0005 kept it in meta
        sender = (row.sender_id if row else "") or h.sender_kind
        name = names.get(sender) if h.sender_kind == "agent" else None
        parts = highlight(h.body, terms)
        out.append({
            "id": f"{h.conversation_id}:{seq}" if seq is not None else str(h.message_id),
            "message_id": h.message_id, "seq": seq, "conversation": h.conversation_id, **conv,
            "author": {"kind": h.sender_kind, "id": sender, "name": name},
            "ts": h.created_at, "private": bool(row.private if row else False) or bool(meta.get("private", False)),
            "snippet": "".join(p["text"] for p in parts), "highlights": parts,
        })
        if len(out) == limit:
            break
    return {"data": {"meta": {"q": q, "count": len(out), "scope": "all" if ctx.agent is None else "agent"},
                     "payload": out}}


def _int_param(v: str | None, name: str) -> int | None:
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise HTTPException(422, f"query {name}: expected an integer") from None


async def h_post_message(req: Request, ctx: Ctx):
    body = await _json_body(req)
    text = _need(body, "content")
    if not text.strip():
        raise HTTPException(422, "field content: must not be empty")
    action = "note" if body.get("private") else "reply"
    return {"data": await ctx.st.desk.agent_action(ctx.agent, action, req.path_params["id"], text=text)}


async def h_assignments(req: Request, ctx: Ctx):
    body = await _json_body(req)
    if "assignee_id" in body:
        data = {"agent": _need(body, "assignee_id")}
    elif "team_id" in body:
        data = {"team": _need(body, "team_id")}
    else:
        raise HTTPException(422, "missing field assignee_id or team_id")
    return {"data": await ctx.st.desk.agent_action(ctx.agent, "transfer" if ctx.agent else "assign", req.path_params["id"], **data)}


async def h_toggle_status(req: Request, ctx: Ctx):
    body = await _json_body(req)
    status = _need(body, "status")
    actions = {"resolved": "resolve", "open": "reopen"}
    if status not in actions:
        raise HTTPException(422, 'field status: expected "resolved" or "open"')
    return {"data": await ctx.st.desk.agent_action(ctx.agent, actions[status], req.path_params["id"])}


async def h_accept(req: Request, ctx: Ctx):
    if ctx.agent is None:
        raise HTTPException(403, "only an agent can accept a conversation")
    return {"data": await ctx.st.desk.agent_action(ctx.agent, "accept", req.path_params["id"])}


async def h_labels_of(req: Request, ctx: Ctx):
    body = await _json_body(req)
    labels = _need(body, "labels", list)
    if not all(isinstance(x, str) and x for x in labels):
        raise HTTPException(422, "field labels: expected a list of non-empty strings")
    return {"data": await ctx.st.desk.agent_action(ctx.agent, "labels", req.path_params["id"], labels=labels)}


async def h_agents(req: Request, ctx: Ctx):
    items = await ctx.st.desk.agents()
    return {"data": {"meta": {"count": len(items)}, "payload": items}}


async def h_agent_status(req: Request, ctx: Ctx):
    body = await _json_body(req)
    status = _need(body, "status")
    if status not in ("online", "away", "offline"):
        raise HTTPException(422, 'field status: expected "online", "away" or "offline"')
    aid = req.path_params["id"]
    if ctx.agent is not None and ctx.agent != aid:
        raise HTTPException(403, "an agent sets only its own status")
    return {"data": await ctx.st.desk.agent_action(aid, "status", None, status=status)}


async def h_profile(req: Request, ctx: Ctx):
    agent = await ctx.st.desk.agent(ctx.agent) if ctx.agent else None
    return {"data": {"role": ctx.who.role, "name": ctx.who.name, "agent": agent, "ws_url": _ws_base(req, ctx.st)}}


async def h_profile_language(req: Request, ctx: Ctx):
    if not ctx.agent:
        raise HTTPException(403, "only an agent has a console language")
    lang = (await _json_body(req)).get("language")
    return {"data": await ctx.st.desk.agent_action(ctx.agent, "language", language=lang)}


async def h_contacts(req: Request, ctx: Ctx):
    items = await ctx.st.desk.contacts(q=req.query_params.get("q"))
    return {"data": {"meta": {"count": len(items)}, "payload": items}}


async def h_contact(req: Request, ctx: Ctx):
    return {"data": await ctx.st.desk.contact(req.path_params["id"])}


async def h_contact_conversations(req: Request, ctx: Ctx):
    items = await ctx.st.desk.conversations(viewer=ctx.agent, filters={"customer": req.path_params["id"]})
    items = await ctx.st.visibility.filter(ctx.agent, items)
    return {"data": {"meta": {"count": len(items)}, "payload": items}}


async def h_tickets(req: Request, ctx: Ctx):
    f = {k: req.query_params[k] for k in ("status", "priority", "assignee") if req.query_params.get(k)}
    items = await ctx.st.desk.tickets(filters=f)
    return {"data": {"meta": {"count": len(items)}, "payload": items}}


async def h_ticket(req: Request, ctx: Ctx):
    return {"data": await ctx.st.desk.ticket(req.path_params["id"])}


async def h_canned(req: Request, ctx: Ctx):
    items = await ctx.st.desk.canned_responses()
    return {"data": {"meta": {"count": len(items)}, "payload": items}}


async def h_labels(req: Request, ctx: Ctx):
    items = await ctx.st.desk.labels()
    return {"data": {"meta": {"count": len(items)}, "payload": items}}


async def h_webhooks(req: Request, ctx: Ctx):
    hooks = ctx.st.desk.webhooks
    # kefu.desk.Desk keeps its webhook Dispatcher in an attribute of the same name, which
    # hides the DeskQueries.webhooks() method; read the dispatcher's endpoints then.
    items = await hooks() if callable(hooks) else [ep.view() for ep in hooks.endpoints]
    return {"data": {"meta": {"count": len(items)}, "payload": items}}


async def h_add_webhook(req: Request, ctx: Ctx):
    body = await _json_body(req)
    url = _need(body, "url")
    why = webhook_url_problem(url)
    if why:
        raise HTTPException(422, f"field url: {why}")
    events = body.get("subscriptions", body.get("events", []))
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise HTTPException(422, "field subscriptions: expected a list of event names")
    return {"data": await ctx.st.desk.add_webhook(url, events)}


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target, or None. Checked before anything is stored."""
    from urllib.parse import urlsplit

    if len(url) > 2048:
        return "longer than 2048 characters"
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in url):
        return "expected an http:// or https:// URL of printable ASCII (no spaces; punycode for IDN hosts)"
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        return f"not a URL: {e}"
    if u.scheme not in ("http", "https") or not u.hostname:
        return "expected an http:// or https:// URL with a host"
    if u.username or u.password:
        return "credentials in the URL are not accepted; the payload is signed with the webhook's secret"
    return None


async def h_delete_webhook(req: Request, ctx: Ctx):
    await ctx.st.desk.delete_webhook(req.path_params["id"])
    return None


async def h_widget_config(req: Request, ctx: Ctx):
    token = req.query_params.get("website_token", "")
    site = ctx.st.ids.site(token)
    if site is None:
        raise HTTPException(404, "unknown website_token")
    w = ctx.st.cfg.widget
    return {"data": {"site": site.name, "title": w.title, "greeting": w.greeting, "color": w.color,
                     "ws_url": _ws_base(req, ctx.st), "chat_path": ctx.st.cfg.listeners.ws.chat_path,
                     "thread": w.thread}}


def _ws_base(req: Request, st: BridgeState) -> str:
    configured = st.cfg.listeners.http.public_ws_url
    if configured:
        return configured.rstrip("/")
    if not st.ws_url:
        return ""
    port = st.ws_url.rsplit(":", 1)[1]
    scheme = "wss" if st.ws_url.startswith("wss") else "ws"
    host = req.url.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


CONV_META = _obj(["mine_count", "unassigned_count", "all_count"], mine_count=I, unassigned_count=I, all_count=I)
CONV_QUERY = (("status", "bot, queued, assigned, resolved, closed, or open (= bot+queued+assigned)"),
              ("assignee", "me, none or an agent id"), ("team", "team id"), ("label", "label"),
              ("customer", "customer id"), ("channel", "web, mqtt, ..."), ("q", "text search"))

ROUTES: list[ApiRoute] = [
    ApiRoute("GET", "/profile", h_profile, "Who the token belongs to", "profile", "token", single("Profile")),
    ApiRoute("PUT", "/profile/language", h_profile_language, "Set the signed-in agent's console language (kept)",
             "profile", "token", single("Agent"), body=_obj(["language"], language={"enum": ["en", "zh-CN", ""]})),
    ApiRoute("GET", "/conversations", h_conversations, "List conversations, filtered; meta counts Mine/Unassigned/All",
             "conversations", "token", listing("Conversation", CONV_META), query=CONV_QUERY),
    ApiRoute("GET", "/conversations/{id}", h_conversation, "One conversation", "conversations", "token", single("Conversation")),
    ApiRoute("GET", "/conversations/{id}/messages", h_messages, "A page of messages, oldest first (private notes included)",
             "messages", "token", listing("Message", _obj(["more"], more=B)),
             query=(("before", "seq: messages before this one"), ("limit", "page size, at most 200"))),
    ApiRoute("POST", "/conversations/{id}/messages", h_post_message, "Reply, or add a private note (private: true)",
             "messages", "token", single("Message"), body=_obj(["content"], content=S, private=B)),
    ApiRoute("POST", "/conversations/{id}/assignments", h_assignments, "Assign or transfer to an agent or a team",
             "conversations", "token", single("Conversation"), body=_obj([], assignee_id=S, team_id=S)),
    ApiRoute("POST", "/conversations/{id}/toggle_status", h_toggle_status, "Resolve (resolved) or reopen (open)",
             "conversations", "token", single("Conversation"), body=_obj(["status"], status={"enum": ["resolved", "open"]})),
    ApiRoute("POST", "/conversations/{id}/accept", h_accept, "Accept an offered conversation (agents)",
             "conversations", "token", single("Conversation")),
    ApiRoute("POST", "/conversations/{id}/labels", h_labels_of, "Set the conversation's labels",
             "conversations", "token", single("Conversation"), body=_obj(["labels"], labels=ARR_S)),
    ApiRoute("GET", "/agents", h_agents, "Agents with status, teams and capacity", "agents", "token", listing("Agent")),
    ApiRoute("PUT", "/agents/{id}/status", h_agent_status, "Set an agent's status (an agent: only its own)", "agents",
             "token", single("Agent"), body=_obj(["status"], status={"enum": ["online", "away", "offline"]})),
    ApiRoute("GET", "/contacts", h_contacts, "Contacts (customers and devices)", "contacts", "token", listing("Contact"),
             query=(("q", "text search"),)),
    ApiRoute("GET", "/contacts/{id}", h_contact, "One contact with custom attributes and CRM data", "contacts", "token", single("Contact")),
    ApiRoute("GET", "/contacts/{id}/conversations", h_contact_conversations, "A contact's conversations, newest first",
             "contacts", "token", listing("Conversation")),
    ApiRoute("GET", "/tickets", h_tickets, "Tickets", "tickets", "token", listing("Ticket"),
             query=(("status", "ticket status"), ("priority", "priority"), ("assignee", "agent id"))),
    ApiRoute("GET", "/tickets/{id}", h_ticket, "One ticket", "tickets", "token", single("Ticket")),
    ApiRoute("GET", "/canned_responses", h_canned, "Canned responses", "canned responses", "token", listing("CannedResponse")),
    ApiRoute("GET", "/labels", h_labels, "Labels", "labels", "token", listing("Label")),
    ApiRoute("GET", "/webhooks", h_webhooks, "Webhooks (operators)", "webhooks", "operator", listing("Webhook")),
    ApiRoute("POST", "/webhooks", h_add_webhook, "Add a webhook (operators)", "webhooks", "operator", single("Webhook"),
             status=201, body=_obj(["url"], url=S, subscriptions=ARR_S)),
    ApiRoute("DELETE", "/webhooks/{id}", h_delete_webhook, "Remove a webhook (operators)", "webhooks", "operator",
             {}, status=204),
    ApiRoute("GET", "/search", h_search,
             "Search transcripts (Chinese and English), newest first; agents see their own, their teams' and "
             "unassigned conversations", "search", "token",
             listing("SearchHit", _obj(["q", "count", "scope"], q=S, count=I, scope={"enum": ["all", "agent"]})),
             query=(("q", f"words that must all occur, case-insensitive; one of {SEARCH_MIN_CHARS} or more characters"),
                    ("limit", f"most matches, 1 to {SEARCH_MAX_LIMIT} (default 20)"))),
    ApiRoute("GET", "/widget/config", h_widget_config, "What the widget needs to connect (public)", "widget", "site",
             single("WidgetConfig"), query=(("website_token", "the site's public token"),)),
]


def openapi_document() -> dict:
    paths: dict[str, dict] = {}
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "tags": [r.tag],
            "operationId": f"{r.method.lower()}_{r.path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "responses": {
                str(r.status): {"description": "OK"} if not r.response else
                {"description": "OK", "content": {"application/json": {"schema": r.response}}},
                "default": {"description": "error", "content": {"application/json": {"schema": ref("Error")}}},
            },
        }
        if r.auth in ("token", "operator"):
            op["security"] = [{"api_access_token": []}, {"bearer": []}]
        else:
            op["security"] = []
        params = [{"name": p, "in": "path", "required": True, "schema": S} for p in _path_params(r.path)]
        params += [{"name": n, "in": "query", "required": r.auth == "site", "description": d, "schema": S} for n, d in r.query]
        if params:
            op["parameters"] = params
        if r.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": r.body}}}
        paths.setdefault("/api/v1" + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "kefu API", "version": __version__,
                 "description": "Conversations, messages, transcript search, agents, contacts, tickets, canned responses, "
                                "labels, webhooks."},
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "api_access_token": {"type": "apiKey", "in": "header", "name": "api_access_token"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


def _token_of(req: Request) -> str | None:
    tok = req.headers.get("api_access_token")
    if tok:
        return tok
    auth = req.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


_http_errors = edge.RateLimitedLog(log, per_minute=60)


def _endpoint(r: ApiRoute, st: BridgeState):
    async def endpoint(req: Request) -> Response:
        who = None
        if r.auth in ("token", "operator"):
            who = st.ids.token(_token_of(req))
            if who is None:
                return _error(401, "unauthorized", "missing or unknown API token (api_access_token header or Bearer)")
            if r.auth == "operator" and who.role != "operator":
                return _error(403, "forbidden", "an operator token is needed")
        try:
            result = await r.handler(req, Ctx(st, who))
        except HTTPException as e:
            return _error(e.status_code, {400: "bad_request", 403: "forbidden", 404: "not_found", 413: "too_large",
                                          422: "invalid"}.get(e.status_code, "error"), e.detail)
        except DeskError as e:
            return _error(e.status, e.code, str(e) or e.code)
        except ApiError as e:
            return _error(e.status, e.code, e.message)
        except Exception as e:  # noqa: BLE001 - the request's boundary: a 500 with a logged reason
            _http_errors(logging.ERROR, "%s %s: internal error: %s: %s", req.method, req.url.path,
                         type(e).__name__, str(e)[:200], exc_info=e)
            return _error(500, "internal", "internal error; it is logged on the server")
        if r.status == 204:
            return Response(status_code=204)
        # The widget's endpoints are read from the shops' own origins: public, no credentials.
        headers = {"Access-Control-Allow-Origin": "*"} if r.auth == "site" else None
        return JSONResponse(result, status_code=r.status, headers=headers)

    endpoint.__name__ = r.handler.__name__
    return endpoint


def _page(name: str) -> str:
    return WEB.joinpath(name).read_text(encoding="utf-8")


def favicon_route() -> Route:
    """GET /favicon.ico: kefu's icon (kefu/web/favicon.ico), which browsers ask every page's server for."""
    icon = resources.files("kefu").joinpath("web", "favicon.ico").read_bytes()

    async def favicon(req: Request) -> Response:
        return Response(icon, media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"})

    return Route("/favicon.ico", favicon)


def build_app(st: BridgeState) -> Starlette:
    cfg = st.cfg

    async def healthz(req: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__})

    async def readyz(req: Request) -> Response:
        checks = {name: bool(fn()) for name, fn in st.ready_checks.items()}
        try:
            with trio.fail_after(2):
                h = await st.desk.health()
            checks["desk"] = bool(h.get("ok"))
        except (trio.TooSlowError, DeskError) as e:
            checks["desk"] = False
            log.warning("readyz: desk not ready: %s", e)
        body: dict = {"checks": checks}
        if st.store is not None:  # not ready while writes cannot be committed (QoS 1/2 not acknowledged)
            h = st.store.health()
            checks["storage"] = h.ready
            body["storage"] = {"backend": h.backend, "ready": h.ready, "reason": h.reason, "since": h.since,
                               "pending": h.pending, "buffer_limit": h.buffer_limit}
        for name, fn in st.ready_details.items():  # e.g. attach mode: the external broker's address and state
            body[name] = fn()
        ok = all(checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", **body}, status_code=200 if ok else 503)

    async def openapi(req: Request) -> Response:
        return JSONResponse(openapi_document())

    async def index(req: Request) -> Response:
        return HTMLResponse(_page("index.html"))

    async def demo(req: Request) -> Response:
        if not cfg.widget.demo_site:
            return _error(404, "not_found", "the demo page is off (widget.demo_site = false)")
        return HTMLResponse(_page("demo.html"))

    async def console(req: Request) -> Response:
        return HTMLResponse(_page("console.html"))

    async def widget_js(req: Request) -> Response:
        return Response(_page("widget.js"), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"})

    async def messages(req: Request) -> Response:
        return JSONResponse(i18n.document(req.query_params.get("lang")),
                            headers={"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*"})

    async def not_found(req: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, "not_found" if exc.status_code == 404 else "error", str(exc.detail))

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/", index),
        Route("/demo", demo),
        Route("/console", console),
        Route("/widget.js", widget_js),
        Route("/i18n", messages),
        Route("/api/v1/openapi.json", openapi),
        favicon_route(),
    ]
    for r in ROUTES:
        routes.append(Route("/api/v1" + r.path, _endpoint(r, st), methods=[r.method]))
    routes.extend(st.extra_routes)
    routes.append(Mount("/static", StaticFiles(directory=str(WEB)), name="static"))
    from starlette.middleware import Middleware

    return Starlette(routes=routes, exception_handlers={HTTPException: not_found},
                     middleware=[Middleware(SecurityHeaders)])


# Pages are served with a Content-Security-Policy that allows only kefu's own scripts
# (no inline script), WebSocket connections to the listeners (another port: ws:/wss:), and
# no framing; every answer says nosniff. The widget script itself is loaded by other sites'
# pages and is not framed by kefu, so only its nosniff applies.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'")
_ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
_PAGES = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    """ASGI middleware adding the headers above (HTML answers get CSP and X-Frame-Options)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                headers += _ALWAYS + (_PAGES if html else [])
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


@dataclass
class HttpListener:
    url: str


def hypercorn_config(lc, errorlog: str):
    """Hypercorn settings serving the ``listeners.http`` section ``lc``; its errors go to logger ``errorlog``.

    Shared with ``kefu.ops_web.serve_alone``, which serves the same listener when the bridge does not."""
    from hypercorn.config import Config as HyperConfig

    hc = HyperConfig()
    host = lc.host if ":" not in lc.host else f"[{lc.host}]"
    hc.bind = [f"{host}:{lc.port}"]
    if lc.certfile and lc.keyfile:
        hc.certfile, hc.keyfile = lc.certfile, lc.keyfile
    hc.accesslog = None
    hc.errorlog = logging.getLogger(errorlog)
    hc.graceful_timeout = 1.0
    return hc


async def serve_forever(app, hc, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` with Hypercorn settings ``hc`` until cancelled; started with the list of bound URLs."""
    from hypercorn.trio import serve

    await serve(app, hc, shutdown_trigger=trio.sleep_forever, task_status=task_status)


def local_url(bound: str) -> str:
    """A bound URL a client on this host can open: a wildcard address becomes the loopback one."""
    return bound.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")


async def run(st: BridgeState, *, task_status: trio.TaskStatus[HttpListener] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``listeners.http`` until cancelled; started with the bound base URL."""
    lc = st.cfg.listeners.http
    hc = hypercorn_config(lc, "kefu.bridge.http.server")
    app = build_app(st)

    from kefu.broker.server import ListenError, _why

    started = False
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve_forever, app, hc)
            started = True
            task_status.started(HttpListener(local_url(binds[0])))
    except (OSError, BaseExceptionGroup) as e:
        err = None if started else _os_error_in(e)
        if err is None:
            raise
        # A busy port: one clear line naming the key to change (like the broker's listeners).
        raise ListenError("listeners.http", lc.host or "*", lc.port, _why(err)) from None


def _os_error_in(e: BaseException) -> OSError | None:
    """``e`` or the first OSError inside (nested) exception groups (Hypercorn nests its nurseries)."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            found = _os_error_in(sub)
            if found is not None:
                return found
    return None
