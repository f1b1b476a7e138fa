"""Start and observe the three brokers of ``broker_bench.py``: kefu, Mosquitto, amqtt.

Each runs in a process of its own on a free loopback port, so that its resident
memory (VmRSS) and CPU time can be read from /proc/<pid> while the load generator
(other processes) drives it. Mosquitto is the system binary started with a
throw-away config file of our own (``listener PORT 127.0.0.1``, anonymous,
``sys_interval 1``); the system Mosquitto service on 1883 is never used.
Every broker inherits the raised open-file limit (10,000 connections).
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MOSQUITTO = "/usr/sbin/mosquitto"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class BrokerProcess:
    """One running broker: ``name``, ``port``, ``pid``, ``versions`` it speaks."""

    def __init__(self, name: str, versions: tuple[int, ...]) -> None:
        self.name = name
        self.versions = versions
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.log_path = self.tmp / "broker.log"
        self.version_text = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> BrokerProcess:
        raise NotImplementedError

    def _wait_port(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start (status {self.proc.returncode}):\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {self.port} within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time of the broker process so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def restart(self) -> None:
        """A fresh process (memory phases need a baseline no earlier phase has inflated)."""
        self.stop(keep_tmp=True)
        self.start()

    def stop(self, keep_tmp: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if not keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


class PythonBroker(BrokerProcess):
    """kefu or amqtt through ``bench_server.py``."""

    def start(self) -> BrokerProcess:
        self.port = free_port()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "bench_server.py"), self.name, str(self.port)],
            stdout=subprocess.PIPE, stderr=log, preexec_fn=raise_nofile,
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY"):
            self.proc.wait(5)
            raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
        self._wait_port()
        if self.name == "kefu":
            from kefu import __version__
            self.version_text = f"kefu {__version__} (CPython {sys.version.split()[0]}, trio)"
        else:
            from importlib.metadata import version
            self.version_text = f"amqtt {version('amqtt')} (CPython {sys.version.split()[0]}, asyncio)"
        return self


class KefuServe(BrokerProcess):
    """The whole product, ``kefu serve``, with its defaults: the desk's ACL hooks on the broker,
    MQTT state persisted in SQLite (ack after commit), the intent model, the bridge, tuned GC.

    Only the listeners (free loopback ports), the database file (the temporary folder),
    warnings-only logging and ``mqtt.sys_interval = 1`` differ from a fresh install.

    ``extra``: more config (``kefu-bare``: the desk and the model off). ``tree``: run the
    code of another checkout (``kefu-LABEL`` with ``--tree LABEL=DIR``), imported from there.
    """

    extra = ""
    storage_extra = ""  # more [storage] keys (kefu-unowed)
    tree: str | None = None
    label = "desk, SQLite persistence, intent model, bridge"

    def __init__(self, name: str, versions: tuple[int, ...], extra: str = "", tree: str | None = None,
                 label: str | None = None) -> None:
        super().__init__(name, versions)
        self.extra = extra
        self.tree = tree
        if label:
            self.label = label

    def start(self) -> BrokerProcess:
        self.port = free_port()
        ws, http = free_port(), free_port()
        conf = self.tmp / "kefu.toml"
        conf.write_text(
            f'[listeners.mqtt]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'[listeners.ws]\nhost = "127.0.0.1"\nport = {ws}\n'
            f'[listeners.http]\nhost = "127.0.0.1"\nport = {http}\n'
            f'[storage]\npath = "{self.tmp / "kefu.db"}"\n{self.storage_extra}'
            '[mqtt]\nsys_interval = 1\n[log]\nlevel = "warning"\n' + self.extra
        )
        log = open(self.log_path, "ab")
        env = None
        cmd = [str(Path(sys.executable).parent / "kefu"), "serve", "--config", str(conf)]
        if self.tree:
            # Another checkout: its kefu/ with broker/, bridge/, ... linked in (see
            # broker_bench.py --tree) comes first on the path, before the editable install.
            env = dict(os.environ, PYTHONPATH=self.tree)
            cmd = [sys.executable, "-c", "import sys; from kefu.cli import main; sys.exit(main())",
                   "serve", "--config", str(conf)]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, preexec_fn=raise_nofile, cwd=self.tmp, env=env)
        self._wait_port(90)
        from kefu import __version__
        where = f" from {self.tree}" if self.tree else ""
        self.version_text = f"kefu serve {__version__}{where} ({self.label})"
        return self


class Mosquitto(BrokerProcess):
    extra: list[str] = []  # extra mosquitto.conf lines (broker_bench.py --mosquitto-option)

    def start(self) -> BrokerProcess:
        self.port = free_port()
        conf = self.tmp / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "sys_interval 1\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\n"
            "connection_messages false\n"
            + "".join(line + "\n" for line in self.extra)
        )
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, preexec_fn=raise_nofile)
        self._wait_port()
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout
        self.version_text = out.splitlines()[0].strip() if out else "mosquitto"
        return self


def _with_storage(b: KefuServe, keys: str) -> KefuServe:
    b.storage_extra = keys
    return b


def make_brokers(names: list[str]) -> list[BrokerProcess]:
    table = {
        "kefu": lambda: PythonBroker("kefu", (4, 5)),
        "mosquitto": lambda: Mosquitto("mosquitto", (4, 5)),
        "amqtt": lambda: PythonBroker("amqtt", (4,)),  # amqtt 0.12 speaks MQTT 3.1.1 only
        "kefu-serve": lambda: KefuServe("kefu-serve", (4, 5)),
        "kefu-bare": lambda: KefuServe("kefu-bare", (4, 5), "[desk]\nenabled = false\n[nlp]\nenabled = false\n",
                                       label="desk and intent model off, SQLite persistence"),
        "kefu-unowed": lambda: _with_storage(KefuServe("kefu-unowed", (4, 5), label="defaults but "
                                                       "storage.store_unowed_messages = false"),
                                             "store_unowed_messages = false\n"),
    }
    for label, tree in TREES.items():
        name = f"kefu-{label}"
        table[name] = lambda name=name, tree=tree: KefuServe(name, (4, 5), tree=tree, label="defaults")
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"unknown broker(s) {', '.join(unknown)}: kefu-LABEL needs --tree LABEL=DIR")
    return [table[n]() for n in names]


TREES: dict[str, str] = {}  # label -> checkout on PYTHONPATH (broker_bench.py --tree LABEL=DIR)
