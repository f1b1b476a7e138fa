"""Errors the desk's API raises: each names its /chat error code and HTTP status, so
the bridge can map them without knowing the core's internals."""

from __future__ import annotations


class DeskError(Exception):
    code = "unavailable"
    status = 503


class NotFound(DeskError):
    code, status = "not_found", 404


class Forbidden(DeskError):
    code, status = "forbidden", 403


class Illegal(DeskError):
    """Stale or illegal in the current state (accepting a conversation already requeued...)."""

    code, status = "conflict", 409


class Invalid(DeskError):
    code, status = "invalid_field", 422
