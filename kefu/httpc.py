"""A small HTTP/1.1 client for trio: h11 over trio sockets (TLS via trio.SSLStream).

Webhooks and the CRM lookup need outbound HTTP from inside the trio service. The
installed HTTP clients are asyncio-first; h11 is sans-I/O and already a dependency
of the web stack, so one request per connection over trio streams is enough here
(webhook and CRM calls are infrequent and each endpoint is slow compared to a
connect). Every call has a deadline and a response size limit.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio


class HttpError(Exception):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return None


def split_url(url: str) -> tuple[str, str, int, str]:
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise HttpError(f"{url!r}: expected an http:// or https:// URL")
    port = u.port or (443 if u.scheme == "https" else 80)
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return u.scheme, u.hostname, port, target


async def request(
    method: str,
    url: str,
    *,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    timeout: float = 10.0,
    max_body: int = 1 << 20,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """One request; raises HttpError on connect/protocol failure, timeout or oversized body."""
    scheme, host, port, target = split_url(url)
    with trio.move_on_after(timeout) as scope:
        try:
            return await _request(method, scheme, host, port, target, headers or [], body, max_body, ssl_context)
        except (OSError, trio.BrokenResourceError, h11.ProtocolError) as e:
            raise HttpError(f"{method} {url}: {e.__class__.__name__}: {e}") from None
    assert scope.cancelled_caught
    raise HttpError(f"{method} {url}: no response within {timeout:g} s")


async def _request(method, scheme, host, port, target, headers, body, max_body, ssl_context) -> Response:
    stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
    try:
        if scheme == "https":
            stream = trio.SSLStream(stream, ssl_context or ssl.create_default_context(), server_hostname=host)
            await stream.do_handshake()
        conn = h11.Connection(our_role=h11.CLIENT)
        hdrs = [("Host", host if port in (80, 443) else f"{host}:{port}"), ("Connection", "close"),
                ("Content-Length", str(len(body))), ("User-Agent", "kefu")] + list(headers)
        data = conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        status, rh, chunks, size = 0, [], [], 0
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                raw = await stream.receive_some(65536)
                conn.receive_data(raw)
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
                rh = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers]
            elif isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > max_body:
                    raise HttpError(f"response body over {max_body} bytes")
                chunks.append(bytes(ev.data))
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                if not status:
                    raise HttpError("connection closed before a response")
                return Response(status, rh, b"".join(chunks))
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
