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
    enabled: bool = opt(True, "Serve MQTT over WebSocket (/mqtt) and the browser chat protocol (/chat).")
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
    enabled: bool = opt(True, "Serve the HTTP API, widget, agent console and dashboard.")
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
    max_concurrent_hashes: int = opt(4, "Password checks (scrypt, ~16 MiB and tens of ms each) running at once; "
                                        "further logins wait their turn.", positive)
    login_free_failures: int = opt(5, "Failed logins from one source address, or for one user name, before "
                                      "back-off starts.", non_negative)
    login_backoff_max: float = opt(60.0, "Longest back-off in seconds (1, 2, 4 ... after each further failure); "
                                         "during it a login needing a password check gets 0x9F. A password that "
                                         "already succeeded still gets in.", positive)
    acl: list = opt(
        [],
        "Ordered [[auth.acl]] rules; the first match decides. When no rule matches (or there are none), acl_default decides.",
    )
    acl_default: str = opt("allow", "Outcome when no ACL rule matches.", one_of("allow", "deny"))


@dataclass
class Mqtt:
    max_packet_size: int = opt(
        1_048_576, "Largest packet accepted, in bytes; larger ones close the connection (0x95).", positive
    )
    max_keepalive: int = opt(
        65535,
        "Upper bound on a client's keep alive in seconds, as Mosquitto's max_keepalive: a 5.0 client asking for "
        "more (or for 0) is told this value (Server Keep Alive in CONNACK) and held to it; a 3.1.1 client asking "
        "for more is refused (keep alive 0 is accepted). 0: no bound.",
        non_negative,
    )
    receive_maximum: int = opt(
        32,
        "QoS 1/2 messages in flight to one client before further ones wait (capped by the client's own "
        "receive maximum); also the receive maximum kefu announces: more unacknowledged QoS 2 from a client is 0x93.",
        positive,
    )
    max_offline_messages: int = opt(
        1000, "Messages kept for one persistent session while its client is away.", non_negative
    )
    max_queued_bytes: int = opt(
        16_777_216, "Bytes queued for one connected client before the drop policy applies.", positive
    )
    max_queued_stored_bytes: int = opt(
        16_777_216, "Payload bytes of QoS 1/2 messages queued for one session (offline, or waiting for a window "
        "slot) before the drop policy applies (counted as dropped); also the most one publisher may have waiting in "
        "other sessions' queues: a QoS 1/2 PUBLISH beyond it gets 0x97 quota exceeded (3.1.1: acknowledged and "
        "dropped). 0: no limit.", non_negative
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
    max_retained_messages: int = opt(10_000, "Retained messages held at most (all topics); a PUBLISH that would "
                                             "retain one more gets 0x97 (quota exceeded). 0: no limit.", non_negative)
    max_retained_bytes: int = opt(67_108_864, "Payload bytes of all retained messages together; beyond: 0x97. "
                                              "0: no limit.", non_negative)
    max_retained_payload: int = opt(65_536, "Largest payload kept as a retained message; larger: 0x97. 0: no limit.",
                                    non_negative)
    max_subscriptions_per_client: int = opt(100, "Subscriptions one session may hold; further filters get 0x97 in "
                                                 "the SUBACK (3.1.1: 0x80). 0: no limit.", non_negative)
    max_persistent_sessions: int = opt(10_000, "Sessions that outlive their connection (clean start off / session "
                                               "expiry > 0) held at most; a new one beyond gets CONNACK 0x97 "
                                               "(3.1.1: 3). Resuming an existing one is always allowed. 0: no limit.",
                                       non_negative)
    max_topic_levels: int = opt(32, "Deepest topic or filter accepted.", positive)
    sys_interval: int = opt(10, "Seconds between $SYS/ statistics updates; 0 disables them.", non_negative)
    connect_timeout: float = opt(
        10.0, "Seconds a new connection has to send CONNECT (and finish TLS) before it is closed.", positive
    )


@dataclass
class BrokerAttach:
    mode: str = opt(
        "embedded",
        "embedded: kefu is the MQTT broker (listeners.mqtt, listeners.mqtts, /mqtt). external: devices stay on a "
        "broker you run (Mosquitto, EMQX, HiveMQ...); kefu opens no MQTT listener for devices, connects to it as a "
        "client and takes the desk's topics through a shared subscription (docs/deploy.md).",
        one_of("embedded", "external"),
    )
    host: str = opt("", "external: the broker's host name or address (required in external mode).")
    port: int = opt(0, "external: the broker's port; 0: 1883, or 8883 with tls = true.", port)
    tls: bool = opt(False, "external: connect with TLS (server certificate verified against cafile or the system CAs).")
    cafile: str = opt("", "external: PEM CA bundle that signed the broker's certificate; empty: the system CAs.")
    certfile: str = opt("", "external: PEM client certificate, for brokers that require one (with keyfile).")
    keyfile: str = opt("", "external: PEM private key for certfile.")
    server_name: str = opt("", "external: name checked against the broker's certificate; empty: host.")
    username: str = opt("", "external: user name kefu logs in with (the broker must let it read and write kefu's topics).")
    password: str = opt("", "external: its password. Prefer password_file (or the KEFU_BROKER_PASSWORD variable) "
                            "to keep secrets out of the config file.")
    password_file: str = opt("", "external: file holding the password (first line); wins over password.")
    client_id: str = opt("", "external: this node's client id; empty: kefu-<host name>. Must be unique per node and "
                             "stable across restarts (it names the persistent session).")
    protocol: str = opt("auto", "external: MQTT version; auto tries 5.0 and falls back to 3.1.1 when the broker "
                                "refuses it.", one_of("auto", "5", "3.1.1"))
    share_group: str = opt("kefu", "external: shared-subscription group; every kefu node of one desk uses the same "
                                   "group so that each customer message goes to exactly one of them. Empty: a plain "
                                   "subscription, for one node only (Mosquitto keeps plain subscriptions across its "
                                   "restarts but not shared ones: docs/deploy.md).")
    keepalive: int = opt(30, "external: MQTT keep alive in seconds (PINGREQ when idle; the broker drops kefu after "
                             "1.5 times this without traffic).", positive)
    session_expiry: int = opt(3600, "external: seconds the broker keeps kefu's session (subscriptions and unacknowledged "
                                    "messages) while kefu is away; 3.1.1 brokers keep it until a clean start.",
                              non_negative)
    receive_maximum: int = opt(64, "external: messages the broker may have in flight to this node unacknowledged "
                                   "(acknowledged once the desk has committed each). MQTT 5.0 only; a 3.1.1 broker "
                                   "uses its own limit (Mosquitto: max_inflight_messages).", positive)
    reconnect_min: float = opt(0.5, "external: first wait in seconds before reconnecting; doubles each failure.", positive)
    reconnect_max: float = opt(30.0, "external: longest wait between reconnection attempts, in seconds.", positive)


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
    title: str = opt("", "Title of the chat window; empty: \"Support\" in the visitor's language (kefu/locales/).")
    greeting: str = opt(
        "", "First line a visitor sees before writing; empty: \"Hi! How can we help?\" in the visitor's language."
    )
    color: str = opt("#1f6feb", "Accent colour of the bubble and the visitor's messages (CSS colour).")
    sites: list = opt([], "Sites that embed the widget: [[widget.sites]] tables.")
    visitor_secret: str = opt(
        "",
        "Key that signs anonymous visitors' tokens; empty: a random key made on the first start and kept "
        "(sealed) in the desk's record in the SQL store, so visitors keep their identity across restarts.",
    )
    thread: str = opt("web", "Thread name widget conversations use (a device of the same customer may share it).")


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


# --- customer-service core (kefu/desk.py) ------------------------------------------


def priority_name(v) -> str | None:
    return None if v in ("urgent", "high", "normal", "low") else 'expected one of "urgent", "high", "normal", "low"'


def hhmm_range(v) -> str | None:
    import re

    if v == "" or re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-(([01]\d|2[0-3]):[0-5]\d|24:00)", v):
        return None
    return 'expected "HH:MM-HH:MM" (24-hour clock) or "" for closed'


@dataclass
class CannedResponse:
    code: str = opt("", "Short code agents type (e.g. \"greet\"); unique.")
    text: str = opt("", "The text sent; may use {contact.name|fallback} and answers-file variables.")


@dataclass
class Desk:
    enabled: bool = opt(True, "Run the customer-service desk (conversations, routing, bot, tickets).")
    topic_prefix: str = opt("kefu", "First topic level(s) of every conversation topic (see docs/desk.md).")
    service_users: list = opt([], "Broker usernames of trusted services (bridges, integrations): full access to kefu topics.")
    agent_username_prefix: str = opt("agent:", "Broker usernames \"<prefix><agent id>\" sign in as that [[agents]] entry.")
    accept_timeout: float = opt(
        30.0, "Seconds an agent has to accept an offered conversation before it goes back to the front of the queue; "
        "0: assignments are accepted at once.", non_negative
    )
    agent_keepalive: float = opt(
        90.0, "Seconds without any sign of life after which an agent is set offline and its conversations are "
        "requeued; 0: never.", non_negative
    )
    reopen_window: float = opt(
        86400.0, "Seconds after resolving during which a new customer message reopens the conversation; after it "
        "the conversation is closed and the next message starts a new one.", non_negative
    )
    handle_seconds: float = opt(300.0, "Average handle time assumed for the estimated queue wait.", positive)
    ticket_on_handoff: bool = opt(True, "Open a ticket (with SLA timers) when a conversation is handed to a human.")
    csat: bool = opt(True, "Ask the customer for a 1-5 rating when an agent resolves the conversation.")
    language: str = opt(
        "en", "Language of system messages and bot answers for a customer whose language is not known (an MQTT "
        "device that names none, the API): en or zh-CN. A widget visitor gets the widget's language; a contact's "
        "`language` attribute (set by a device's message, the API or the widget, or from a first message written "
        "in Chinese) wins over this default.",
        one_of("en", "zh-CN"),
    )
    csat_message: str = opt(
        "", "The rating request sent on resolve; empty: the message catalogue's, in the customer's language "
        "(\"How did we do? Reply with a number from 1 (poor) to 5 (great).\"). Set, it is sent to everyone as written."
    )
    queue_message: str = opt(
        "",
        "Sent when a conversation starts waiting for a human; {position} and {wait} are filled in. Empty: the "
        "catalogue's, in the customer's language (\"You are number {position} in the queue. Estimated wait: {wait}.\").",
    )
    max_text_chars: int = opt(4000, "Longest message text accepted from a customer or agent.", positive)
    labels: list = opt([], "Labels agents may put on conversations; empty: any label.")
    canned: list = opt([], "Canned responses: [[desk.canned]] tables with code and text.")
    state: str = opt(
        "memory", "Where the desk's live state (conversations, queues, agents, leases) lives: \"memory\" (one node) "
        "or \"redis\" (shared by every node on storage.redis_url under storage.redis_prefix; see docs/desk.md).",
        one_of("memory", "redis"),
    )


@dataclass
class RoutingRule:
    name: str = opt("", "Name shown in logs, events and `kefu desk rules`.")
    intent: list = opt([], "Intents this row matches (shell patterns like \"card_*\"); empty: any.")
    sentiment: list = opt([], "Sentiments matched: negative, neutral, positive; empty: any.")
    tier: list = opt([], "Customer tiers matched (the contact's tier, e.g. from the CRM); empty: any.")
    channel: list = opt([], "Channels matched: mqtt, chat, alarm; empty: any.")
    hours: str = opt("any", "Business hours: open, closed or any.", one_of("any", "open", "closed"))
    team: str = opt("", "Team ([[teams]] id) the conversation goes to.")
    priority: str = opt("normal", "Queue priority: urgent, high, normal, low.", priority_name)
    handler: str = opt("bot", "bot: the bot may answer; human: hand off at once.", one_of("bot", "human"))
    skills: list = opt([], "Skills an agent needs to take it.")
    min_tier: int = opt(0, "Lowest agent VIP tier that may take it.", non_negative)


@dataclass
class Routing:
    default_team: str = opt("general", "Team when no [[routing.rules]] row matches.")
    default_priority: str = opt("normal", "Priority when no row matches.", priority_name)
    default_handler: str = opt("bot", "Handler when no row matches.", one_of("bot", "human"))
    rules: list = opt([], "The decision table, first match wins: [[routing.rules]] rows.")


@dataclass
class TeamEntry:
    id: str = opt("", "Team id (used in rules, agents and topics).")
    name: str = opt("", "Display name.")


@dataclass
class AgentEntry:
    id: str = opt("", "Agent id; the agent signs in as broker user \"agent:<id>\" or with an API token.")
    name: str = opt("", "Display name shown to customers.")
    teams: list = opt([], "Teams ([[teams]] ids) whose queues this agent serves.")
    skills: list = opt([], "Skills (matched against a rule's skills).")
    capacity: int = opt(5, "Conversations this agent handles at once.", positive)
    tier: int = opt(0, "VIP tier: conversations needing a higher min_tier never reach this agent.", non_negative)
    supervisor: bool = opt(False, "Sees every team's conversations (lists, transcripts, the live console); "
                                  "other agents see their teams', their own and the unrouted pool.")
    language: str = opt(
        "", "Language of this agent's console: en or zh-CN; empty: the browser's. The agent's own choice in the "
        "console's switcher is kept and wins over this.", one_of("", "en", "zh-CN"),
    )


@dataclass
class Bot:
    enabled: bool = opt(True, "Let the bot answer FAQ intents before a human is involved.")
    answers_file: str = opt("", "TOML file with [variables] and [answers.<intent>] (see config/answers.toml); "
                            "empty: the bot answers nothing and hands every conversation off.")
    confidence: float = opt(0.6, "Lowest classifier confidence the bot answers on; below it hands off.", non_negative)
    negative_handoff: bool = opt(True, "Hand off when the message's sentiment is negative.")
    max_failed_answers: int = opt(2, "Failed answers (\"that didn't help\", the same question again) before handing off.", positive)
    human_phrases: list = opt(
        ["human", "agent", "real person", "representative", "operator", "someone real", "人工", "客服"],
        "Phrases that always reach a human (whole words, case-insensitive).",
    )
    failed_phrases: list = opt(
        ["didn't help", "did not help", "doesn't help", "not helpful", "that's wrong", "not what i asked", "没用"],
        "Phrases that mark the previous answer as failed.",
    )
    human_intents: list = opt([], "Intents that always hand off (e.g. a classifier's talk_to_human).")
    handoff_message: str = opt(
        "", "Sent when the bot hands off; empty: the catalogue's, in the customer's language "
        "(\"I'm passing you to a colleague who can help.\")."
    )
    retry_prefix: str = opt(
        "", "Put before an answer repeated after a failed one (when it has no retry text); empty: the catalogue's, "
        "in the customer's language (\"Let me try again: \")."
    )


@dataclass
class SlaFirstResponse:
    urgent: float = opt(60.0, "Seconds to the first human reply on urgent tickets; 0: no target.", non_negative)
    high: float = opt(300.0, "Seconds for high-priority tickets; 0: no target.", non_negative)
    normal: float = opt(900.0, "Seconds for normal tickets; 0: no target.", non_negative)
    low: float = opt(3600.0, "Seconds for low-priority tickets; 0: no target.", non_negative)


@dataclass
class SlaResolution:
    urgent: float = opt(3600.0, "Seconds to resolution of urgent tickets; 0: no target.", non_negative)
    high: float = opt(14400.0, "Seconds for high-priority tickets; 0: no target.", non_negative)
    normal: float = opt(86400.0, "Seconds for normal tickets; 0: no target.", non_negative)
    low: float = opt(259200.0, "Seconds for low-priority tickets; 0: no target.", non_negative)


@dataclass
class Sla:
    first_response: SlaFirstResponse = field(default_factory=SlaFirstResponse)
    resolution: SlaResolution = field(default_factory=SlaResolution)


@dataclass
class WebhookEndpoint:
    id: str = opt("", "Name of this endpoint (shown in logs and the API); default: its position.")
    url: str = opt("", "http:// or https:// URL that receives POSTed events.")
    secret: str = opt("", "HMAC-SHA256 key for the X-Kefu-Signature header; required.")
    events: list = opt([], "Events sent (conversation_created, ..., sla_breached); empty: all.")


@dataclass
class Webhooks:
    queue_size: int = opt(1000, "Events held per endpoint while it is slow or down; beyond, the oldest is dropped.", positive)
    max_attempts: int = opt(6, "Attempts per event (the first try plus retries).", positive)
    backoff: float = opt(1.0, "Seconds before the first retry; doubled each retry.", positive)
    backoff_max: float = opt(300.0, "Longest wait between retries.", positive)
    timeout: float = opt(10.0, "Seconds one delivery may take.", positive)
    endpoints: list = opt([], "Receivers: [[webhooks.endpoints]] tables.")


@dataclass
class AlarmSeverity:
    name: str = opt("", "Severity value as the device sends it (case-insensitive).")
    priority: str = opt("normal", "Ticket priority for it.", priority_name)


@dataclass
class Alarms:
    enabled: bool = opt(False, "Turn device alarm messages into tickets and conversations.")
    topic: str = opt("{p}/d/{device}/alarm", "Topic devices publish alarms on; {p} is the prefix, {device} the device id level.")
    device_field: str = opt("", "JSON field (dotted path) with the device id; empty: from the topic.")
    type_field: str = opt("type", "JSON field with the alarm type (deduplication is per device and type).")
    severity_field: str = opt("severity", "JSON field with the severity.")
    state_field: str = opt("state", "JSON field with the state; a recovered value closes the ticket.")
    message_field: str = opt("message", "JSON field with a human-readable text.")
    recovered_values: list = opt(["ok", "recovered", "cleared", "resolved"], "States that mean the alarm is over.")
    team: str = opt("general", "Team whose queue alarm conversations go to.")
    default_priority: str = opt("normal", "Priority of a severity not listed in [[alarms.severities]].", priority_name)
    severities: list = opt([], "Severity to priority: [[alarms.severities]] tables; empty: critical=urgent, "
                           "major=high, minor=normal, warning=low.")


@dataclass
class BusinessHours:
    enabled: bool = opt(False, "Use opening hours (routing rows with hours = open/closed, the offline message).")
    timezone: str = opt("UTC", "IANA time zone of the opening hours, e.g. \"Europe/Berlin\".")
    mon: str = opt("09:00-17:00", "Monday opening hours \"HH:MM-HH:MM\"; \"\" closed.", hhmm_range)
    tue: str = opt("09:00-17:00", "Tuesday.", hhmm_range)
    wed: str = opt("09:00-17:00", "Wednesday.", hhmm_range)
    thu: str = opt("09:00-17:00", "Thursday.", hhmm_range)
    fri: str = opt("09:00-17:00", "Friday.", hhmm_range)
    sat: str = opt("", "Saturday.", hhmm_range)
    sun: str = opt("", "Sunday.", hhmm_range)
    holidays: list = opt([], "Closed dates, \"YYYY-MM-DD\".")
    offline_message: str = opt(
        "",
        "Sent when a conversation is handed off outside opening hours; empty: the catalogue's, in the customer's "
        "language (\"We're closed right now. Leave your message and we'll get back to you when we open.\").",
    )


@dataclass
class Crm:
    provider: str = opt("", "CRM lookup plugin: \"http\" (built in) or an entry point in group kefu.crm; empty: none.")
    url: str = opt("", "http provider: URL template with {customer_id}, {email}, {phone}; GET, JSON object back.")
    headers: list = opt([], "http provider: extra request headers, \"Name: value\" strings.")
    timeout: float = opt(2.0, "Seconds a lookup may take before the sidebar shows an error.", positive)
    cache_ttl: float = opt(300.0, "Seconds a lookup result is reused.", non_negative)
    cache_size: int = opt(10000, "Lookup results kept.", positive)
    tier_field: str = opt("tier", "Field of the CRM answer copied to the contact's tier (used by routing).")


# --- intent engine (nlp/) -------------------------------------------------------------


def oos_threshold(v) -> str | None:
    return None if -1000 <= v <= 1000 else "expected -1 (use the model's own) or a threshold in the model's score units"


def exit_threshold(v) -> str | None:
    return None if v == -1 or 0 <= v <= 1 else "expected -1 (use the model's own) or a confidence 0-1"


@dataclass
class FewShotIntent:
    name: str = opt("", "Intent reported for messages like the examples.")
    examples: list = opt([], "Example phrases, as strings (3-10 varied ones work well).")


@dataclass
class Nlp:
    enabled: bool = opt(True, "Classify customer messages (intent, confidence, out-of-scope, sentiment).")
    model: str = opt(
        "", "Model folder (model.onnx or front.onnx + back.onnx, tokenizer.json, labels.json) made by "
        "`kefu nlp train`; empty: the "
        "shipped BANKING77 model.",
    )
    threads: int = opt(
        1, "onnxruntime intra-op threads per classification worker; 1 is fastest on a small busy server "
        "(workers x threads should not exceed the cores).", positive,
    )
    workers: int = opt(
        0, "Classification worker threads, each running one micro-batch at a time off the event loop "
        "(onnxruntime releases the GIL, so they use the other cores); 0: one per CPU core but one (the "
        "event loop's), divided by threads, at least 1.", non_negative,
    )
    batch_size: int = opt(32, "Most messages classified in one micro-batch.", positive)
    max_wait_ms: float = opt(2.0, "Longest a message waits for others to share its batch, in milliseconds.", non_negative)
    queue_size: int = opt(256, "Messages waiting for the classifier before senders are slowed down.", positive)
    oos_threshold: float = opt(
        -1.0, "Score below which a message is out of scope (goes to a human), in the units of the model's "
        "oos_score (labels.json): calibrated confidence 0-1, or energy; -1: the threshold chosen on held-out "
        "data when the model was trained.", oos_threshold,
    )
    early_exit: bool = opt(
        True, "Use the model's early exit when it has one (the shipped model does): a message the lower layers "
        "are already sure of is answered there, about twice as fast; false: every message goes through every "
        "layer. Not used while [[nlp.intents]] are set (they need the full model's sentence vectors) or "
        "oos_threshold is set (the exit was calibrated against the model's own).",
    )
    early_exit_threshold: float = opt(
        -1.0, "Exit confidence (0-1) at or above which a message stops early; higher is slower and closer to the "
        "full model; -1: the threshold chosen on held-out data when the model was trained.", exit_threshold,
    )
    neighbours: bool = opt(
        True, "Let the nearest training examples vote on messages that reach the model's final layer, when "
        "the model keeps them (the shipped one does; about half a point of accuracy); false: the final head "
        "alone, slightly faster.",
    )
    sentiment: str = opt("vader", "Sentiment analyser: vader (VADER for English, kefu's own lexicon for Chinese) or off.", one_of("vader", "off"))
    intents: list = opt(
        [], "Extra intents from example phrases: [[nlp.intents]] tables (name, examples); built at start-up "
        "on the model's encoder, no training needed.",
    )
    few_shot_head: str = opt(
        "logistic", "Classifier for [[nlp.intents]]: logistic (regression on the examples) or prototype "
        "(nearest mean).", one_of("logistic", "prototype"),
    )
    few_shot_min_similarity: float = opt(
        0.6, "A message matches an [[nlp.intents]] intent only if an example of it is at least this "
        "similar (cosine, -1..1).",
    )
    use_model_intents: bool = opt(
        True, "Also report the model's own intents; false: only [[nlp.intents]], anything else is out of scope.",
    )


@dataclass
class Storage:
    backend: str = opt(
        "sqlite", "Where kefu keeps its state: \"sqlite\" (one file, embedded) or \"postgres\".",
        one_of("sqlite", "postgres"),
    )
    path: str = opt("kefu.db", "SQLite database file (backend = \"sqlite\"); its directory is created if missing.")
    dsn: str = opt(
        "",
        "PostgreSQL connection string (backend = \"postgres\"), e.g. \"postgresql://kefu@127.0.0.1:5432/kefu\". "
        "Keep passwords in ~/.pgpass or PGPASSWORD rather than here.",
    )
    pg_schema: str = opt("public", "PostgreSQL schema for kefu's tables (created by `kefu db upgrade`).")
    pool_size: int = opt(4, "PostgreSQL connections for reads (writes use one more).", positive)
    timescaledb: bool = opt(
        True,
        "Use TimescaleDB where the PostgreSQL server offers it (hypertables, compression, a continuous aggregate for "
        "metric roll-ups); false: plain tables even where it is installed.",
    )
    auto_migrate: bool = opt(
        True, "Apply pending schema migrations at start; false: refuse to start until `kefu db upgrade` ran."
    )
    persist_mqtt: bool = opt(
        True,
        "Keep the broker's persistent sessions (subscriptions, expiry), their queued and inflight messages, and "
        "retained messages in this database, restored at start; false: in memory only (lost on restart).",
    )
    mqtt_log_seconds: float = opt(
        60.0,
        "QoS 1/2 and retained MQTT messages are written before they are acknowledged; once no persistent session "
        "holds them (delivered, or nobody subscribed) they are deleted after this many seconds.", non_negative,
    )
    store_unowed_messages: bool = opt(
        True,
        "Store every QoS 1/2 PUBLISH before acknowledging it; false: one that no persistent session is owed (only "
        "clean sessions or nobody subscribed, not retained) is acknowledged at once without storing (a crash could "
        "not redeliver it anyway; much faster QoS 1 between clean sessions).",
    )
    ack_after_commit: bool = opt(
        True,
        "Acknowledge QoS 1/2 PUBLISHes -- and customer messages and agent actions (PUBACK, /chat ack, HTTP 2xx) "
        "together with the desk decisions they caused -- only once they are committed (group commit keeps this "
        "fast); false: acknowledge at once, and a crash may lose acknowledged messages.",
    )
    sqlite_synchronous: str = opt(
        "full",
        "SQLite durability: \"full\" survives power loss; \"normal\" survives a kefu crash but may lose the last "
        "commits on power loss.",
        one_of("full", "normal"),
    )
    sqlite_busy_timeout_ms: int = opt(
        5000, "Milliseconds a write waits for a lock held by another process before the database counts as unavailable.",
        positive,
    )
    group_commit_max: int = opt(2000, "Most writes committed together in one transaction.", positive)
    max_pending: int = opt(
        10000,
        "Writes held in memory waiting for their commit; while the database is unavailable, writes beyond this are "
        "refused (storage unavailable) instead of queued.",
        positive,
    )
    commit_timeout: float = opt(
        10.0, "Seconds a write waits for its commit while the database is unavailable before it fails as storage "
        "unavailable (nothing acknowledged; the write stays queued).",
        positive,
    )
    retention_days: float = opt(0.0, "Delete transcripts and audit entries older than this many days; 0: keep forever.",
                                non_negative)
    metrics_retention_days: float = opt(30.0, "Delete metric samples older than this many days; 0: keep forever.",
                                        non_negative)
    search_index: bool = opt(
        True,
        "Index transcripts for search (SQLite FTS5 trigram / PostgreSQL pg_trgm). The index holds the words in clear "
        "even with encrypt_at_rest; set false where no plaintext may be stored (search is then off).",
    )
    encrypt_at_rest: bool = opt(
        False, "Encrypt chat message bodies and contact personal data with SM4 (needs a master key)."
    )
    master_key_file: str = opt(
        "",
        "File holding the SM4 master key (32 hex digits, mode 600), made by `kefu keys new-master FILE`. "
        "Never put the key itself in this config.",
    )
    master_key_env: str = opt(
        "KEFU_MASTER_KEY", "Environment variable holding the master key (hex); when set it wins over master_key_file."
    )
    redis_url: str = opt(
        "",
        "Redis for state shared between kefu nodes (agent presence, queues, assignment locks), e.g. "
        "\"redis://127.0.0.1:6379/0\"; empty: a single node.",
    )
    redis_prefix: str = opt("kefu:", "Prefix of every Redis key kefu uses (one kefu cluster per prefix).")


@dataclass
class Sm4:
    device_topics: list = opt(
        [],
        "MQTT topic filters (e.g. [\"kefu/c/#\"], the desk's conversation topics) on which SM4 devices send and "
        "receive SM4 envelopes "
        "(docs/sm4-envelope.md). A device is a client whose client id has a key from `kefu keys new-device ID`: "
        "kefu opens its envelopes on ingress (others read plaintext; bad ones are rejected: 5.0 PUBACK 0x99, "
        "3.1.1 dropped) and seals each delivery to it with its key. Other clients use plaintext. Needs the "
        "master key (storage.master_key_file or storage.master_key_env).",
    )


# --- metrics, dashboard, alerts (kefu/metrics.py, kefu/timeseries.py, kefu/alerts.py) ------


@dataclass
class Metrics:
    enabled: bool = opt(
        True, "Collect kefu's metrics: Prometheus /metrics and the dashboard on listeners.http (which must be "
        "enabled to serve them), stored history and alerts.",
    )
    sample_interval: float = opt(10.0, "Seconds between stored samples and between alert evaluations.", positive)
    history: bool = opt(
        True, "Store samples and 1-minute roll-ups through [storage] (needed by the dashboard's ranges and "
        "`kefu stats`); raw samples are kept storage.metrics_retention_days.",
    )
    rollup_retention_days: float = opt(
        400.0, "Delete 1-minute roll-ups older than this many days; 0: keep forever.", non_negative
    )
    access: str = opt(
        "open", "Who may read /metrics, /dashboard and /ops/*: open (anyone who reaches listeners.http) or "
        "operator (an operator API token as Bearer, or ?token= on the dashboard page).",
        one_of("open", "operator"),
    )


def alert_op(v) -> str | None:
    return None if v in (">", ">=", "<", "<=", "==", "!=") else 'expected one of ">", ">=", "<", "<=", "==", "!="'


@dataclass
class AlertRule:
    name: str = opt("", "Alert name, sent in the webhook and logged; default: metric op value.")
    metric: str = opt("", "Stored series it watches, e.g. \"queue_wait_seconds\" (docs/metrics.md lists them).")
    labels: dict = opt({}, "Only these label values, e.g. { team = \"vip\" }; empty: every label set, each on its own.")
    op: str = opt(">", "Comparison of the series' latest value with value.", alert_op)
    value: float = opt(0.0, "Threshold.")
    for_seconds: float = opt(60.0, "How long the condition must hold before the alert fires.", non_negative)
    webhook: str = opt("", "http:// or https:// URL that receives the alert (POSTed JSON, signed like desk webhooks).")
    secret: str = opt("", "HMAC-SHA256 key for the X-Kefu-Signature header; required.")
    repeat_seconds: float = opt(
        0.0, "While firing, send it again this often; 0: only when it fires and when it resolves.", non_negative
    )


@dataclass
class Config:
    listeners: Listeners = field(default_factory=Listeners)
    mqtt: Mqtt = field(default_factory=Mqtt)
    broker: BrokerAttach = field(default_factory=BrokerAttach)
    auth: Auth = field(default_factory=Auth)
    log: Log = field(default_factory=Log)
    chat: Chat = field(default_factory=Chat)
    widget: Widget = field(default_factory=Widget)
    api: Api = field(default_factory=Api)
    desk: Desk = field(default_factory=Desk)
    routing: Routing = field(default_factory=Routing)
    teams: list = opt([], "Teams: [[teams]] tables (id, name). Rules, agents and alarms name them.")
    agents: list = opt([], "Agents: [[agents]] tables (id, name, teams, skills, capacity, tier).")
    bot: Bot = field(default_factory=Bot)
    sla: Sla = field(default_factory=Sla)
    webhooks: Webhooks = field(default_factory=Webhooks)
    alarms: Alarms = field(default_factory=Alarms)
    business_hours: BusinessHours = field(default_factory=BusinessHours)
    crm: Crm = field(default_factory=Crm)
    nlp: Nlp = field(default_factory=Nlp)
    storage: Storage = field(default_factory=Storage)
    sm4: Sm4 = field(default_factory=Sm4)
    metrics: Metrics = field(default_factory=Metrics)
    alerts: list = opt([], "Threshold alerts on stored series: [[alerts]] tables (docs/metrics.md).")


# Tables that are lists of typed entries: key path -> entry type.
LIST_ENTRIES: dict[str, type] = {"auth.users": User, "auth.acl": AclRule}
LIST_ENTRIES.update({"widget.sites": WidgetSite, "api.tokens": ApiToken})
LIST_ENTRIES.update({
    "desk.canned": CannedResponse, "routing.rules": RoutingRule, "teams": TeamEntry, "agents": AgentEntry,
    "webhooks.endpoints": WebhookEndpoint, "alarms.severities": AlarmSeverity,
})
LIST_ENTRIES["nlp.intents"] = FewShotIntent
LIST_ENTRIES["alerts"] = AlertRule
