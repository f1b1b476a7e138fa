"""A real HTTP/1.1 server for tests: h11 over trio sockets on an ephemeral port.

``handler(request) -> (status, body)`` decides each answer (it may sleep to play a
slow receiver); every request is recorded. Use inside a nursery::

    server = await nursery.start(TestServer(handler).serve)
    url = server.url("/hook")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Awaitable, Callable

import h11
import trio


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class TestServer:
    handler: Callable[[Request], Awaitable[tuple[int, bytes]]]
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    arrived: trio.Event = field(default_factory=trio.Event)

    __test__ = False  # not a pytest class

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as n:
            task_status.started(self)
            await trio.serve_listeners(self._conn, listeners, handler_nursery=n)

    async def _conn(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        req, body = None, b""
        try:
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(ev, h11.Request):
                    req = ev
                elif isinstance(ev, h11.Data):
                    body += ev.data
                elif isinstance(ev, h11.EndOfMessage):
                    break
                else:
                    return
            r = Request(req.method.decode(), req.target.decode(),
                        {k.decode().lower(): v.decode() for k, v in req.headers}, body)
            self.requests.append(r)
            self.arrived.set()
            self.arrived = trio.Event()
            status, out = await self.handler(r)
            hdrs = [("Content-Length", str(len(out))), ("Content-Type", "application/json"), ("Connection", "close")]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=hdrs)))
            await stream.send_all(conn.send(h11.Data(data=out)) + conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def wait_requests(self, n: int, timeout: float = 10.0) -> list[Request]:
        with trio.fail_after(timeout):
            while len(self.requests) < n:
                await self.arrived.wait()
        return self.requests
