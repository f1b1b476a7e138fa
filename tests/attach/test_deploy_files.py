"""The shipped deployment files say what docs/deploy.md promises: the configs load, the
image runs unprivileged with a /readyz health check, the unit runs `kefu serve` and
checks the config first. (Building the image needs a Docker daemon; not done here.)"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from kefu.config import ConfigError, load
from kefu.config.load import from_dict

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["kefu.toml", "kefu-attach.toml"])
def test_shipped_configs_load(name):
    cfg = load(ROOT / "deploy" / name)
    assert cfg.listeners.http.port == 18083


def test_attach_config_is_external_with_tls():
    b = load(ROOT / "deploy" / "kefu-attach.toml").broker
    assert (b.mode, b.tls, b.port, b.share_group, b.password) == ("external", True, 8883, "kefu", "")


def test_dockerfile_runs_unprivileged_with_a_readyz_health_check():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("root", "0")
    health = text[text.index("HEALTHCHECK"):]
    assert "/readyz" in health.split("ENTRYPOINT")[0]
    assert 'CMD ["serve", "--config", "/etc/kefu/kefu.toml"]' in text
    assert "COPY deploy/kefu.toml /etc/kefu/kefu.toml" in text


def test_systemd_unit_runs_serve_after_a_config_check():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy" / "kefu.service")
    svc = unit["Service"]
    assert svc["User"] == "kefu" and svc["ExecStart"].endswith("kefu serve --config /etc/kefu/kefu.toml")
    assert svc["ExecStartPre"].endswith("kefu config check /etc/kefu/kefu.toml")
    assert svc["KillSignal"] == "SIGTERM" and svc["Restart"] == "always"


@pytest.mark.parametrize("broker, problem", [
    ({"mode": "external"}, "broker.host: required when broker.mode = \"external\""),
    ({"mode": "external", "host": "h", "certfile": "/nonexistent.pem"}, "broker.keyfile: certfile and keyfile go together"),
    ({"mode": "external", "host": "h", "cafile": "/nonexistent.pem", "tls": True}, "broker.cafile: no such file"),
    ({"mode": "external", "host": "h", "server_name": "x"}, "broker.tls: must be true"),
    ({"mode": "external", "host": "h", "share_group": "a/b"}, "broker.share_group: expected"),
    ({"mode": "external", "host": "h", "reconnect_min": 5, "reconnect_max": 1}, "broker.reconnect_max"),
    ({"mode": "externe"}, "broker.mode"),
    ({"mode": "external", "host": "h", "protocol": "4"}, "broker.protocol"),
])
def test_bad_broker_settings_name_the_key(broker, problem):
    with pytest.raises(ConfigError) as e:
        from_dict({"broker": broker})
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_external_mode_needs_the_desk():
    with pytest.raises(ConfigError) as e:
        from_dict({"broker": {"mode": "external", "host": "h"}, "desk": {"enabled": False}})
    assert any(p.startswith("broker.mode:") for p in e.value.problems)
