"""`kefu serve` with its SQLite file locked by another process: QoS 1 is not acknowledged,
/readyz says why (503, storage not ready, the reason), the log says it once; when the
lock goes the acknowledgement arrives and /readyz is ready again."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request

from durable_served import WAIT, Client, Kefu, stop_all, write_config


def readyz(base: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=WAIT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def until(pred, what: str):
    """Re-check an observable condition of another process until it holds (bounded)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
    raise AssertionError(f"timed out waiting for {what}")


def test_readyz_and_log_report_a_locked_database_and_its_recovery(tmp_path):
    db = tmp_path / "kefu.db"
    config = write_config(tmp_path / "kefu.toml", {"path": str(db), "sqlite_busy_timeout_ms": 50,
                                                   "commit_timeout": 60.0}, http=True)
    kefu = Kefu(config).start()
    pub = Client(kefu.port, "pub")
    blocker = sqlite3.connect(str(db), isolation_level=None)
    try:
        status, body = readyz(kefu.http)
        assert status == 200 and body["storage"]["ready"] is True, body
        pub.connect()
        blocker.execute("BEGIN IMMEDIATE")  # another process takes the write lock
        info = pub.c.publish("t/1", b"held", qos=1)
        status, body = until(lambda: (r := readyz(kefu.http))[0] == 503 and r, "/readyz to turn 503")
        assert body["checks"]["storage"] is False
        assert "locked" in body["storage"]["reason"] and body["storage"]["pending"] >= 1
        assert not info.is_published()  # nothing acknowledged while it cannot be committed
        blocker.execute("COMMIT")
        info.wait_for_publish(WAIT)
        assert info.is_published()
        status, body = until(lambda: (r := readyz(kefu.http))[0] == 200 and r, "/readyz to recover")
        assert body["storage"]["reason"] == ""
    finally:
        blocker.close()
        stop_all([pub])
        assert kefu.stop() == 0
    log = kefu.log.read_text()
    assert log.count("storage unavailable: sqlite: database is locked") == 1, log
    assert "storage recovered after" in log
