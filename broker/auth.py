"""Authentication (users with scrypt hashes, anonymous on/off) and the ACL.

Pure: no I/O, no clock. Built from the ``[auth]`` config section plus an optional
``HookRegistry`` (``kefu.broker.hooks``) through which the customer-service core
decides about conversation topics.

Passwords
---------
``hash_password`` stores ``scrypt$<log2 N>$<r>$<p>$<salt b64>$<key b64>`` (hashlib's
scrypt, 16 random salt bytes, 32-byte key); the parameters travel in the string so
they can be raised later without invalidating old hashes. ``verify_password``
compares in constant time and returns False for anything malformed.

scrypt at the default cost takes tens of milliseconds, so ``Authenticator.authenticate``
is meant to run in a worker thread (``trio.to_thread.run_sync``; it is thread safe).
A successful login is remembered as an HMAC of the password under a per-process
random key, so a reconnect storm of known clients costs a SHA-256 each instead of an
scrypt. A username that is not configured is checked against a dummy hash so a
wrong user and a wrong password take the same time. Failed logins close the source
address and the user name for an exponentially growing time (``LoginThrottle``,
``auth.login_free_failures``, ``auth.login_backoff_max``): a login that would need scrypt
then gets 0x9F at once. How many scrypt run at once is bounded by the caller
(``Router.auth_limiter``, ``auth.max_concurrent_hashes``).

Who may connect
---------------
Hooks first (``on_authenticate``; deny overrides). Then: no username -> accepted iff
``allow_anonymous``, else 0x87. A username -> if ``users`` is empty, accepted iff
``allow_anonymous`` (the name is then an unverified claim, which ACL rules keyed on
usernames will trust); if ``users`` is not empty, the user must exist and the
password verify, else 0x86 (3.1.1: return code 4 / 5 mapped by the codec).

ACL
---
Mosquitto's and EMQX's semantics: a subscription is granted when the client may read
*something* under its filter, and every message is checked at delivery, so ``#``
never receives a denied topic but receives every allowed one.

Rules are tried in order; the first that applies decides; none -> ``acl_default``.
A rule applies when its action is ``all`` or the action asked, its ``username`` /
``clientid`` qualifiers (if set) equal the client's, and its topic filter (after
``%c``/``%u`` substitution) matches the topic name:

* publish: the first publish/all rule matching the topic decides;
* read (``may_read``, at delivery): the first subscribe/all rule matching the topic;
* subscribe: granted when at least one topic the filter matches may be read. So with
  ``deny secret/#`` first and ``acl_default = "allow"``, ``#`` and ``+/x`` are granted
  (and never deliver ``secret/...``) while ``secret/#`` and ``secret`` are refused
  (0x80 / 0x87): a filter that can read nothing is still refused.

Shared subscriptions are judged on their inner filter. Filters follow the ``$`` rule,
so a rule ``#`` neither matches nor covers ``$SYS/...``.

Substitution is done per level and never widens access: if the client id / username
is empty, starts with ``$`` or contains ``/``, ``+``, ``#`` or NUL, an *allow* rule
using it does not apply, and a *deny* rule using it applies with that whole level
replaced by ``+``.

``on_authorize`` hooks run before the rules, like rules placed first (deny
overrides among hooks); a hook registered with ``topics=`` is asked only about
topics in its scope. Publish decisions from hooks are never cached (they may
change); read decisions, rules' and hooks' alike, are cached per client id until
``forget(client_id)`` (the client went away) or ``reset()`` (rules or hooks changed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .hooks import AuthenticateEvent, AuthorizeEvent, HookRegistry
from .topics import (
    filter_intersection,
    levels_match,
    parse_shared,
    validate_topic_filter,
)

log = logging.getLogger("kefu.broker.auth")

SUCCESS = 0x00
BAD_USER_NAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
CONNECTION_RATE_EXCEEDED = 0x9F  # 3.1.1: return code 3 (server unavailable)

PUBLISH = "publish"
SUBSCRIBE = "subscribe"
READ = "read"  # cache key for delivery checks (``may_read``)
_FRESH = "\x00"  # a topic level no rule can name (NUL is not allowed in filters)

# scrypt cost: N = 2**14, r = 8, p = 1 (about 16 MiB, tens of ms).
SCRYPT_LOG_N = 14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# Refuse stored parameters that would take unbounded memory or time to verify.
MAX_LOG_N = 20
MAX_R = 32
MAX_P = 16
MAX_SCRYPT_MEMORY = 256 << 20  # 128 * r * N bytes


# --------------------------------------------------------------------------- passwords


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii").rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)


def _scrypt(pw: bytes, salt: bytes, log_n: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << log_n
    return hashlib.scrypt(pw, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=128 * r * (n + p + 2) + (32 << 20))


def _to_bytes(pw: str | bytes) -> bytes:
    return pw.encode("utf-8") if isinstance(pw, str) else bytes(pw)


def hash_password(pw: str | bytes, *, log_n: int = SCRYPT_LOG_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A salted scrypt hash for ``[[auth.users]] password_hash``."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(_to_bytes(pw), salt, log_n, r, p, KEY_BYTES)
    return f"scrypt${log_n}${r}${p}${_b64(salt)}${_b64(key)}"


def parse_password_hash(h: str) -> tuple[int, int, int, bytes, bytes]:
    """``(log_n, r, p, salt, key)``; ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(h, str):
        raise ValueError("a password hash must be a string")
    parts = h.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError('expected "scrypt$<log2 N>$<r>$<p>$<salt>$<key>" as made by `kefu passwd`')
    try:
        log_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    except ValueError:
        raise ValueError("scrypt parameters must be integers") from None
    if not (1 <= log_n <= MAX_LOG_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise ValueError(f"scrypt parameters out of range (log2 N 1-{MAX_LOG_N}, r 1-{MAX_R}, p 1-{MAX_P})")
    if 128 * r * (1 << log_n) > MAX_SCRYPT_MEMORY:
        raise ValueError(f"scrypt parameters need more than {MAX_SCRYPT_MEMORY >> 20} MiB (128 * r * N)")
    try:
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError:
        raise ValueError("salt and key must be base64") from None
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("salt or key too short")
    return log_n, r, p, salt, key


def verify_password(pw: str | bytes, h: str) -> bool:
    """True when ``pw`` matches the hash; False for a wrong password or a malformed hash."""
    try:
        log_n, r, p, salt, key = parse_password_hash(h)
    except ValueError:
        return False
    got = _scrypt(_to_bytes(pw), salt, log_n, r, p, len(key))
    return hmac.compare_digest(got, key)


# --------------------------------------------------------------------------- ACL rules

_UNSAFE = frozenset("/+#\x00")


def _safe_value(v: str | None) -> bool:
    return bool(v) and not v.startswith("$") and not (_UNSAFE & set(v))  # type: ignore[union-attr]


@dataclass(frozen=True, slots=True)
class _Rule:
    index: int
    actions: frozenset[str]
    allow: bool
    username: str
    clientid: str
    levels: tuple[str, ...]  # topic template split on '/'
    templated: bool  # contains %c or %u
    topic: str  # the template as configured
    first: str | None  # the first level when it is a plain literal: a cheap pre-check

    def filter_for(self, client_id: str, username: str | None) -> str | None:
        """The rule's filter for this client, or None when the rule cannot apply."""
        if not self.templated:
            return self.topic
        c_ok = _safe_value(client_id)
        u_ok = _safe_value(username)
        out = []
        for level in self.levels:
            if "%c" in level or "%u" in level:
                if ("%c" in level and not c_ok) or ("%u" in level and not u_ok):
                    if self.allow:
                        return None
                    out.append("+")
                    continue
                level = level.replace("%c", client_id).replace("%u", username or "")
            out.append(level)
        return "/".join(out)


def _literal_first(topic: str) -> str | None:
    first = topic.split("/", 1)[0]
    if first in ("+", "#") or "%c" in first or "%u" in first:
        return None
    return first


def _field(entry: Any, name: str) -> Any:
    return entry.get(name, "") if isinstance(entry, dict) else getattr(entry, name, "")


def compile_rules(acl: Iterable[Any]) -> list[_Rule]:
    """Check and compile ``auth.acl`` entries; ``ValueError`` naming ``auth.acl[i]``."""
    rules = []
    for i, entry in enumerate(acl):
        where = f"auth.acl[{i}]"
        action = _field(entry, "action") or "all"
        permission = _field(entry, "permission") or "allow"
        topic = _field(entry, "topic")
        if action not in ("publish", "subscribe", "all"):
            raise ValueError(f'{where}.action: expected "publish", "subscribe" or "all", got {action!r}')
        if permission not in ("allow", "deny"):
            raise ValueError(f'{where}.permission: expected "allow" or "deny", got {permission!r}')
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"{where}.topic: expected a topic filter, got {topic!r}")
        if topic.startswith("$share/"):
            raise ValueError(f"{where}.topic: rules apply to the filter inside $share/<group>/; write that filter")
        probe = topic.replace("%c", "c").replace("%u", "u")
        try:
            validate_topic_filter(probe)
        except ValueError as e:
            raise ValueError(f"{where}.topic: {e}") from None
        rules.append(
            _Rule(
                index=i,
                actions=frozenset((PUBLISH, SUBSCRIBE)) if action == "all" else frozenset((action,)),
                allow=permission == "allow",
                username=_field(entry, "username") or "",
                clientid=_field(entry, "clientid") or "",
                levels=tuple(topic.split("/")),
                templated="%c" in topic or "%u" in topic,
                topic=topic,
                first=_literal_first(topic),
            )
        )
    return rules


def _witnesses(region: str, deepest: int):
    """Topic names (as level lists) standing for every topic ``region`` matches: its
    wildcards replaced by a level no rule names, ``#`` tried at each depth."""
    lv = [(_FRESH if x == "+" else x) for x in region.split("/")]
    if lv[-1] != "#":
        yield lv
        return
    base = lv[:-1]
    if base:
        yield base  # "a/#" matches "a"
    for extra in range(1, max(1, deepest + 1 - len(base)) + 1):
        yield base + [_FRESH] * extra


# --------------------------------------------------------------------------- the authenticator

_CACHE_PER_CLIENT = 1024
_CACHE_CLIENTS = 65536
_LOGIN_CACHE = 65536
_BACKOFF_KEYS = 65536  # sources and user names with recent failures kept at most


def _host(peer: str) -> str:
    """The source address of "host:port" / "[v6]:port" (failures are counted per host)."""
    host, sep, _port = peer.rpartition(":")
    return host if sep else peer


class LoginThrottle:
    """Exponential back-off per source address and per user name after failed logins.

    ``free`` failures are allowed; each one after that closes the key for 1, 2, 4, ...
    seconds up to ``max_delay``. A success clears the user's and the source's record.
    While a key is closed, a login that would need scrypt is refused at once (0x9F)
    without hashing -- but a client whose password matches a cached successful login
    still gets in, so hammering someone's user name does not lock them out.
    Thread safe; the clock is injectable for tests.
    """

    def __init__(self, free: int = 5, max_delay: float = 60.0, clock=time.monotonic) -> None:
        self.free = free
        self.max_delay = max_delay
        self.clock = clock
        self._state: dict[tuple[str, str], tuple[int, float]] = {}  # key -> (failures, closed until)
        self._lock = threading.Lock()

    def closed(self, *keys: tuple[str, str]) -> bool:
        now = self.clock()
        with self._lock:
            return any(self._state.get(k, (0, 0.0))[1] > now for k in keys)

    def failed(self, *keys: tuple[str, str]) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                n, _until = self._state.pop(k, (0, 0.0))
                n += 1
                until = now + min(self.max_delay, 2.0 ** (n - self.free - 1)) if n > self.free else 0.0
                if len(self._state) >= _BACKOFF_KEYS:
                    self._state.pop(next(iter(self._state)), None)
                self._state[k] = (n, until)

    def succeeded(self, *keys: tuple[str, str]) -> None:
        with self._lock:
            for k in keys:
                self._state.pop(k, None)


class Authenticator:
    """Decides CONNECTs and PUBLISH/SUBSCRIBE rights from ``[auth]`` config and hooks.

    ``auth_cfg`` is a ``kefu.config.model.Auth`` (or anything with the same
    attributes; users and acl entries may be objects or dicts). Raises
    ``ValueError`` naming the key path for a bad hash, duplicate user or bad rule.
    """

    def __init__(self, auth_cfg: Any, hooks: HookRegistry | None = None) -> None:
        self.allow_anonymous = bool(auth_cfg.allow_anonymous)
        default = getattr(auth_cfg, "acl_default", "allow")
        if default not in ("allow", "deny"):
            raise ValueError(f'auth.acl_default: expected "allow" or "deny", got {default!r}')
        self.acl_default = default == "allow"
        self.hooks = hooks if hooks is not None else HookRegistry()
        self._users: dict[str, str] = {}
        for i, u in enumerate(auth_cfg.users):
            name = _field(u, "username")
            h = _field(u, "password_hash")
            if not name:
                raise ValueError(f"auth.users[{i}].username: must not be empty")
            if name in self._users:
                raise ValueError(f"auth.users[{i}].username: {name!r} is listed twice")
            try:
                parse_password_hash(h)
            except ValueError as e:
                raise ValueError(f"auth.users[{i}].password_hash: {e}") from None
            self._users[name] = h
        self.usernames = frozenset(self._users)  # the configured (password-checked) users
        self.rules = compile_rules(auth_cfg.acl)
        self._dummy_hash: str | None = None
        self._login_key = os.urandom(32)
        self._logins: dict[str, tuple[str, bytes]] = {}
        self._lock = threading.Lock()
        self._acl_cache: dict[str, tuple[str | None, dict[tuple[str, str], bool]]] = {}
        self.throttle = LoginThrottle(int(getattr(auth_cfg, "login_free_failures", 5)),
                                      float(getattr(auth_cfg, "login_backoff_max", 60.0)))
        # What /metrics shows (kefu_auth_failures, kefu_auth_cache_hits); ints under the GIL.
        self.failures = {"bad_password": 0, "unknown_user": 0, "throttled": 0}
        self.cache_hits = 0
        # Nothing to decide: every authorize() is True without a lookup.
        self._open = not self.rules and self.acl_default
        # Every topic may be read by everyone: no check at delivery.
        self._read_open = self.acl_default and not any(
            SUBSCRIBE in r.actions and not r.allow for r in self.rules)

    # -- authentication

    def authenticate(
        self,
        client_id: str,
        username: str | None,
        password: bytes | str | None,
        *,
        protocol_level: int = 4,
        peer: str = "",
    ) -> int:
        """0 to accept, 0x86 (bad user name or password) or 0x87 (not authorised).

        May run scrypt (tens of ms): call it from a worker thread. Thread safe.
        """
        hooks = self.hooks
        if hooks.active("on_authenticate"):
            pw = None if password is None else _to_bytes(password)
            d = hooks.decide(
                "on_authenticate", AuthenticateEvent(client_id, username, pw, protocol_level, peer)
            )
            if d is not None:
                return SUCCESS if d.allow else d.reason_code
        if username is None:
            return SUCCESS if self.allow_anonymous else NOT_AUTHORIZED
        if not self._users:
            return SUCCESS if self.allow_anonymous else BAD_USER_NAME_OR_PASSWORD
        stored = self._users.get(username)
        if password is None:
            self.failures["bad_password"] += 1
            return BAD_USER_NAME_OR_PASSWORD
        pw = _to_bytes(password)
        keys = (("src", _host(peer)), ("user", username))
        if stored is not None:
            mac = hmac.new(self._login_key, pw, hashlib.sha256).digest()
            with self._lock:
                seen = self._logins.get(username)
            if seen is not None and seen[0] == stored and hmac.compare_digest(seen[1], mac):
                self.cache_hits += 1
                return SUCCESS
        if self.throttle.closed(*keys):
            # Too many failures from this source or for this user just now: no scrypt.
            self.failures["throttled"] += 1
            return CONNECTION_RATE_EXCEEDED
        if stored is None:
            # Spend the same time as for a known user, then refuse.
            verify_password(pw, self._dummy())
            self.failures["unknown_user"] += 1
            self.throttle.failed(*keys)
            return BAD_USER_NAME_OR_PASSWORD
        if not verify_password(pw, stored):
            self.failures["bad_password"] += 1
            self.throttle.failed(*keys)
            return BAD_USER_NAME_OR_PASSWORD
        self.throttle.succeeded(*keys)
        with self._lock:
            if len(self._logins) >= _LOGIN_CACHE:
                self._logins.pop(next(iter(self._logins)), None)
            self._logins[username] = (stored, mac)
        return SUCCESS

    def _dummy(self) -> str:
        if self._dummy_hash is None:
            self._dummy_hash = hash_password(os.urandom(16))
        return self._dummy_hash

    # -- authorisation

    def authorize(self, client_id: str, username: str | None, action: str, topic: str) -> bool:
        """May this client publish to ``topic`` / subscribe to the filter ``topic``?

        ``action`` is ``"publish"`` or ``"subscribe"``; ``topic`` must be a valid
        topic name / filter (a ``$share/g/f`` filter is judged on ``f``). A
        subscription is granted when the client may read *something* under the
        filter (``may_read`` on each message then decides what it receives).
        """
        if action != PUBLISH and action != SUBSCRIBE:
            raise ValueError(f'action must be "publish" or "subscribe", got {action!r}')
        group = None
        if action == SUBSCRIBE and topic.startswith("$share/"):
            group, topic = parse_shared(topic)
        hooks = self.hooks
        if hooks.active("on_authorize"):
            hs = hooks.authorizers(topic, action == SUBSCRIBE)
            if hs:
                d = hooks.decide("on_authorize", AuthorizeEvent(client_id, username, action, topic, group), hs)
                if d is not None:
                    return d.allow
        if self._open:
            return True
        return self._cached(client_id, username, action, topic)

    def hooked(self, topic: str, is_filter: bool = False) -> bool:
        """True when an ``on_authorize`` hook decides about ``topic`` (its answers may
        change, so the broker must not cache a publish decision for it)."""
        hooks = self.hooks
        return hooks.active("on_authorize") and bool(hooks.authorizers(topic, is_filter))

    @property
    def read_restricted(self) -> bool:
        """False when every client may read every topic (no check at delivery needed)."""
        return not self._read_open or self.hooks.active("on_authorize")

    def may_read(self, client_id: str, username: str | None, topic: str) -> bool:
        """May this client receive a message on the topic name ``topic``?

        Checked at delivery (the router caches the answer in its delivery plans);
        the first subscribe/all rule whose filter matches the topic decides, then
        ``acl_default``. ``on_authorize`` hooks are asked first with action
        ``"subscribe"`` and the topic name as the filter. Answers, hooks' included,
        are cached per client until ``forget`` (a disconnect) or ``reset``.
        """
        hooks = self.hooks
        if self._read_open and not hooks.active("on_authorize"):
            return True
        entry = self._acl_cache.get(client_id)
        if entry is not None and entry[0] == username:
            hit = entry[1].get((READ, topic))
            if hit is not None:
                return hit
        result = None
        hs = hooks.authorizers(topic, False)
        if hs:
            d = hooks.decide("on_authorize", AuthorizeEvent(client_id, username, SUBSCRIBE, topic, None), hs)
            if d is not None:
                result = d.allow
        if result is None:
            result = True if self._read_open else self._decide(client_id, username, READ, topic)
        self._remember(client_id, username, READ, topic, result)
        return result

    def reset(self) -> None:
        """Drop every cached decision (after the rules or the hooks changed)."""
        self._acl_cache.clear()

    def _cached(self, client_id: str, username: str | None, action: str, topic: str) -> bool:
        entry = self._acl_cache.get(client_id)
        if entry is not None and entry[0] == username:
            hit = entry[1].get((action, topic))
            if hit is not None:
                return hit
        result = self._decide(client_id, username, action, topic)
        self._remember(client_id, username, action, topic, result)
        return result

    def _remember(self, client_id: str, username: str | None, action: str, topic: str, result: bool) -> None:
        entry = self._acl_cache.get(client_id)
        if entry is None or entry[0] != username:
            if len(self._acl_cache) >= _CACHE_CLIENTS:
                self._acl_cache.pop(next(iter(self._acl_cache)), None)
            entry = (username, {})
            self._acl_cache[client_id] = entry
        decisions = entry[1]
        if len(decisions) >= _CACHE_PER_CLIENT:
            decisions.clear()
        decisions[(action, topic)] = result

    def _applicable(self, client_id: str, username: str | None, action: str, t0: str | None):
        """(rule, its filter for this client) for the rules that may apply to ``action``."""
        for rule in self.rules:
            if action not in rule.actions:
                continue
            # Different literal first levels: the rule cannot match or overlap.
            if t0 is not None and rule.first is not None and rule.first != t0:
                continue
            if rule.username and rule.username != username:
                continue
            if rule.clientid and rule.clientid != client_id:
                continue
            filt = rule.filter_for(client_id, username)
            if filt is None:
                continue
            yield rule, filt

    def _first_rule(self, client_id: str, username: str | None, action: str, topic: str):
        """The first rule that applies to a publish or read of the topic name ``topic``
        and its substituted filter, or None."""
        t_levels = topic.split("/")
        kind = PUBLISH if action == PUBLISH else SUBSCRIBE
        for rule, filt in self._applicable(client_id, username, kind, t_levels[0]):
            if levels_match(rule.levels if not rule.templated else filt.split("/"), t_levels):
                return rule, filt
        return None

    def _readable(self, client_id: str, username: str | None, filt: str) -> bool:
        """Can a subscription to ``filt`` read at least one topic?

        Exact, by witnesses: any readable topic under ``filt`` is read either through
        an allow rule A (then it lies in filt ∩ A) or through ``acl_default`` (then in
        filt). In such a region, a topic with a level no rule names at every ``+`` and
        ``#`` matches only rules that every other topic of its depth matches too, so
        trying that topic at each depth up to one past the deepest rule decides.
        """
        t0 = filt.split("/", 1)[0]
        rules = [(r, f.split("/")) for r, f in self._applicable(
            client_id, username, SUBSCRIBE, None if t0 in ("+", "#") else t0)]
        deepest = max((len(lv) for _, lv in rules), default=0)
        regions = [filt] if self.acl_default else []
        for rule, lv in rules:
            if rule.allow:
                i = filter_intersection(filt, "/".join(lv))
                if i is not None:
                    regions.append(i)
        for region in regions:
            for topic in _witnesses(region, deepest):
                for rule, lv in rules:
                    if levels_match(lv, topic):
                        if rule.allow:
                            return True
                        break
                else:
                    if self.acl_default:
                        return True
        return False

    def _decide(self, client_id: str, username: str | None, action: str, topic: str) -> bool:
        if action == SUBSCRIBE:
            return self._readable(client_id, username, topic)
        found = self._first_rule(client_id, username, action, topic)
        return self.acl_default if found is None else found[0].allow

    def explain(self, client_id: str, username: str | None, action: str, topic: str) -> str:
        """Which rule decides (for logs and diagnostics); ignores hooks."""
        if action == SUBSCRIBE and topic.startswith("$share/"):
            topic = parse_shared(topic)[1]
        if action == SUBSCRIBE and ("+" in topic or "#" in topic):
            ok = self._readable(client_id, username, topic)
            return ("allow: some topic under it may be read (each message is checked at delivery)" if ok
                    else "deny: no topic under it may be read")
        found = self._first_rule(client_id, username, action, topic)
        if found is None:
            return f"{'allow' if self.acl_default else 'deny'} by auth.acl_default"
        rule, filt = found
        verdict = "allow" if rule.allow else "deny"
        return f"{verdict} by auth.acl[{rule.index}] (topic {rule.topic!r} -> {filt!r})"

    def forget(self, client_id: str) -> None:
        """Drop cached ACL decisions for a client (call when it disconnects)."""
        self._acl_cache.pop(client_id, None)
