"""Checks of a loaded config that need a subsystem's own parser (ACL filters, password
hashes, ...). ``kefu config check`` and ``kefu serve`` run them, so a bad value is
reported with its key path before anything starts, never as a traceback later.

Each check returns a list of "key.path: message" lines; the config package itself stays
free of subsystem imports (dependencies point from subsystems to config, not back).
"""

from __future__ import annotations

from collections.abc import Callable


def _auth(cfg) -> list[str]:
    from .broker.auth import Authenticator

    try:
        Authenticator(cfg.auth)
    except ValueError as e:
        return [str(e)]
    return []


def _alerts(cfg) -> list[str]:
    from .alerts import rule_problems

    return rule_problems(cfg.alerts)


def _storage(cfg) -> list[str]:
    st = cfg.storage
    if st.backend == "postgres" and not st.dsn:
        return ['storage.dsn: required when storage.backend = "postgres" '
                '(e.g. "postgresql://kefu@127.0.0.1:5432/kefu")']
    return []


def _nlp(cfg) -> list[str]:
    from .nlp.classifier import config_problems

    return config_problems(cfg.nlp)


CHECKS: list[Callable[[object], list[str]]] = [_auth, _alerts, _storage, _nlp]


def deep_check(cfg) -> list[str]:
    problems: list[str] = []
    for check in CHECKS:
        problems.extend(check(cfg))
    return problems
