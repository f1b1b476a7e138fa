"""MQTT conformance as data: every case in ``cases/*.toml`` against the live kefu broker.

Each case runs once per protocol version it defines (``v4`` = 3.1.1, ``v5`` = 5.0) and
per transport (plain TCP and TLS with a self-signed certificate made at test time), on
a fresh in-process broker listening on an ephemeral loopback port, through raw trio
sockets: the bytes written are the case's bytes, the bytes read are compared with the
case's patterns. See ``conformance_dsl.py`` for the notation. Every wait is bounded by
``trio.fail_after``; nothing sleeps.

A failure names the case, the spec ids it checks, the step, what was expected and the
exact bytes that arrived, then the transcript so far.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import ipaddress
import ssl
import tomllib
from pathlib import Path

import pytest
import trio

from conformance_dsl import NotationError, Step, fill, parse_step, split_packet
from kefu.broker.server import Broker
from kefu.config.load import from_dict
from kefu.config.model import Config

CASES_DIR = Path(__file__).parent / "cases"
DEFAULT_TIMEOUT = 5.0
VERSIONS = {"v4": "3.1.1", "v5": "5.0"}


# ----------------------------------------------------------------- loading cases


@dataclasses.dataclass
class Case:
    name: str
    title: str
    file: str
    version: str  # "v4" / "v5"
    ids: list[str]
    steps: list[Step]
    config: dict
    timeout: float
    transports: tuple[str, ...] = ("tcp", "tls")
    error: str | None = None  # a notation error, reported by the test


def load_cases() -> list[Case]:
    out: list[Case] = []
    seen: set[str] = set()
    for path in sorted(CASES_DIR.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        for raw in data.get("case", []):
            name = raw.get("name", "?")
            if name in seen:
                raise ValueError(f"{path.name}: case name {name!r} used twice")
            seen.add(name)
            unknown = set(raw) - {"name", "title", "config", "timeout", "transports", "v4", "v5"}
            if unknown:
                raise ValueError(f"{path.name}: case {name!r}: unknown keys {sorted(unknown)}")
            if not ({"v4", "v5"} & set(raw)):
                raise ValueError(f"{path.name}: case {name!r} has neither v4 nor v5 steps")
            for v in ("v4", "v5"):
                if v not in raw:
                    continue
                part = raw[v]
                steps, error = [], None
                try:
                    if not part.get("ids"):
                        raise NotationError("every version needs the spec ids it checks")
                    steps = [parse_step(s) for s in part["steps"]]
                except (NotationError, KeyError) as e:
                    error = f"{path.name}: {name} {v}: {e}"
                transports = tuple(raw.get("transports", ("tcp", "tls")))
                if not set(transports) <= {"tcp", "tls"} or not transports:
                    raise ValueError(f"{path.name}: case {name!r}: transports must be a subset of tcp, tls")
                out.append(
                    Case(name, raw.get("title", ""), path.name, v, list(part.get("ids", [])), steps,
                         raw.get("config", {}), float(raw.get("timeout", DEFAULT_TIMEOUT)), transports, error)
                )
    return out


CASES = load_cases()


def test_case_files_are_well_formed():
    assert CASES, "no conformance cases found"
    errors = [c.error for c in CASES if c.error]
    assert not errors, "\n".join(errors)
    for v in ("v4", "v5"):
        assert any(c.version == v for c in CASES), f"no {v} cases"


# ----------------------------------------------------------------- TLS material


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for localhost / 127.0.0.1, made with `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    client_ctx = ssl.create_default_context(cafile=str(certfile))
    return str(certfile), str(keyfile), client_ctx


# ----------------------------------------------------------------- running a case


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def broker_config(case: Case, transport: str, tls_files) -> Config:
    listeners: dict = {}
    for f in dataclasses.fields(Config().listeners):
        section = getattr(Config().listeners, f.name)
        if hasattr(section, "enabled"):
            listeners[f.name] = {"enabled": False}
    listeners["mqtt"] = {"enabled": transport == "tcp", "host": "127.0.0.1", "port": 0}
    listeners["mqtts"] = {"enabled": transport == "tls", "host": "127.0.0.1", "port": 0}
    if transport == "tls":
        listeners["mqtts"].update(certfile=tls_files[0], keyfile=tls_files[1])
    return from_dict(_merge({"listeners": listeners}, case.config), f"case {case.name}")


class CaseFailure(AssertionError):
    pass


class Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    async def peek(self) -> bytes | None:
        """The next packet without consuming it; None once the server closed."""
        while True:
            got = split_packet(self.buf)
            if got is not None:
                return got[0]
            if self.eof:
                if self.buf:
                    raise CaseFailure(f"connection closed after a partial packet: {bytes(self.buf).hex(' ')}")
                return None
            await self._fill()

    def consume(self, pkt: bytes) -> None:
        del self.buf[: len(pkt)]


class Runner:
    def __init__(self, case: Case, address, client_ctx: ssl.SSLContext | None) -> None:
        self.case = case
        self.address = address
        self.client_ctx = client_ctx
        self.clients: dict[str, Client] = {}
        self.env: dict[str, bytes] = {}
        self.log: list[str] = []

    async def client(self, name: str) -> Client:
        c = self.clients.get(name)
        if c is None:
            stream = await trio.open_tcp_stream(self.address.host, self.address.port)
            if self.client_ctx is not None:
                stream = trio.SSLStream(stream, self.client_ctx, server_hostname="localhost")
                await stream.do_handshake()
            c = self.clients[name] = Client(stream)
        return c

    def fail(self, i: int, step: Step, why: str) -> None:
        c = self.case
        head = (
            f"[{' '.join(c.ids)}] {c.name} ({VERSIONS[c.version]}, {c.file}): {c.title}\n"
            f"step {i + 1}: {step}\n{why}"
        )
        raise CaseFailure(head + "\ntranscript:\n  " + "\n  ".join(self.log or ["(nothing)"]))

    async def run(self) -> None:
        for i, step in enumerate(self.case.steps):
            try:
                with trio.fail_after(self.case.timeout):
                    await self.do(i, step)
            except trio.TooSlowError:
                self.fail(i, step, f"nothing matching arrived within {self.case.timeout} s")

    async def do(self, i: int, step: Step) -> None:
        c = await self.client(step.conn)
        if step.op in (">", ">."):
            if step.client_close:
                await trio.aclose_forcefully(c.stream)
                self.log.append(f"{step.conn}> close")
                return
            data = fill(step.send, self.env, f"step {i + 1}")
            self.log.append(f"{step.conn}> {data.hex(' ')}")
            try:
                if step.op == ">.":
                    for b in data:
                        await c.stream.send_all(bytes([b]))
                else:
                    await c.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                self.fail(i, step, f"the broker closed the connection before this send ({e!r})")
            return

        alts = step.expect
        can_close = any(p.close for p in alts)
        want = " | ".join(p.describe() for p in alts)
        while True:
            pkt = await c.peek()
            if pkt is None:
                if can_close or step.op == "<?":
                    self.log.append(f"{step.conn}< (closed)")
                    return
                self.fail(i, step, f"expected: {want}\nbut the broker closed the connection")
            for p in alts:
                if p.close:
                    continue
                bound = p.match(pkt, self.env)
                if bound is not None:
                    c.consume(pkt)
                    self.env.update(bound)
                    self.log.append(f"{step.conn}< {pkt.hex(' ')}")
                    return
            if step.op == "<?":
                return  # optional packet absent: leave this one for the next step
            if step.op == "<~":
                c.consume(pkt)
                self.log.append(f"{step.conn}< {pkt.hex(' ')} (skipped)")
                continue
            self.fail(i, step, f"expected: {want}\nreceived: {pkt.hex(' ')}")

    async def aclose(self) -> None:
        for c in self.clients.values():
            await trio.aclose_forcefully(c.stream)


def _params():
    for case in CASES:
        for transport in case.transports:
            yield pytest.param(case, transport, id=f"{case.name}-{case.version}-{transport}")


@pytest.mark.parametrize("case,transport", list(_params()))
async def test_conformance(case: Case, transport: str, tls_files):
    if case.error:
        pytest.fail(case.error, pytrace=False)
    cfg = broker_config(case, transport, tls_files)
    broker = Broker(cfg)
    failure = None
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(broker.serve)
        scheme = "mqtts" if transport == "tls" else "mqtt"
        address = next(a for a in addresses if a.scheme == scheme)
        runner = Runner(case, address, tls_files[2] if transport == "tls" else None)
        try:
            await runner.run()
        except CaseFailure as e:
            failure = str(e)
        finally:
            await runner.aclose()
            nursery.cancel_scope.cancel()
    if failure is not None:
        pytest.fail(failure, pytrace=False)
