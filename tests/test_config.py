"""The config loader names the key path and the fix; the reference file stays true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kefu.config import Config, ConfigError, from_dict, load
from kefu.config.reference import example_toml

ROOT = Path(__file__).resolve().parents[1]


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    return e.value.problems


def test_defaults_without_file():
    cfg = load(None)
    assert cfg.listeners.mqtt.port == 1883
    assert cfg.auth.allow_anonymous is True


def test_wrong_type_names_key_and_expectation():
    assert problems({"listeners": {"mqtt": {"port": "abc"}}}) == [
        'listeners.mqtt.port: expected an integer 0-65535, got "abc"'
    ]


def test_out_of_range_and_bool_for_int():
    assert problems({"listeners": {"mqtt": {"port": 70000}}})[0].startswith("listeners.mqtt.port: expected an integer 0-65535")
    assert problems({"mqtt": {"receive_maximum": True}}) == ["mqtt.receive_maximum: expected an integer, got true"]


def test_unknown_key_is_an_error_and_lists_known_keys():
    [msg] = problems({"mqtt": {"recieve_maximum": 10}})
    assert msg.startswith("mqtt.recieve_maximum: unknown key")
    assert "receive_maximum" in msg


def test_every_problem_reported_at_once():
    got = problems({"listeners": {"mqtt": {"port": -1}}, "log": {"level": "loud"}, "nope": 1})
    assert len(got) == 3
    assert any(p.startswith("log.level: expected one of") for p in got)


def test_list_entries_are_typed():
    got = problems({"auth": {"users": [{"username": "a", "password_hash": "plain"}]}})
    assert got == ['auth.users[0].password_hash: expected a hash made by `kefu passwd`, starting with "scrypt$"']
    got = problems({"auth": {"acl": [{"action": "read"}]}})
    assert got[0].startswith("auth.acl[0].action: expected one of")


def test_tls_needs_files(tmp_path):
    got = problems({"listeners": {"mqtts": {"enabled": True, "certfile": str(tmp_path / "none.pem")}}})
    assert any("listeners.mqtts.certfile: no such file" in p for p in got)
    assert any("listeners.mqtts.keyfile: required" in p for p in got)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.toml")


def test_reference_file_is_generated_and_loads_to_defaults():
    committed = (ROOT / "config" / "kefu.example.toml").read_text()
    assert committed == example_toml(), "regenerate with: kefu config example > config/kefu.example.toml"
    assert load(ROOT / "config" / "kefu.example.toml") == Config()


def test_config_check_cli(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[listeners.mqtt]\nport = 1884\n")
    bad = tmp_path / "bad.toml"
    bad.write_text('[listeners.mqtt]\nport = "abc"\n')
    run = lambda f: subprocess.run([sys.executable, "-m", "kefu.cli", "config", "check", str(f)],
                                   capture_output=True, text=True)
    ok = run(good)
    assert ok.returncode == 0 and "ok" in ok.stdout
    ko = run(bad)
    assert ko.returncode == 2
    assert 'listeners.mqtt.port: expected an integer 0-65535, got "abc"' in ko.stderr
    assert "Traceback" not in ko.stderr


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "kefu.cli", "--version"], capture_output=True, text=True)
    assert out.stdout.strip().startswith("kefu ")
    out = subprocess.run([sys.executable, "-m", "kefu.cli", "serve", "--help"], capture_output=True, text=True)
    assert "--config" in out.stdout and "SIGTERM" in out.stdout


def test_config_check_runs_subsystem_checks(tmp_path):
    bad = tmp_path / "acl.toml"
    bad.write_text('[[auth.acl]]\ntopic = "a/#/b"\n')
    out = subprocess.run([sys.executable, "-m", "kefu.cli", "config", "check", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "auth.acl[0].topic:" in out.stderr and "Traceback" not in out.stderr


def test_deep_checks_name_alert_and_storage_keys():
    from kefu.checks import deep_check

    cfg = from_dict({"storage": {"backend": "postgres"},
                     "alerts": [{"metric": "no_such_series", "op": ">", "value": 1, "webhook": "http://127.0.0.1:9/x"}]})
    got = deep_check(cfg)
    assert any(p.startswith("storage.dsn: required") for p in got)
    assert any(p.startswith("alerts[0].metric: unknown series") for p in got)


def test_shipped_config_files_name_only_paths_a_user_has():
    """Comments in config/*.toml point at files in kefu itself, never at a development machine's."""
    import re

    for f in sorted((ROOT / "config").glob("*.toml")):
        text = f.read_text(encoding="utf-8")
        assert "/work/" not in text and "shared/data" not in text, f
    answers = (ROOT / "config" / "answers.toml").read_text(encoding="utf-8")
    for rel in re.findall(r"(nlp/models/\S+\.json)", answers):
        assert (ROOT / rel).is_file(), rel


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path):
    # found by tests/fuzz/fuzz_edges.py: this raised UnicodeDecodeError
    from kefu.config import ConfigError, load

    p = tmp_path / "bad.toml"
    p.write_bytes(b'[mqtt]\nmax_packet_size = 1\n# \xed\xa0\x80\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(p)
