"""The notation of the conformance cases: MQTT packets as hex, with three shorthands.

Cases live in ``cases/*.toml``. Each ``[[case]]`` has a ``name``, a ``title``, an
optional ``config`` table merged into the broker's config, an optional ``timeout``
(seconds per step, default 5) and one table per protocol version it runs under,
``[case.v4]`` (3.1.1) and/or ``[case.v5]`` (5.0), each with the spec ``ids`` it checks
(that version's numbering) and its ``steps``.

A step is ``<conn><op> <bytes>``; ``conn`` is a letter naming a client connection,
opened on first use:

    A> 10 <0004 "MQTT" 04 02 003c 'a'>   send these bytes (one write)
    A>. c0 00                            send them one byte per write
    A> close                             the client closes its socket (no DISCONNECT)
    A< 20 02 00 00                       the next packet A receives is exactly this
    A< 20 ?? 00 00 *                     ... with wildcards: ?? one byte, * the rest
    A< 40 02 0001 | 40 ?? 0001 00 *      ... one of several alternatives
    A< 20 ?? 00 00 * & 13 000a           ... and it contains these bytes somewhere
    A< close                             the server closes A with no packet first
    A<? e0 ?? 8e *                       an optional packet: consumed if it is next
                                         (waits for the next packet or the close, so
                                         something must follow: a close, a PINGRESP)
    A<~ 30 * & "$SYS/"                   skip packets until one matches

Bytes: hex in pairs (``003c`` is two bytes), ``'text'`` is an MQTT UTF-8 string
(two-byte length, then UTF-8), ``"text"`` is the raw UTF-8 bytes, ``<...>`` is the
enclosed bytes preceded by their length as a variable byte integer (so a packet is
written ``<first byte> <...>`` and a 5.0 property block ``<...>``), ``hh*N`` is byte
``hh`` repeated N times. ``@name`` is a two-byte value: in an expectation it captures
(or, once bound, must equal) the bytes there; in a send it is replaced by them. That is
how a case acknowledges a packet id the broker chose and checks that a redelivery
reuses it.

The notation is independent of kefu's codec on purpose: the cases test the broker's
bytes, not its own idea of them. Every failure prints the exact bytes (hex).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ANY = -1  # one byte, any value
STEP_RE = re.compile(r"^\s*([A-Z])(>\.|>|<\?|<~|<)\s*(.*?)\s*$", re.S)
TOKEN_RE = re.compile(
    r"""
    (?P<mqtt>'(?:[^'\\]|\\.)*')
  | (?P<raw>"(?:[^"\\]|\\.)*")
  | (?P<open><)
  | (?P<close>>)
  | (?P<any>\?\?)
  | (?P<rep>[0-9a-fA-F]{2}\*\d+)
  | (?P<rest>\*)
  | (?P<cap>@\w+)
  | (?P<word>close\b)
  | (?P<hex>[0-9a-fA-F]+)
  | (?P<alt>\|)
  | (?P<has>&)
  | (?P<space>\s+)
  | (?P<bad>.)
    """,
    re.X | re.S,
)


class NotationError(ValueError):
    pass


@dataclass(frozen=True)
class Cap:
    name: str


@dataclass
class Pattern:
    """One alternative of an expectation."""

    items: list  # ints (bytes), ANY, Cap
    rest: bool = False  # '*' at the end: any further bytes
    contains: list[bytes] = field(default_factory=list)
    close: bool = False  # the alternative "the server closes the connection"

    def describe(self) -> str:
        if self.close:
            return "close"
        out = []
        for it in self.items:
            out.append("??" if it == ANY else f"@{it.name}" if isinstance(it, Cap) else f"{it:02x}")
        s = " ".join(out) + (" *" if self.rest else "")
        for c in self.contains:
            s += " & " + c.hex(" ")
        return s

    def match(self, data: bytes, env: dict[str, bytes]) -> dict[str, bytes] | None:
        """New bindings if ``data`` matches (possibly empty), else None."""
        items = self.items
        n = sum(2 if isinstance(it, Cap) else 1 for it in items)
        if len(data) < n or (len(data) > n and not self.rest):
            return None
        bound: dict[str, bytes] = {}
        i = 0
        for it in items:
            if isinstance(it, Cap):
                got = data[i:i + 2]
                want = env.get(it.name, bound.get(it.name))
                if want is None:
                    bound[it.name] = got
                elif want != got:
                    return None
                i += 2
            else:
                if it != ANY and data[i] != it:
                    return None
                i += 1
        for c in self.contains:
            if c not in data:
                return None
        return bound


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tokens(text: str):
    for m in TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind == "space":
            continue
        if kind == "bad":
            raise NotationError(f"unexpected {m.group()!r} at {m.start()} in {text!r}")
        yield kind, m.group()


def _items(tokens: list, text: str, allow_wild: bool) -> tuple[list, bool]:
    """Parse a token list into byte items; returns (items, rest)."""
    stack: list[list] = [[]]
    rest = False
    for kind, tok in tokens:
        cur = stack[-1]
        if rest:
            raise NotationError(f"'*' must be last in {text!r}")
        if kind == "hex":
            if len(tok) % 2:
                raise NotationError(f"odd number of hex digits {tok!r} in {text!r}")
            cur.extend(bytes.fromhex(tok))
        elif kind == "rep":
            b, n = tok.split("*")
            cur.extend(bytes.fromhex(b) * int(n))
        elif kind == "mqtt":
            raw = _unescape(tok[1:-1]).encode("utf-8")
            cur.extend(len(raw).to_bytes(2, "big") + raw)
        elif kind == "raw":
            cur.extend(_unescape(tok[1:-1]).encode("utf-8"))
        elif kind == "open":
            stack.append([])
        elif kind == "close":
            if len(stack) == 1:
                raise NotationError(f"unbalanced '>' in {text!r}")
            inner = stack.pop()
            n = sum(2 if isinstance(it, Cap) else 1 for it in inner)
            stack[-1].extend(varint(n))
            stack[-1].extend(inner)
        elif kind == "any":
            if not allow_wild:
                raise NotationError(f"'??' only in expectations: {text!r}")
            cur.append(ANY)
        elif kind == "rest":
            if not allow_wild or len(stack) > 1:
                raise NotationError(f"'*' only at the end of an expectation: {text!r}")
            rest = True
        elif kind == "cap":
            cur.append(Cap(tok[1:]))
        else:
            raise NotationError(f"unexpected {tok!r} in {text!r}")
    if len(stack) != 1:
        raise NotationError(f"unbalanced '<' in {text!r}")
    return stack[0], rest


def parse_bytes(text: str) -> list:
    """Bytes to send: a list of ints and ``Cap`` (filled in at run time)."""
    toks = list(_tokens(text))
    if any(k in ("alt", "has", "word") for k, _ in toks):
        raise NotationError(f"'|', '&' and words are only for expectations: {text!r}")
    items, _ = _items(toks, text, allow_wild=False)
    return items


def parse_expect(text: str) -> list[Pattern]:
    toks = list(_tokens(text))
    alts: list[list] = [[]]
    for t in toks:
        if t[0] == "alt":
            alts.append([])
        else:
            alts[-1].append(t)
    out = []
    for alt in alts:
        if not alt:
            raise NotationError(f"empty alternative in {text!r}")
        if alt[0] == ("word", "close") and len(alt) == 1:
            out.append(Pattern([], close=True))
            continue
        parts: list[list] = [[]]
        for t in alt:
            if t[0] == "has":
                parts.append([])
            elif t[0] == "word":
                raise NotationError(f"unknown word {t[1]!r} in {text!r}")
            else:
                parts[-1].append(t)
        items, rest = _items(parts[0], text, allow_wild=True)
        contains = []
        for p in parts[1:]:
            sub, r = _items(p, text, allow_wild=False)
            if r or any(not isinstance(x, int) for x in sub):
                raise NotationError(f"'&' takes plain bytes: {text!r}")
            contains.append(bytes(sub))
        out.append(Pattern(items, rest, contains))
    return out


@dataclass
class Step:
    conn: str
    op: str  # '>', '>.', '<', '<?', '<~'
    text: str
    send: list | None = None  # for '>' / '>.'
    client_close: bool = False
    expect: list[Pattern] | None = None

    def __str__(self) -> str:
        return f"{self.conn}{self.op} {self.text}"


def parse_step(s: str) -> Step:
    m = STEP_RE.match(s)
    if not m:
        raise NotationError(f"a step is '<letter><op> <bytes>', got {s!r}")
    conn, op, text = m.groups()
    step = Step(conn, op, text)
    if op in (">", ">."):
        if text == "close":
            step.client_close = True
        else:
            step.send = parse_bytes(text)
    else:
        step.expect = parse_expect(text)
    return step


def fill(items: list, env: dict[str, bytes], where: str) -> bytes:
    out = bytearray()
    for it in items:
        if isinstance(it, Cap):
            if it.name not in env:
                raise NotationError(f"{where}: @{it.name} is sent before any expectation captured it")
            out += env[it.name]
        else:
            out.append(it)
    return bytes(out)


def split_packet(buf: bytes | bytearray) -> tuple[bytes, int] | None:
    """The first whole packet in ``buf`` and its length, or None if incomplete.

    Raises ``NotationError`` when the broker sends a remaining length longer than
    four bytes (which no valid packet has).
    """
    if len(buf) < 2:
        return None
    n = 0
    mult = 1
    for i in range(1, 5):
        if i >= len(buf):
            return None
        b = buf[i]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            end = i + 1 + n
            if len(buf) < end:
                return None
            return bytes(buf[:end]), end
    raise NotationError(f"broker sent a remaining length of more than 4 bytes: {bytes(buf[:8]).hex(' ')}")
