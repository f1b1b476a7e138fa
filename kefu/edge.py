"""What crosses kefu's edge: JSON and text from the network, and the per-connection boundary.

Every listener (MQTT over TCP/TLS, ``/mqtt`` and ``/chat`` over WebSocket, the HTTP API)
is a boundary. Text from outside is checked here once, where it enters, so nothing
deeper has to wonder whether a string can be encoded, stored or sent on:

* ``loads`` decodes one JSON document within a size and a nesting-depth limit and
  refuses lone UTF-16 surrogates (``"\\ud800"`` is valid JSON syntax, but not text:
  it cannot be written as UTF-8, so it would fail later in a database write or while
  sending to *another* client). ``EdgeError.code`` says which limit was hit.
* ``scrub`` is the lenient twin for channels that have no way to answer a single
  frame (an MQTT payload): lone surrogates become U+FFFD and the message is kept.
* ``contain`` runs one connection's handler: any exception in it ends that
  connection only, with one (rate-limited) log line giving the reason; cancellation
  still propagates, so shutdown works as before.
* ``display_safe`` makes bidirectional overrides and invisible characters visible, for
  places where a person reads text someone else wrote.
* ``RateLimitedLog`` keeps a flood of bad connections from becoming a flood of log lines.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Awaitable, Callable

log = logging.getLogger("kefu.edge")

# Defaults for JSON at the edge (the /chat and REST limits on size are config keys).
MAX_DEPTH = 32

_SURROGATE = re.compile("[\ud800-\udfff]")
# Bidirectional embeddings/overrides/isolates and invisible characters that can make a
# text read differently from what it is (CVE-2021-42574 style). ZWJ/ZWNJ (U+200C/D) are
# left alone: emoji sequences and several scripts need them.
_DECEPTIVE = re.compile("[\u202a-\u202e\u2066-\u2069\u200b\u200e\u200f\u061c\u2060\ufeff\u180e]")


class EdgeError(ValueError):
    """Input refused at the edge. ``code``: too_large, too_deep, bad_json (syntax, not UTF-8),
    bad_text (a lone surrogate)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def has_surrogate(s: str) -> bool:
    return _SURROGATE.search(s) is not None


def _walk(obj: Any, max_depth: int, fix: bool) -> Any:
    """Check depth and strings of a decoded document (iteratively: no recursion limit).
    With ``fix`` lone surrogates are replaced (and the fixed document returned)."""
    if fix:
        obj = _fixed(obj)
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        cur, depth = stack.pop()
        if isinstance(cur, dict):
            if depth > max_depth:
                raise EdgeError("too_deep", f"JSON nested more than {max_depth} levels")
            for k, v in cur.items():
                if not fix and _SURROGATE.search(k):
                    raise EdgeError("bad_text", "a key contains a lone UTF-16 surrogate (not valid Unicode text)")
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif isinstance(v, str) and not fix and _SURROGATE.search(v):
                    raise EdgeError("bad_text", f"field {k[:40]}: lone UTF-16 surrogate (not valid Unicode text)")
        elif isinstance(cur, list):
            if depth > max_depth:
                raise EdgeError("too_deep", f"JSON nested more than {max_depth} levels")
            for v in cur:
                if isinstance(v, (dict, list)):
                    stack.append((v, depth + 1))
                elif isinstance(v, str) and not fix and _SURROGATE.search(v):
                    raise EdgeError("bad_text", "a string contains a lone UTF-16 surrogate (not valid Unicode text)")
        elif isinstance(cur, str) and not fix and _SURROGATE.search(cur):
            raise EdgeError("bad_text", "lone UTF-16 surrogate (not valid Unicode text)")
    return obj


def _fixed(obj: Any) -> Any:
    """A copy of ``obj`` with lone surrogates replaced (iterative, any depth json gave us)."""
    if isinstance(obj, str):
        return _SURROGATE.sub("\ufffd", obj)
    if not isinstance(obj, (dict, list)):
        return obj
    root: Any = {} if isinstance(obj, dict) else []
    stack = [(obj, root)]
    while stack:
        src, dst = stack.pop()
        items = src.items() if isinstance(src, dict) else enumerate(src)
        for k, v in items:
            if isinstance(v, (dict, list)):
                nv: Any = {} if isinstance(v, dict) else []
                stack.append((v, nv))
            elif isinstance(v, str):
                nv = _SURROGATE.sub("\ufffd", v)
            else:
                nv = v
            if isinstance(dst, dict):
                dst[_SURROGATE.sub("\ufffd", k)] = nv
            else:
                dst.append(nv)
    return root


def loads(raw: str | bytes | bytearray, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """One JSON document from the network, or EdgeError naming the limit it broke."""
    _check_size(raw, max_bytes)
    if not isinstance(raw, str):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise EdgeError("bad_json", f"not valid JSON: not UTF-8 text (byte {e.start})") from None
    return _walk(_parse(raw, max_depth), max_depth, fix=False)


def _check_size(raw: str | bytes | bytearray, max_bytes: int) -> None:
    size = len(raw) if not isinstance(raw, str) else len(raw.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise EdgeError("too_large", f"{size} bytes is over the limit of {max_bytes} bytes")


def _parse(raw: str | bytes, max_depth: int) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise EdgeError("too_deep", f"JSON nested more than {max_depth} levels") from None
    except ValueError as e:
        raise EdgeError("bad_json", f"not valid JSON: {e}") from None


def scrub(obj: Any, *, max_depth: int = MAX_DEPTH) -> Any:
    """``obj`` with lone surrogates replaced by U+FFFD; EdgeError when nested too deep."""
    return _walk(obj, max_depth, fix=True)


def scrub_text(s: str) -> str:
    return _SURROGATE.sub("\ufffd", s)


def loads_lenient(raw: str | bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Like ``loads`` but keeps the document, lone surrogates replaced (MQTT payloads)."""
    _check_size(raw, max_bytes)
    return scrub(_parse(raw, max_depth), max_depth=max_depth)


def dumps_text(obj: Any) -> str:
    """Compact JSON that is always valid UTF-8 text: non-ASCII kept as is, unless a lone
    surrogate slipped in from somewhere, in which case it is written as a \\u escape."""
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    if _SURROGATE.search(s):
        s = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return s


def display_safe(s: str) -> str:
    """Bidi controls and invisible characters shown as ⟦U+XXXX⟧, so text reads as it is."""
    return _DECEPTIVE.sub(lambda m: f"\u27e6U+{ord(m.group()):04X}\u27e7", s)


# --------------------------------------------------------------------------- logging


class RateLimitedLog:
    """At most ``per_minute`` lines a minute from one logger call site; the rest counted
    and summarised in the next line that gets through ("... 1234 similar suppressed")."""

    def __init__(self, logger: logging.Logger, per_minute: int = 60, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.per_minute = per_minute
        self.clock = clock
        self.window = clock()
        self.count = 0
        self.suppressed = 0
        self.total_suppressed = 0

    def __call__(self, level: int, msg: str, *args: Any, exc_info: Any = None) -> bool:
        now = self.clock()
        if now - self.window >= 60.0:
            self.window, self.count = now, 0
        if self.count >= self.per_minute:
            self.suppressed += 1
            self.total_suppressed += 1
            return False
        self.count += 1
        if self.suppressed:
            msg = msg + f" (and {self.suppressed} similar suppressed in the last minute)"
            self.suppressed = 0
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


_boundary_log = RateLimitedLog(logging.getLogger("kefu.edge"), per_minute=60)
contained = {"count": 0}  # connections ended by an unexpected error (for /metrics and tests)


def _split_bugs(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """(the Exception part, the rest: cancellation, KeyboardInterrupt ...) of ``exc``."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(Exception)
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


def _first(e: BaseException) -> BaseException:
    while isinstance(e, BaseExceptionGroup):
        e = e.exceptions[0]
    return e


async def contain(what: str, peer: str, fn: Callable[[], Awaitable[Any]],
                  on_error: Callable[[BaseException], Awaitable[None]] | None = None) -> bool:
    """Run one connection's handler; an exception ends this connection only.

    Returns False when an error was contained. ``on_error`` (say, close the socket with a
    code) runs first, shielded from nothing else: its own failure is logged too.
    """
    try:
        await fn()
        return True
    except BaseException as exc:  # noqa: BLE001 - the boundary: split, log the bug, re-raise the rest
        bugs, rest = _split_bugs(exc)
        if bugs is None:
            raise
        contained["count"] += 1
        leaf = _first(bugs)
        _boundary_log(logging.WARNING, "%s (%s): connection closed after an internal error: %s: %s",
                      what, peer or "?", type(leaf).__name__, str(leaf)[:200], exc_info=bugs)
        if on_error is not None:
            try:
                await on_error(leaf)
            except Exception as e:  # noqa: BLE001
                log.debug("%s (%s): closing after the error failed too: %s", what, peer, e)
        if rest is not None:
            raise rest from None
        return False
