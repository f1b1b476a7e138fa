"""The operator CLI as a user runs it (a subprocess): `kefu status` against a live node on SQLite
and on PostgreSQL, and without one; `kefu stats` from stored history; agents and devices."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid

import pytest
import trio

from kefu.config.model import Storage
from kefu.storage import open_store
from kefu.storage.base import MetricSample
from kefu.timeseries import History
from ops_stack import config, ops_stack

MASTER = "00112233445566778899aabbccddeeff"


async def kefu(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    p = await trio.run_process([sys.executable, "-m", "kefu.cli", *args], capture_stdout=True, capture_stderr=True,
                               check=False, env={**os.environ, **(env or {})})
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def node_toml(http_url: str, storage: str) -> str:
    port = http_url.rsplit(":", 1)[1]
    return f'[listeners.http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n\n{storage}'


async def test_status_of_a_running_node_on_sqlite(tmp_path):
    cfg = config(tmp_path)
    async with ops_stack(cfg) as st:
        await st.desk.agent_action("alice", "sign_in")
        await st.desk.customer_message("mqtt", "cust-1", "hello, anyone?")  # handed to alice
        await st.desk.customer_message("mqtt", "vip-1", "hi")
        await st.desk.agent_action(None, "transfer", "cv-2", team="vip")  # bob is offline: waits in vip
        f = write(tmp_path / "k.toml", node_toml(st.http, f'[storage]\npath = "{tmp_path / "kefu.db"}"\n'))
        rc, out, err = await kefu("status", "-c", f)
    assert rc == 0, err
    assert out.startswith("kefu ") and "Listening" in out
    assert "listeners.mqtt" in out and f"mqtt://127.0.0.1:{st.mqtt_port}" in out
    assert "Storage     sqlite at" in out and "roll-ups    metric_rollups_1m (kefu roll-up job)" in out
    assert "Queues      1 waiting" in out and "vip" in out
    assert "Agents      1 online, 0 away, 1 offline; occupancy 25%" in out
    assert "Alerts      none firing" in out


async def test_status_on_postgres_says_whether_timescaledb_is_active(tmp_path, postgres_dsn):
    schema = "kefu_ops_" + uuid.uuid4().hex[:10]
    storage = {"backend": "postgres", "dsn": postgres_dsn, "pg_schema": schema}
    try:
        async with ops_stack(config(tmp_path, storage=storage)) as st:
            f = write(tmp_path / "k.toml", node_toml(st.http, f'[storage]\nbackend = "postgres"\ndsn = "{postgres_dsn}"\n'))
            rc, out, err = await kefu("status", "-c", f)
            ts = st.store.features.get("timescaledb", "")
    finally:
        import psycopg

        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    assert rc == 0, err
    assert "Storage     postgres at" in out and f"schema {schema}" in out
    active = "active" if ts.startswith("installed") and "hypertables" in ts else "not active"
    assert f"TimescaleDB {active} ({ts})" in out


async def test_status_without_a_node_says_so(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    f = write(tmp_path / "k.toml", f'[listeners.http]\nenabled = true\nhost = "127.0.0.1"\nport = {port}\n')
    rc, out, err = await kefu("status", "-c", f)
    assert rc == 1 and out == ""
    assert f"no kefu node answers at http://127.0.0.1:{port}" in err and "is `kefu serve` running" in err
    rc, _, err = await kefu("status", "-c", write(tmp_path / "off.toml", "[listeners.http]\nenabled = false\n"))
    assert rc == 2 and "listeners.http.enabled is false" in err


async def test_stats_prints_tables_from_stored_history(tmp_path):
    db = tmp_path / "kefu.db"
    now = time.time()
    async with open_store(Storage(path=str(db)), background=False) as store:
        hist = History(store)
        await hist.setup()
        await store.record_metrics([MetricSample("queue_length", v, now - 600 + 60 * i, "team=general")
                                    for i, v in enumerate([1.0, 3.0, 2.0, 6.0])])
        await store.record_metrics([MetricSample("queue_length", 9.0, now - 3 * 86400, "team=general")])
        await store.run_in_writer(lambda conn: None)
        hist.watermark = now - 4 * 86400
        await hist.rollup(now, lag=300)  # the older samples into roll-ups; the last minutes stay raw
    f = write(tmp_path / "k.toml", f'[storage]\npath = "{db}"\n')
    rc, out, err = await kefu("stats", "--since", "1h", "--series", "queue_length", "-c", f)
    assert rc == 0, err
    head, cols, row = out.splitlines()[:3]
    assert head.startswith("kefu stats, last 1h (20 s buckets, raw samples)")
    assert cols.split() == ["SERIES", "LABELS", "LAST", "AVG", "MIN", "MAX", "TREND"]
    assert row.split()[:6] == ["queue_length", "team=general", "6.00", "3.00", "1.00", "6.00"]
    rc, out, err = await kefu("stats", "--since", "7d", "--series", "queue_length", "-c", f)
    assert rc == 0, err
    assert "1-minute roll-ups (metric_rollups_1m)" in out
    assert out.splitlines()[2].split()[4:6] == ["1.00", "9.00"]  # the 3-day-old sample is in the 7-day range
    rc, _, err = await kefu("stats", "--since", "yesterday", "-c", f)
    assert rc == 2 and "--since: expected a duration like 15m, 1h, 24h or 7d" in err
    rc, _, err = await kefu("stats", "--series", "nope", "-c", f)
    assert rc == 2 and "--series: unknown nope" in err


async def test_agents_add_and_list(tmp_path):
    f = write(tmp_path / "k.toml", '[[teams]]\nid = "general"\n\n[[teams]]\nid = "vip"\n')
    rc, out, err = await kefu("agents", "add", "carol", "--name", "Carol", "--teams", "vip,general",
                              "--capacity", "3", "--token", "-c", f)
    assert rc == 0, err
    assert "added agent carol" in out and "token for carol (shown once" in out
    token = out.split("): ")[1].split()[0]
    text = (tmp_path / "k.toml").read_text()
    assert '[[agents]]\nid = "carol"\nname = "Carol"\nteams = ["vip", "general"]' in text
    assert token not in text and 'role = "agent"' in text
    rc, _, err = await kefu("agents", "add", "carol", "-c", f)
    assert rc == 2 and "already in" in err
    rc, _, err = await kefu("agents", "add", "dave", "--teams", "billing", "-c", f)
    assert rc == 2 and "unknown team(s) billing" in err
    assert "dave" not in (tmp_path / "k.toml").read_text()  # nothing written on a refusal
    rc, out, err = await kefu("agents", "list", "-c", f)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "TEAMS", "SKILLS", "CAPACITY", "TIER", "STATUS", "LOAD"]
    assert lines[1].split() == ["carol", "Carol", "vip,general", "-", "3", "0", "-", "-"]
    assert "live status unknown" in out


async def test_agents_list_shows_live_status_from_the_node(tmp_path):
    cfg = config(tmp_path, agents=[{"id": "alice", "name": "Alice", "teams": ["general"], "capacity": 4}],
                 teams=[{"id": "general"}])
    async with ops_stack(cfg) as st:
        await st.desk.agent_action("alice", "sign_in")
        f = write(tmp_path / "k.toml", node_toml(st.http, '[[teams]]\nid = "general"\n\n[[agents]]\nid = "alice"\n'
                                                 'name = "Alice"\nteams = ["general"]\ncapacity = 4\n'))
        rc, out, err = await kefu("agents", "list", "-c", f)
    assert rc == 0, err
    assert out.splitlines()[1].split()[-2:] == ["online", "0/4"]


async def test_devices_add_and_list_with_their_sm4_keys(tmp_path):
    f = write(tmp_path / "k.toml", f'[storage]\npath = "{tmp_path / "kefu.db"}"\n')
    env = {"KEFU_MASTER_KEY": MASTER}
    rc, out, err = await kefu("devices", "add", "pump-7", "-c", f, env=env)
    assert rc == 0, err
    assert "device pump-7: key id" in out and len(out.split("key ")[2].split()[0]) == 32  # the 128-bit key, once
    rc, out, err = await kefu("devices", "list", "-c", f, env=env)
    assert rc == 0, err
    header, row = out.splitlines()[:2]
    assert header.split() == ["DEVICE", "KEY", "ID", "STATE", "CREATED", "MQTT", "SESSION"]
    assert row.split()[0] == "pump-7" and row.split()[2] == "active" and row.split()[-1] == "-"
    rc, _, err = await kefu("devices", "add", "pump-7", "-c", f, env=env)
    assert rc == 1 and "already has active key" in err
    rc, _, err = await kefu("devices", "list", "-c", f, env={"KEFU_MASTER_KEY": ""})
    assert rc == 2 and "no master key" in err


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("24h", 86400), ("7d", 604800)])
def test_since_durations(text, seconds):
    from kefu.cli_ops import parse_since

    assert parse_since(text) == seconds
