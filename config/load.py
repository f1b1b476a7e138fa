"""TOML -> typed Config, with errors that name the key path and the fix.

Unknown keys are errors (a typo must not silently fall back to a default). Every
problem in a file is collected, so `kefu config check` reports them all at once.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
import re
from pathlib import Path

from .model import LIST_ENTRIES, Config


class ConfigError(Exception):
    """One or more problems in a config file; ``problems`` lists "key.path: message" lines."""

    def __init__(self, problems: list[str], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + ("\n" + head).join(problems))


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list"}


def _describe(value: object) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _build(cls: type, data: dict, path: str, problems: list[str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            problems.append(f"{where}: unknown key; known keys here: {known}")
            continue
        f = fields[key]
        want = hints[key]
        if dataclasses.is_dataclass(want):
            if not isinstance(value, dict):
                problems.append(f"{where}: expected a table ([{where}]), got {_describe(value)}")
                continue
            kwargs[key] = _build(want, value, where, problems)
            continue
        if want is list:
            if not isinstance(value, list):
                problems.append(f"{where}: expected a list, got {_describe(value)}")
                continue
            entry = LIST_ENTRIES.get(where)
            if entry is not None:
                items = []
                for i, item in enumerate(value):
                    if not isinstance(item, dict):
                        problems.append(f"{where}[{i}]: expected a table ([[{where}]]), got {_describe(item)}")
                        continue
                    items.append(_build(entry, item, f"{where}[{i}]", problems))
                value = items
            kwargs[key] = value
            continue
        if want is dict:
            if not isinstance(value, dict):
                problems.append(f"{where}: expected a table, got {_describe(value)}")
                continue
            kwargs[key] = value
            continue
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            expect = getattr(f.metadata.get("check"), "expect", None) or _TYPE_NAMES.get(want, want.__name__)
            problems.append(f"{where}: expected {expect}, got {_describe(value)}")
            continue
        check = f.metadata.get("check")
        if check is not None:
            msg = check(value)
            if msg:
                problems.append(f"{where}: {msg}, got {_describe(value)}")
                continue
        kwargs[key] = value
    return cls(**kwargs)


def from_dict(data: dict, source: str = "") -> Config:
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    if not problems:
        problems.extend(validate(cfg))
    if problems:
        raise ConfigError(problems, source)
    return cfg


def validate(cfg: Config) -> list[str]:
    """Checks that span several keys."""
    problems = []
    tls = cfg.listeners.mqtts
    if tls.enabled:
        for key in ("certfile", "keyfile"):
            value = getattr(tls, key)
            if not value:
                problems.append(f"listeners.mqtts.{key}: required when listeners.mqtts.enabled = true")
            elif not Path(value).is_file():
                problems.append(f"listeners.mqtts.{key}: no such file: {value}")
    problems.extend(_attach_problems(cfg.broker))
    if cfg.broker.mode == "external" and not cfg.desk.enabled:
        problems.append('broker.mode: "external" attaches the desk to your broker; it needs desk.enabled = true')
    for i, user in enumerate(cfg.auth.users):
        if not user.username:
            problems.append(f"auth.users[{i}].username: must not be empty")
        if not user.password_hash.startswith("scrypt$"):
            problems.append(
                f"auth.users[{i}].password_hash: expected a hash made by `kefu passwd`, starting with \"scrypt$\""
            )
    return problems


def _attach_problems(b) -> list[str]:
    """[broker]: what external (attach) mode needs."""
    if b.mode != "external":
        return []
    problems = []
    if not b.host:
        problems.append('broker.host: required when broker.mode = "external" (the external broker\'s address)')
    if bool(b.certfile) != bool(b.keyfile):
        problems.append("broker.keyfile: certfile and keyfile go together" if b.certfile
                        else "broker.certfile: certfile and keyfile go together")
    for key in ("cafile", "certfile", "keyfile", "password_file"):
        value = getattr(b, key)
        if value and not Path(value).is_file():
            problems.append(f"broker.{key}: no such file: {value}")
    if (b.cafile or b.certfile or b.server_name) and not b.tls:
        problems.append("broker.tls: must be true when broker.cafile, certfile or server_name is set")
    if b.reconnect_max < b.reconnect_min:
        problems.append("broker.reconnect_max: must not be less than broker.reconnect_min")
    if b.share_group and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", b.share_group):
        problems.append("broker.share_group: expected 1-64 characters from A-Z a-z 0-9 _ . - (or empty: one node)")
    if b.client_id and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", b.client_id):
        problems.append("broker.client_id: expected 1-64 characters from A-Z a-z 0-9 _ . : -")
    return problems


def load(path: str | Path | None) -> Config:
    """Load a config file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["no such file"], str(p)) from None
    except OSError as e:
        raise ConfigError([f"cannot read: {e.strerror}"], str(p)) from None
    except UnicodeDecodeError as e:  # found by tests/fuzz: a config file must be UTF-8 text
        raise ConfigError([f"not UTF-8 text (byte {e.start})"], str(p)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"not valid TOML: {e}"], str(p)) from None
    return from_dict(data, str(p))
