"""kefu's typed configuration.

Each section is a dataclass; every field carries its meaning in ``metadata["help"]``
and, where it has one, a check (``metadata["check"]``: a function returning an error
message or ``None``). ``config/load.py`` turns TOML into these objects and names the
key path of anything wrong. ``config/kefu.example.toml`` documents every key with its
default; ``tests/test_config.py`` keeps the two in step.

Subsystems add their own section here (a dataclass plus a field on ``Config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


def opt(default, help: str, check: Callable[[object], str | None] | None = None, **kw):
    """A config field with its documentation and an optional check."""
    md = {"help": help}
    if check is not None:
        md["check"] = check
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=md, **kw)
    return field(default=default, metadata=md, **kw)


def port(v) -> str | None:
    if not (0 <= v <= 65535):
        return "expected an integer 0-65535 (0 picks a free port)"
    return None


port.expect = "an integer 0-65535"  # type: ignore[attr-defined]


def positive(v) -> str | None:
    return None if v > 0 else "expected a number greater than 0"


def non_negative(v) -> str | None:
    return None if v >= 0 else "expected a number of 0 or more"


def one_of(*choices: str):
    def check(v) -> str | None:
        if v not in choices:
            return "expected one of " + ", ".join(f'"{c}"' for c in choices)
        return None

    return check


def qos(v) -> str | None:
    return None if v in (0, 1, 2) else "expected 0, 1 or 2"


@dataclass
class TcpListener:
    enabled: bool = opt(True, "Serve MQTT over plain TCP.")
    host: str = opt("0.0.0.0", "Address to bind; 0.0.0.0 means every IPv4 interface, :: every IPv6 one.")
    port: int = opt(1883, "TCP port for MQTT; 0 picks a free port (printed at start).", port)


@dataclass
class TlsListener:
    enabled: bool = opt(False, "Serve MQTT over TLS. Needs certfile and keyfile.")
    host: str = opt("0.0.0.0", "Address to bind.")
    port: int = opt(8883, "TLS port for MQTT.", port)
    certfile: str = opt("", "PEM certificate chain presented to clients.")
    keyfile: str = opt("", "PEM private key for certfile.")
    cafile: str = opt("", "PEM CA bundle to verify client certificates; empty disables client certificates.")
    require_client_cert: bool = opt(False, "Reject clients without a certificate signed by cafile.")


@dataclass
class WebSocketListener:
    enabled: bool = opt(False, "Serve MQTT over WebSocket (/mqtt) and the browser chat protocol (/chat).")
    host: str = opt("0.0.0.0", "Address to bind.")
    port: int = opt(8083, "WebSocket port.", port)
    certfile: str = opt("", "PEM certificate chain; with keyfile set the listener serves wss:// instead of ws://.")
    keyfile: str = opt("", "PEM private key for certfile.")
    allowed_origins: list = opt(
        [],
        "Browser origins (scheme://host[:port]) allowed to open /chat and /mqtt; empty allows any. "
        "Requests without an Origin header (devices, tools) are not browsers and are always allowed.",
    )
    mqtt_path: str = opt("/mqtt", "Path serving MQTT over WebSocket (subprotocols mqtt, mqttv3.1).")
    chat_path: str = opt("/chat", "Path serving the browser chat protocol (docs/chat-protocol.md).")


@dataclass
class HttpListener:
    enabled: bool = opt(False, "Serve the HTTP API, widget, agent console and dashboard.")
    host: str = opt("0.0.0.0", "Address to bind.")
    port: int = opt(18083, "HTTP port.", port)
    certfile: str = opt("", "PEM certificate chain; with keyfile set the listener serves https://.")
    keyfile: str = opt("", "PEM private key for certfile.")
    public_url: str = opt(
        "",
        "Base URL browsers use to reach this listener (behind a proxy, say); empty: derived from the request.",
    )
    public_ws_url: str = opt(
        "",
        "Base ws:// or wss:// URL browsers use to reach listeners.ws; empty: same host as the page, port listeners.ws.port.",
    )


@dataclass
class Listeners:
    mqtt: TcpListener = field(default_factory=TcpListener)
    mqtts: TlsListener = field(default_factory=TlsListener)
    ws: WebSocketListener = field(default_factory=WebSocketListener)
    http: HttpListener = field(default_factory=HttpListener)


@dataclass
class User:
    username: str = opt("", "Login name.")
    password_hash: str = opt(
        "",
        "Password hash made by `kefu passwd` (scrypt). Plain passwords are never stored.",
    )


@dataclass
class AclRule:
    action: str = opt("all", "What the rule covers.", one_of("publish", "subscribe", "all"))
    topic: str = opt("#", "Topic filter; %c is replaced by the client id, %u by the username.")
    permission: str = opt("allow", "Outcome when the rule matches.", one_of("allow", "deny"))
    username: str = opt("", "Only for this user (empty: any user).")
    clientid: str = opt("", "Only for this client id (empty: any client).")


@dataclass
class Auth:
    allow_anonymous: bool = opt(True, "Accept clients that send no username.")
    users: list = opt([], "Users allowed to connect: [[auth.users]] tables with username and password_hash.")
    acl: list = opt(
        [],
        "Ordered [[auth.acl]] rules; the first match decides. With no rules everything is allowed.",
    )
    acl_default: str = opt("allow", "Outcome when no ACL rule matches.", one_of("allow", "deny"))


@dataclass
class Mqtt:
    max_packet_size: int = opt(
        1_048_576, "Largest packet accepted, in bytes; larger ones close the connection (0x95).", positive
    )
    max_keepalive: int = opt(
        0, "Upper bound on a client's keep alive in seconds (sent back as server keep alive); 0: none.", non_negative
    )
    receive_maximum: int = opt(
        32, "QoS 1/2 messages in flight to one client before further ones wait.", positive
    )
    max_offline_messages: int = opt(
        1000, "Messages kept for one persistent session while its client is away.", non_negative
    )
    max_queued_bytes: int = opt(
        16_777_216, "Bytes queued for one connected client before the drop policy applies.", positive
    )
    queue_drop_policy: str = opt(
        "drop_oldest", "What a full per-client queue drops (counted in $SYS).", one_of("drop_oldest", "drop_new")
    )
    max_session_expiry: int = opt(
        86400 * 7, "Upper bound on a session's expiry interval, in seconds.", non_negative
    )
    topic_alias_maximum: int = opt(64, "Topic aliases a 5.0 client may use towards kefu.", non_negative)
    maximum_qos: int = opt(2, "Highest QoS granted.", qos)
    retain_available: bool = opt(True, "Accept retained messages.")
    max_topic_levels: int = opt(32, "Deepest topic or filter accepted.", positive)
    sys_interval: int = opt(10, "Seconds between $SYS/ statistics updates; 0 disables them.", non_negative)


@dataclass
class Log:
    level: str = opt("info", "Log level.", one_of("debug", "info", "warning", "error"))


@dataclass
class Chat:
    max_frame_bytes: int = opt(
        16_384, "Largest /chat frame handled; a larger one is answered with an error frame and dropped.", positive
    )
    close_frame_bytes: int = opt(
        262_144, "A /chat frame larger than this closes the connection with 1009 (message too big).", positive
    )
    max_text_chars: int = opt(4000, "Longest chat message text, in characters.", positive)
    rate_per_second: float = opt(10.0, "Frames one /chat connection may send per second on average.", positive)
    rate_burst: int = opt(30, "Frames one /chat connection may send in a burst above the average rate.", positive)
    max_errors: int = opt(
        10, "Bad or rate-limited frames tolerated on one /chat connection before it is closed with 1008.", positive
    )
    idle_timeout: float = opt(
        300.0, "Seconds without any frame from a /chat client (pings count) before it is closed.", positive
    )
    auth_timeout: float = opt(10.0, "Seconds a new /chat connection has to authenticate.", positive)
    history_page: int = opt(50, "Most messages one history request returns.", positive)


@dataclass
class WidgetSite:
    name: str = opt("", "Site name shown to agents.")
    public_token: str = opt("", "Public token written into the site's <script> tag; identifies the site, not a secret.")
    identity_secret: str = opt(
        "",
        "HMAC-SHA256 key the site's backend signs visitor identifiers with (identity validation); "
        "empty: only anonymous visitors.",
    )
    require_identity: bool = opt(False, "Refuse visitors without a valid signed identity.")
    allowed_origins: list = opt([], "Origins the widget may run on; empty: any.")


@dataclass
class Widget:
    demo_site: bool = opt(
        True,
        "Serve /demo and accept the public token \"demo\" for anonymous visitors, so a fresh install can be tried. "
        "Turn off in production.",
    )
    title: str = opt("Support", "Title of the chat window.")
    greeting: str = opt("Hi! How can we help?", "First line a visitor sees before writing.")
    color: str = opt("#1f6feb", "Accent colour of the bubble and the visitor's messages (CSS colour).")
    sites: list = opt([], "Sites that embed the widget: [[widget.sites]] tables.")


@dataclass
class ApiToken:
    name: str = opt("", "Who or what holds this token (shown in logs).")
    token_sha256: str = opt("", "SHA-256 (hex) of the token, as printed by `kefu token new`; the token itself is never stored.")
    role: str = opt("agent", "agent: works conversations as `agent`; operator: full API access.", one_of("agent", "operator"))
    agent: str = opt("", "Agent id this token signs in as (role agent).")


@dataclass
class Api:
    tokens: list = opt(
        [],
        "Bearer tokens for the HTTP API and the agent console: [[api.tokens]] tables. With none, "
        "`kefu serve` makes a one-run demo agent token and prints it.",
    )


@dataclass
class Config:
    listeners: Listeners = field(default_factory=Listeners)
    mqtt: Mqtt = field(default_factory=Mqtt)
    auth: Auth = field(default_factory=Auth)
    log: Log = field(default_factory=Log)
    chat: Chat = field(default_factory=Chat)
    widget: Widget = field(default_factory=Widget)
    api: Api = field(default_factory=Api)


# Tables that are lists of typed entries: key path -> entry type.
LIST_ENTRIES: dict[str, type] = {"auth.users": User, "auth.acl": AclRule}
LIST_ENTRIES.update({"widget.sites": WidgetSite, "api.tokens": ApiToken})
