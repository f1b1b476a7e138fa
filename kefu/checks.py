"""Every start-up check of a config, in one place: ``kefu config check`` and ``kefu serve``
both call ``check_config``, so a file the checker passes is a file serve starts with.

``config/load.py`` checks each key on its own (and what spans a few keys of one section);
here are the checks that need a subsystem's own parser (ACL filters, password hashes,
the desk's settings with its teams, agents, routing rules, business hours and answers
file, API tokens, TLS files). Each returns "key.path: message" lines naming the fix;
the config package itself stays free of subsystem imports (dependencies point from
subsystems to config, not back).

Warnings are for configs that start but cannot work as a user would expect (a handoff no
agent can take): ``kefu config check`` prints them and still exits 0, ``kefu serve`` logs
each as one line at start.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The texts a person reads, kept together (English; the config's errors have no catalogue yet).
NO_AGENTS = ("agents: no [[agents]] configured, so conversations the bot hands off wait in a queue "
             "no agent can take; add [[agents]] tables (id, name, teams)")


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)  # errors: serve refuses to start
    warnings: list[str] = field(default_factory=list)  # serve starts and logs them


def _auth(cfg, base_dir) -> list[str]:
    from .broker.auth import Authenticator

    try:
        Authenticator(cfg.auth)
    except ValueError as e:
        return [str(e)]
    return []


def _alerts(cfg, base_dir) -> list[str]:
    from .alerts import rule_problems

    return rule_problems(cfg.alerts)


def _storage(cfg, base_dir) -> list[str]:
    st = cfg.storage
    if st.backend == "postgres" and not st.dsn:
        return ['storage.dsn: required when storage.backend = "postgres" '
                '(e.g. "postgresql://kefu@127.0.0.1:5432/kefu")']
    return []


def _nlp(cfg, base_dir) -> list[str]:
    from .nlp.classifier import config_problems

    return config_problems(cfg.nlp)


def _desk(cfg, base_dir) -> list[str]:
    """What the desk checks when it starts: teams, agents, routing, business hours, answers ..."""
    if not cfg.desk.enabled:
        return []
    from .broker_glue import reserved_user_problems
    from .config import ConfigError
    from .settings import from_config

    problems = []
    try:
        from_config(cfg, base_dir=base_dir)
    except ConfigError as e:
        problems.extend(e.problems)
    return problems + reserved_user_problems(cfg)


_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _tokens(cfg, base_dir) -> list[str]:
    """[[api.tokens]]: a hash that can match a token, an agent that exists."""
    problems = []
    agents = {a.id for a in cfg.agents}
    seen: dict[str, int] = {}
    for i, t in enumerate(cfg.api.tokens):
        where = f"api.tokens[{i}]"
        digest = t.token_sha256
        if not _SHA256.fullmatch(digest):
            problems.append(f"{where}.token_sha256: expected 64 hex digits (the SHA-256 `kefu token new` prints), "
                            f"got {digest!r}")
        elif digest.lower() in seen:
            problems.append(f"{where}.token_sha256: the same token as api.tokens[{seen[digest.lower()]}]; "
                            "make a new one with `kefu token new`")
        else:
            seen[digest.lower()] = i
        if t.role == "agent":
            if not t.agent:
                problems.append(f'{where}.agent: required when role = "agent" (an [[agents]] id); '
                                'or set role = "operator"')
            elif cfg.desk.enabled and t.agent not in agents:
                known = ", ".join(sorted(agents)) or "none: add [[agents]] tables"
                problems.append(f"{where}.agent: no agent {t.agent!r}; the agents are: {known}")
        elif t.agent:
            problems.append(f'{where}.agent: only role = "agent" tokens sign in as an agent; '
                            'remove agent or set role = "agent"')
    return problems


def _sites(cfg, base_dir) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for i, s in enumerate(cfg.widget.sites):
        if not s.public_token:
            problems.append(f"widget.sites[{i}].public_token: must not be empty")
        elif s.public_token in seen:
            problems.append(f"widget.sites[{i}].public_token: {s.public_token!r} is used by "
                            f"widget.sites[{seen[s.public_token]}] too")
        else:
            seen[s.public_token] = i
    return problems


def _listener_tls(cfg, base_dir) -> list[str]:
    """listeners.ws and listeners.http serve TLS with certfile and keyfile (bridge/ws.py, bridge/http.py)."""
    import ssl

    problems = []
    for name in ("ws", "http"):
        lc = getattr(cfg.listeners, name)
        if not lc.enabled or not (lc.certfile or lc.keyfile):
            continue
        where = f"listeners.{name}"
        if bool(lc.certfile) != bool(lc.keyfile):
            missing = "keyfile" if lc.certfile else "certfile"
            problems.append(f"{where}.{missing}: certfile and keyfile go together (both set: TLS; both empty: plain)")
            continue
        bad = False
        for key in ("certfile", "keyfile"):
            if not Path(getattr(lc, key)).is_file():
                problems.append(f"{where}.{key}: no such file: {getattr(lc, key)}")
                bad = True
        if bad:
            continue
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(lc.certfile, lc.keyfile)
        except (OSError, ssl.SSLError) as e:
            problems.append(f"{where}.certfile: cannot load the certificate and key ({e}); "
                            f"check {where}.certfile and {where}.keyfile")
    return problems


def _state(cfg, base_dir) -> list[str]:
    """[desk] state = "redis" (kefu/state_redis.py live_state)."""
    if cfg.desk.enabled and cfg.desk.state == "redis" and not cfg.storage.redis_url:
        return ['desk.state: "redis" needs storage.redis_url (e.g. "redis://127.0.0.1:6379/0")']
    return []


def _crm(cfg, base_dir) -> list[str]:
    """crm.provider: built in or an installed entry point (kefu/contacts.py load_crm), not loaded here."""
    from importlib.metadata import entry_points

    from .contacts import BUILTIN, CRM_GROUP

    p = cfg.crm.provider
    if not cfg.desk.enabled or not p or p in BUILTIN:
        return []
    found = {ep.name for ep in entry_points(group=CRM_GROUP)}
    if p in found:
        return []
    return [f"crm.provider: no CRM plugin {p!r}; installed: {', '.join(sorted(found | set(BUILTIN)))}"]


def _master_key(cfg, base_dir) -> list[str]:
    """The SQL store's master key, when encryption at rest is on or a key is configured (storage/open_store)."""
    from .storage import master_key_configured
    from .storage.crypto import KeyringError, load_master_key

    st = cfg.storage
    if not (st.encrypt_at_rest or master_key_configured(st)):
        return []
    try:
        load_master_key(st.master_key_file, st.master_key_env)
    except KeyringError as e:  # no key, an unreadable file, a malformed key: serve cannot start
        key = "storage.master_key_file" if st.master_key_file else "storage.encrypt_at_rest"
        return [f"{key}: {e}"]
    return []


CHECKS: list[Callable[[object, object], list[str]]] = [
    _auth, _alerts, _storage, _master_key, _nlp, _desk, _state, _crm, _tokens, _sites, _listener_tls,
]


def config_warnings(cfg) -> list[str]:
    """What starts but cannot work: a desk whose handoffs reach no agent.

    Whenever the desk runs, the bot hands off (below bot.confidence, on bot.human_phrases, a
    handler = "human" row, or always when the bot is off or has no answers file), so a desk
    with no [[agents]] queues conversations nobody can take.
    """
    out = []
    if cfg.desk.enabled and not cfg.agents:
        out.append(NO_AGENTS)
    return out


def check_config(cfg, base_dir: str | Path | None = None) -> Report:
    """Every check ``kefu serve`` runs before it starts; ``base_dir``: the config file's folder."""
    report = Report()
    for check in CHECKS:
        report.problems.extend(check(cfg, base_dir))
    report.warnings.extend(config_warnings(cfg))
    return report


def deep_check(cfg, base_dir: str | Path | None = None) -> list[str]:
    return check_config(cfg, base_dir).problems
