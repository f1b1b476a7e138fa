"""Who is on the other end of a browser connection or an API request.

Three kinds of credentials, all checked in constant time:

* Agent and operator API tokens. The config stores only SHA-256 of each token
  (``[[api.tokens]] token_sha256``); ``kefu token new`` makes one. With no tokens
  configured, ``kefu serve`` makes a one-run demo agent token so a fresh install can be
  tried, and prints it.
* A visitor's *signed identity* (identity validation): the site's backend knows who its
  user is and computes ``hex(HMAC-SHA256(identity_secret, id))``; the widget passes id
  and hash. Without the site's secret nobody can claim another user's id, so a known
  user gets the same customer id (and history) on every device and browser.
* An anonymous visitor's ``visitor_token``, issued by this server on first contact
  (``anon-<random>`` plus an HMAC under a server secret). The widget keeps it in
  localStorage and presents it on reconnect; knowing a visitor's id is not enough to
  read its conversation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

DEMO_SITE_TOKEN = "demo"
ANON_PREFIX = "anon-"


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return "kefu_" + secrets.token_urlsafe(24)


def sign_identity(secret: str, visitor_id: str) -> str:
    """What a site's backend computes for identity validation (documented in docs/chat-protocol.md)."""
    return hmac.new(secret.encode("utf-8"), visitor_id.encode("utf-8"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str  # "agent" | "operator"
    agent: str | None


@dataclass(frozen=True)
class Site:
    name: str
    public_token: str
    identity_secret: str
    require_identity: bool
    allowed_origins: tuple[str, ...]


class AuthError(Exception):
    pass


class Identities:
    def __init__(self, cfg, *, extra_tokens: dict[str, TokenInfo] | None = None, secret: bytes | None = None) -> None:
        self._tokens: dict[str, TokenInfo] = {}
        for t in cfg.api.tokens:
            self._tokens[t.token_sha256.lower()] = TokenInfo(t.name, t.role, t.agent or None)
        for token, info in (extra_tokens or {}).items():
            self._tokens[sha256_hex(token)] = info
        self.sites: dict[str, Site] = {}
        for s in cfg.widget.sites:
            self.sites[s.public_token] = Site(
                s.name, s.public_token, s.identity_secret, s.require_identity, tuple(s.allowed_origins)
            )
        if cfg.widget.demo_site and DEMO_SITE_TOKEN not in self.sites:
            self.sites[DEMO_SITE_TOKEN] = Site("Demo", DEMO_SITE_TOKEN, "", False, ())
        configured = cfg.widget.visitor_secret.encode("utf-8")
        self._secret = secret or configured or secrets.token_bytes(32)

    # --- agents and operators --------------------------------------------------------
    def token(self, token: str | None) -> TokenInfo | None:
        if not token:
            return None
        digest = sha256_hex(token)
        # Constant-time comparison against each stored digest: the lookup itself must
        # not leak how much of a guessed token matched.
        found = None
        for stored, info in self._tokens.items():
            if hmac.compare_digest(stored, digest):
                found = info
        return found

    # --- visitors --------------------------------------------------------------------
    def site(self, public_token: str) -> Site | None:
        return self.sites.get(public_token)

    def visitor_token(self, visitor_id: str) -> str:
        mac = hmac.new(self._secret, visitor_id.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
        return f"{visitor_id}.{mac}"

    def anonymous(self) -> tuple[str, str]:
        vid = ANON_PREFIX + secrets.token_hex(8)
        return vid, self.visitor_token(vid)

    def visitor(self, site: Site, *, identity: dict | None, visitor_token: str | None) -> tuple[str, str, bool]:
        """(customer id, visitor_token to keep, identified?) or AuthError saying why not."""
        from kefu.topics import reserved_customer_id, valid_id  # ids become MQTT topic levels: the desk's rule

        if identity is not None:
            if not site.identity_secret:
                raise AuthError(f"site {site.name} does not accept signed identities (no identity_secret)")
            vid = identity["id"]
            if not valid_id(vid) or reserved_customer_id(vid):
                raise AuthError("identity.id: expected 1-64 characters from A-Z a-z 0-9 _ . @ : - "
                                "(not starting anon- or anon:, kept for anonymous customers)")
            want = sign_identity(site.identity_secret, vid)
            if not hmac.compare_digest(want, identity["hash"].lower()):
                raise AuthError("identity.hash does not match identity.id (HMAC-SHA256 with the site's identity_secret)")
            return vid, self.visitor_token(vid), True
        if site.require_identity:
            raise AuthError(f"site {site.name} requires a signed identity")
        if visitor_token:
            vid, _, _mac = visitor_token.rpartition(".")
            if vid and vid.startswith(ANON_PREFIX) and hmac.compare_digest(self.visitor_token(vid), visitor_token):
                return vid, visitor_token, False
            # An expired or foreign token: a new anonymous visitor, said so in ready.
        vid, tok = self.anonymous()
        return vid, tok, False
