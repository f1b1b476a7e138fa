"""`kefu config check` runs every check `kefu serve` runs at start (kefu/checks.py):
a file the checker passes is a file serve starts with, and each problem reads the same."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kefu.checks import NO_AGENTS

ROOT = Path(__file__).resolve().parents[1]
HASH = "ab" * 32

# Everything on ephemeral ports, no intent model, the store in the test's folder:
# should a check be missing, serve would start rather than refuse (the test then fails).
BASE = """
[listeners.mqtt]
port = 0
[listeners.ws]
port = 0
[listeners.http]
port = 0
[nlp]
enabled = false
[storage]
path = "{db}"

[[teams]]
id = "general"
name = "General"

[[agents]]
id = "alice"
name = "Alice"
teams = ["general"]
"""

CASES = {
    "agent_team": ('[[agents]]\nid = "bob"\nteams = ["nowhere"]\n',
                   "agents[1].teams: no team 'nowhere'; the teams are: general"),
    "rule_team": ('[[routing.rules]]\nname = "cards"\nintent = ["card_lost"]\nteam = "cards"\n',
                  "routing.rules[0].team: no team 'cards'; the teams are: general"),
    "time_zone": ('[business_hours]\nenabled = true\ntimezone = "Mars/Olympus"\n',
                  "business_hours.timezone: unknown time zone 'Mars/Olympus'"),
    "token_agent": (f'[[api.tokens]]\nname = "x"\nrole = "agent"\nagent = "ghost"\ntoken_sha256 = "{HASH}"\n',
                    "api.tokens[0].agent: no agent 'ghost'; the agents are: alice"),
    "token_hash": ('[[api.tokens]]\nname = "x"\nrole = "agent"\nagent = "alice"\ntoken_sha256 = "not-a-hash"\n',
                   "api.tokens[0].token_sha256: expected 64 hex digits"),
    "token_no_agent": (f'[[api.tokens]]\nname = "x"\nrole = "agent"\ntoken_sha256 = "{HASH}"\n',
                       'api.tokens[0].agent: required when role = "agent"'),
    "token_twice": (f'[[api.tokens]]\nname = "x"\nrole = "operator"\ntoken_sha256 = "{HASH}"\n'
                    f'[[api.tokens]]\nname = "y"\nrole = "operator"\ntoken_sha256 = "{HASH.upper()}"\n',
                    "api.tokens[1].token_sha256: the same token as api.tokens[0]"),
    "reserved_user": ('[[auth.users]]\nusername = "anon-1"\npassword_hash = "scrypt$x"\n',
                      "auth.users: anon-1: names starting with anon: or anon- are kept"),
    "answers_file": ('[bot]\nanswers_file = "no-such-answers.toml"\n', "no-such-answers.toml"),
    "ws_tls_pair": ('[listeners.ws]\ncertfile = "cert.pem"\n',
                    "listeners.ws.keyfile: certfile and keyfile go together"),
    "http_tls_file": ('[listeners.http]\ncertfile = "nope.pem"\nkeyfile = "nope.key"\n',
                      "listeners.http.certfile: no such file: nope.pem"),
    "site_twice": ('[[widget.sites]]\nname = "a"\npublic_token = "t1"\n'
                   '[[widget.sites]]\nname = "b"\npublic_token = "t1"\n',
                   "widget.sites[1].public_token: 't1' is used by widget.sites[0] too"),
    "redis_url": ('[desk]\nstate = "redis"\n', 'desk.state: "redis" needs storage.redis_url'),
    "crm_plugin": ('[crm]\nprovider = "nope"\n', "crm.provider: no CRM plugin 'nope'; installed: "),
    "master_key": ('[storage]\nencrypt_at_rest = true\nmaster_key_env = "KEFU_TEST_UNSET_KEY"\n',
                   "storage.encrypt_at_rest: no master key: set the environment variable KEFU_TEST_UNSET_KEY"),
}


def _write(tmp_path: Path, extra: str, name: str = "kefu.toml") -> Path:
    text = BASE.format(db=tmp_path / "kefu.db")
    # Sections the base already has are merged by appending keys right after their header.
    for header in ("[listeners.ws]\n", "[listeners.http]\n", "[storage]\n"):
        if extra.startswith(header):
            text = text.replace(header, extra, 1)
            extra = ""
    f = tmp_path / name
    f.write_text(text + "\n" + extra, encoding="utf-8")
    return f


def _kefu(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kefu.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_and_serve_report_the_same_problem(tmp_path, case):
    extra, want = CASES[case]
    f = _write(tmp_path, extra)
    checked = _kefu("config", "check", str(f))
    assert checked.returncode == 2, checked.stdout + checked.stderr
    lines = [ln for ln in checked.stderr.splitlines() if want in ln]
    assert lines, checked.stderr
    assert all(ln.startswith(f"{f}: ") for ln in lines)
    assert "Traceback" not in checked.stderr

    served = _kefu("serve", "--config", str(f))
    assert served.returncode == 2, served.stdout + served.stderr
    assert "kefu: bad config" in served.stderr
    for ln in lines:  # the very same lines, key path and fix
        assert ln in served.stderr.splitlines()
    assert "Traceback" not in served.stderr


def test_every_problem_at_once(tmp_path):
    f = _write(tmp_path, CASES["agent_team"][0] + CASES["time_zone"][0] + CASES["token_hash"][0])
    out = _kefu("config", "check", str(f))
    assert out.returncode == 2
    for case in ("agent_team", "time_zone", "token_hash"):
        assert CASES[case][1] in out.stderr


@pytest.mark.parametrize("name", ["demo.toml", "kefu.example.toml"])
def test_shipped_configs_pass(name):
    out = _kefu("config", "check", str(ROOT / "config" / name))
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_check_warns_when_handoffs_reach_no_agent(tmp_path):
    f = _write(tmp_path, "")
    f.write_text(f.read_text().split("[[agents]]")[0], encoding="utf-8")  # the teams, no agents
    out = _kefu("config", "check", str(f))
    assert out.returncode == 0, out.stderr  # a warning, not an error
    assert out.stdout.strip() == f"{f}: ok (1 warning)"
    assert out.stderr.strip() == f"{f}: warning: {NO_AGENTS}"
    # With agents: no warning.
    f2 = _write(tmp_path, "", "agents.toml")
    out = _kefu("config", "check", str(f2))
    assert out.returncode == 0 and out.stdout.strip() == f"{f2}: ok" and out.stderr == ""


def test_serve_logs_the_same_warning_once(tmp_path):
    f = _write(tmp_path, "")
    f.write_text(f.read_text().split("[[agents]]")[0], encoding="utf-8")
    p = subprocess.Popen([sys.executable, "-m", "kefu.cli", "serve", "--config", str(f)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:  # started once the console's address is printed
            if "agent console on" in line:
                break
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    hits = [ln for ln in err.splitlines() if NO_AGENTS in ln]
    assert len(hits) == 1 and "WARNING" in hits[0], err
