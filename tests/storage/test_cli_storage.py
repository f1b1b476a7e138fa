"""`kefu db`, `kefu keys`, `kefu search` as an operator runs them (in-process main())."""

from __future__ import annotations

import re

import pytest
import trio

from kefu.cli import main
from kefu.config import load
from kefu.storage import ChatMessage, open_store


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A config file using SQLite with at-rest encryption; the master key in a file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KEFU_MASTER_KEY", raising=False)
    (tmp_path / "kefu.toml").write_text(
        '[storage]\npath = "data/kefu.db"\nmaster_key_file = "master.key"\nencrypt_at_rest = true\n')
    return tmp_path


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_db_upgrade_and_status(site, capsys):
    code, out, _ = run(capsys, "db", "status", "-c", "kefu.toml")
    assert code == 1 and "kefu db upgrade" in out
    code, out, _ = run(capsys, "db", "upgrade", "-c", "kefu.toml")
    assert code == 0 and "0001 core" in out and "search: fts5 trigram" in out
    code, out, _ = run(capsys, "db", "status", "-c", "kefu.toml")
    assert code == 0 and re.search(r"0002 search\s+applied", out)


def test_db_on_postgres(pg_cfg, tmp_path, capsys):
    (tmp_path / "pg.toml").write_text(
        f'[storage]\nbackend = "postgres"\ndsn = "{pg_cfg.dsn}"\npg_schema = "{pg_cfg.pg_schema}"\n')
    code, out, _ = run(capsys, "db", "status", "-c", str(tmp_path / "pg.toml"))
    assert code == 1 and "pending" in out
    code, out, _ = run(capsys, "db", "upgrade", "-c", str(tmp_path / "pg.toml"))
    assert code == 0 and "timescaledb:" in out and "pg_trgm:" in out
    code, out, _ = run(capsys, "db", "status", "-c", str(tmp_path / "pg.toml"))
    assert code == 0 and re.search(r"0001 core\s+applied", out)


def test_keys_lifecycle(site, capsys):
    code, out, _ = run(capsys, "keys", "list", "-c", "kefu.toml")
    assert code == 2  # no master key yet
    code, out, _ = run(capsys, "keys", "new-master", "master.key")
    assert code == 0 and "fingerprint" in out
    assert run(capsys, "keys", "new-master", "master.key")[0] == 2  # never overwritten
    code, out, _ = run(capsys, "keys", "new-device", "dev-1", "-c", "kefu.toml")
    assert code == 0
    kid = re.search(r"key id (0x[0-9a-f]{8})$", out, re.M).group(1)  # as docs/sm4-envelope.md writes it
    key = re.search(r"^key ([0-9a-f]{32})$", out, re.M).group(1)
    assert key not in (site / "data" / "kefu.db").read_bytes().hex()  # stored only wrapped
    assert run(capsys, "keys", "new-device", "dev-1", "-c", "kefu.toml")[0] == 1  # already has one
    code, out, _ = run(capsys, "keys", "list", "-c", "kefu.toml")
    assert code == 0 and re.search(rf"{kid}\s+device\s+active.*dev-1", out)
    assert key not in out
    code, out, _ = run(capsys, "keys", "revoke", "dev-1", "-c", "kefu.toml")
    assert code == 0 and f"revoked key {kid}" in out
    code, out, _ = run(capsys, "keys", "list", "-c", "kefu.toml")
    assert re.search(rf"{kid}\s+device\s+revoked", out)
    assert run(capsys, "keys", "revoke", "nobody", "-c", "kefu.toml")[0] == 2
    # revoking by the key id as printed (hex), or in decimal
    for form in (str, lambda k: str(int(k, 16))):
        out = run(capsys, "keys", "new-device", "dev-2", "--replace", "-c", "kefu.toml")[1]
        kid2 = re.search(r"key id (0x[0-9a-f]{8})$", out, re.M).group(1)
        code, out, _ = run(capsys, "keys", "revoke", form(kid2), "-c", "kefu.toml")
        assert code == 0 and f"revoked key {kid2} of device dev-2" in out


def test_rotate_and_search(site, capsys, monkeypatch):
    run(capsys, "keys", "new-master", "master.key")
    cfg = load("kefu.toml").storage

    async def seed():
        async with open_store(cfg, background=False) as store:
            await store.append_message(ChatMessage("conv-1", "customer", "发票什么时候开？invoice please"))
            await store.append_message(ChatMessage("conv-2", "customer", "退货 return"))

    trio.run(seed)
    code, out, _ = run(capsys, "keys", "rotate", "-c", "kefu.toml")
    assert code == 0 and "re-encrypted 2 rows" in out and "retired keys: " in out
    code, out, err = run(capsys, "search", "发票", "-c", "kefu.toml")
    assert code == 0 and "conv-1" in out and "[发票]" in out and "(1 match)" in err
    code, out, _ = run(capsys, "search", "nothing-like-this", "-c", "kefu.toml")
    assert code == 1 and out == ""
    # without the master key the encrypted transcripts cannot be read, and it says so
    monkeypatch.setenv("KEFU_MASTER_KEY", "00" * 16)
    code, _, err = run(capsys, "search", "发票", "-c", "kefu.toml")
    assert code == 1 and "wrong master key" in err


def test_bad_config_is_exit_2(site, capsys):
    (site / "bad.toml").write_text('[storage]\nbackend = "mysql"\n')
    with pytest.raises(SystemExit) as e:
        main(["db", "status", "-c", "bad.toml"])
    assert e.value.code == 2
    assert "storage.backend" in capsys.readouterr().err
