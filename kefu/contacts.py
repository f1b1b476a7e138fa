"""Contacts (customers and devices) and the CRM lookup plugin interface.

A contact is created on a customer's first message; operators and agents add custom
attributes. A CRM plugin enriches it: the desk calls ``lookup(contact)`` when a
conversation opens and shows the result in the agent's sidebar; a ``tier`` it returns
(field named by ``[crm] tier_field``) feeds the routing table's tier column.

Plugins are found by name in the entry point group ``kefu.crm``; each entry point is
a factory ``factory(settings) -> CrmLookup``. ``http`` is built in: GET a configured
URL template, JSON object back, cached per customer for ``cache_ttl`` seconds. A
failing or slow CRM never stops a conversation: after ``timeout`` the sidebar shows
the error and routing goes on without the tier.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any, Callable, Protocol
from urllib.parse import quote

import trio

from . import httpc
from .events import CONTACT_UPDATED, Event

log = logging.getLogger("kefu.crm")

CRM_GROUP = "kefu.crm"


@dataclass(frozen=True)
class Contact:
    id: str
    name: str = ""
    email: str = ""
    phone: str = ""
    tier: str = ""
    kind: str = "person"  # "person" | "device"
    attributes: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    version: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "phone": self.phone,
            "tier": self.tier,
            "kind": self.kind,
            "attributes": dict(self.attributes),
        }

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["attributes"] = dict(self.attributes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Contact":
        return cls(**d)


def set_attributes(c: Contact, changes: dict[str, Any], now: float, *, by: str | None) -> tuple[Contact, list[Event]]:
    """Custom attributes: JSON scalars only; a None value removes the key."""
    attrs = dict(c.attributes)
    for k, v in changes.items():
        if not isinstance(k, str) or not k or len(k) > 64:
            raise ValueError(f"attribute name {k!r}: expected 1-64 characters")
        if v is None:
            attrs.pop(k, None)
        elif isinstance(v, (str, int, float, bool)):
            attrs[k] = v
        else:
            raise ValueError(f"attribute {k}: expected a string, number or boolean")
    new = replace(c, attributes=attrs, updated_at=now)
    if new.attributes == c.attributes:
        return c, []
    return new, [Event(CONTACT_UPDATED, {"contact": new.summary(), "by": by}, now)]


def set_fields(c: Contact, now: float, **fields: str) -> Contact:
    allowed = {"name", "email", "phone", "tier", "kind"}
    bad = set(fields) - allowed
    if bad:
        raise ValueError(f"unknown contact field(s): {', '.join(sorted(bad))}")
    return replace(c, updated_at=now, **fields)


class CrmLookup(Protocol):
    async def lookup(self, contact: Contact) -> dict[str, Any] | None:
        """Data for the agent sidebar, or None when the CRM does not know the contact."""


@dataclass(frozen=True)
class CrmSettings:
    provider: str = ""  # "" disables CRM lookups
    url: str = ""
    timeout: float = 2.0
    cache_ttl: float = 300.0
    cache_size: int = 10_000
    headers: dict[str, str] = field(default_factory=dict)
    tier_field: str = "tier"


class HttpCrm:
    """GET ``url`` with {customer_id}, {email}, {phone} filled in (URL-quoted); 200 + JSON object
    is a hit, 404 a miss, anything else an error. Hits and misses are cached."""

    def __init__(self, settings: CrmSettings, *, clock: Callable[[], float] = trio.current_time) -> None:
        if not settings.url:
            raise ValueError("crm.url: required when crm.provider = \"http\"")
        httpc.split_url(settings.url.replace("{", "").replace("}", ""))  # validates scheme/host early
        self.s = settings
        self.clock = clock
        self._cache: dict[str, tuple[float, dict | None]] = {}
        self.calls = 0  # real HTTP calls made (tests and metrics)

    def _url(self, c: Contact) -> str:
        return self.s.url.format(
            customer_id=quote(c.id, safe=""), email=quote(c.email, safe=""), phone=quote(c.phone, safe="")
        )

    async def lookup(self, contact: Contact) -> dict[str, Any] | None:
        now = self.clock()
        hit = self._cache.get(contact.id)
        if hit is not None and hit[0] > now:
            return hit[1]
        self.calls += 1
        resp = await httpc.request(
            "GET", self._url(contact), headers=list(self.s.headers.items()) + [("Accept", "application/json")],
            timeout=self.s.timeout,
        )
        if resp.status == 404:
            value = None
        elif resp.status == 200:
            try:
                value = json.loads(resp.body)
            except ValueError:
                raise httpc.HttpError("CRM answered 200 with a body that is not JSON") from None
            if not isinstance(value, dict):
                raise httpc.HttpError("CRM answered 200 with JSON that is not an object")
        else:
            raise httpc.HttpError(f"CRM answered HTTP {resp.status}")
        if len(self._cache) >= self.s.cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest inserted
        self._cache[contact.id] = (now + self.s.cache_ttl, value)
        return value


BUILTIN: dict[str, Callable[[CrmSettings], CrmLookup]] = {"http": HttpCrm}


def load_crm(settings: CrmSettings) -> CrmLookup | None:
    """The configured CRM plugin: built in, or an entry point in group ``kefu.crm``."""
    if not settings.provider:
        return None
    if settings.provider in BUILTIN:
        return BUILTIN[settings.provider](settings)
    found = {ep.name: ep for ep in entry_points(group=CRM_GROUP)}
    if settings.provider not in found:
        names = sorted(set(found) | set(BUILTIN))
        raise ValueError(f"crm.provider: no CRM plugin {settings.provider!r}; installed: {', '.join(names)}")
    return found[settings.provider].load()(settings)


async def sidebar_lookup(crm: CrmLookup | None, contact: Contact) -> dict[str, Any]:
    """What the agent sidebar shows from the CRM: {"data": ...} or {"error": ...}."""
    if crm is None:
        return {}
    try:
        return {"data": await crm.lookup(contact)}
    except Exception as e:  # noqa: BLE001 - a plugin's failure is shown, never fatal
        log.warning("CRM lookup for %s failed: %s", contact.id, e)
        return {"error": str(e)}
