"""Plugins by entry point (kefu.plugins, kefu.crm), settings from the shipped configs, `kefu desk`."""

from __future__ import annotations

import pytest

from kefu import contacts, hooks
from kefu.cli import main
from kefu.config import Config, load
from kefu.contacts import CrmSettings
from kefu.settings import from_config, from_file

from .conftest import ROOT


class FakeEP:
    def __init__(self, name, obj, value="fake:obj"):
        self.name, self.obj, self.value = name, obj, value

    def load(self):
        if isinstance(self.obj, Exception):
            raise self.obj
        return self.obj


def test_desk_plugins_register_through_entry_points(monkeypatch):
    def setup(h):
        h.register("message_created", lambda p: None)

    monkeypatch.setattr(hooks, "entry_points", lambda group: [FakeEP("audit", setup)] if group == "kefu.plugins" else [])
    h = hooks.DeskHooks()
    assert hooks.load_plugins(h) == ["audit"] and h.active("message_created")

    def bad(h):
        h.register("on_mesage", print)

    monkeypatch.setattr(hooks, "entry_points", lambda group: [FakeEP("typo", bad)])
    with pytest.raises(hooks.HookError, match="desk plugin 'typo'.*unknown desk hook 'on_mesage'"):
        hooks.load_plugins(hooks.DeskHooks())
    monkeypatch.setattr(hooks, "entry_points", lambda group: [FakeEP("gone", ImportError("no module x"))])
    with pytest.raises(hooks.HookError, match="failed to import"):
        hooks.load_plugins(hooks.DeskHooks())


def test_crm_plugin_from_entry_point(monkeypatch):
    class Static:
        def __init__(self, settings):
            self.settings = settings

        async def lookup(self, contact):
            return {"tier": "vip"}

    monkeypatch.setattr(contacts, "entry_points", lambda group: [FakeEP("static", Static)])
    crm = contacts.load_crm(CrmSettings(provider="static"))
    assert isinstance(crm, Static) and crm.settings.provider == "static"


def test_shipped_configs_build_settings():
    assert from_config(Config()).router.default.team == "general"
    assert from_config(load(ROOT / "config" / "kefu.example.toml")).teams == {"general": "general"}
    demo = from_file(ROOT / "config" / "demo.toml")
    assert demo.teams.keys() == {"general", "vip", "devices"} and len(demo.answers.answers) >= 30
    assert demo.canned["greet"].startswith("Hi {contact.name|there}")


def test_kefu_desk_cli(capsys, tmp_path):
    assert main(["desk", "check", str(ROOT / "config" / "demo.toml")]) == 0
    assert "ok (3 teams, 4 agents, 3 routing rules" in capsys.readouterr().out
    assert main(["desk", "rules", str(ROOT / "config" / "demo.toml")]) == 0
    assert "lost-or-stolen-card" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text('[[teams]]\nid = "general"\n[[routing.rules]]\nteam = "nope"\n[bot]\nanswers_file = "missing.toml"\n'
                   '[[desk.canned]]\ncode = "x"\ntext = "{undefined}"\n')
    assert main(["desk", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "routing.rules[0].team: no team 'nope'" in err
    assert "missing.toml: no such file" in err
    assert "desk.canned[0].text: unknown variable {undefined}" in err
