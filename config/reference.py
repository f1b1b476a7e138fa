"""Generate the configuration reference (config/kefu.example.toml) from config/model.py.

The example file is generated, never hand-written, so it cannot drift from the code:
every key appears with its default and its meaning. ``kefu config example`` prints it;
``tests/test_config.py`` checks the committed file is up to date.
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing

from .model import LIST_ENTRIES, Config

HEADER = """\
# kefu configuration reference.
#
# Every key with its default value and what it means. This file is generated from
# config/model.py by `kefu config example`; a config file needs only the keys it changes.
# Check a file with `kefu config check FILE`. Unknown keys are errors.
"""


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def _comment(text: str, prefix: str = "# ") -> list[str]:
    return [prefix + line for line in textwrap.wrap(text, 88 - len(prefix))] or [prefix.rstrip()]


def _section(cls: type, path: str, out: list[str]) -> None:
    hints = typing.get_type_hints(cls)
    scalars, tables = [], []
    for f in dataclasses.fields(cls):
        (tables if dataclasses.is_dataclass(hints[f.name]) else scalars).append(f)
    if scalars and path:
        out.append("")
        out.append(f"[{path}]")
    instance = cls()
    for f in scalars:
        where = f"{path}.{f.name}" if path else f.name
        help_text = f.metadata.get("help", "")
        entry = LIST_ENTRIES.get(where)
        out.extend(_comment(help_text))
        if entry is not None:
            out.append(f"# Each entry ([[{where}]]) has these keys:")
            ex = entry()
            for ef in dataclasses.fields(entry):
                out.append(f"#   {ef.name} = {_toml_value(getattr(ex, ef.name))}")
                out.extend(_comment(ef.metadata.get("help", ""), "#       "))
            out.append(f"{f.name} = []")
        else:
            out.append(f"{f.name} = {_toml_value(getattr(instance, f.name))}")
    for f in tables:
        _section(hints[f.name], f"{path}.{f.name}" if path else f.name, out)


def example_toml() -> str:
    out: list[str] = [HEADER.rstrip()]
    _section(Config, "", out)
    return "\n".join(out) + "\n"
