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


CHECKS: list[Callable[[object], list[str]]] = [_auth]


def deep_check(cfg) -> list[str]:
    problems: list[str] = []
    for check in CHECKS:
        problems.extend(check(cfg))
    return problems
