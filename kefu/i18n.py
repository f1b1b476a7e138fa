"""Message catalogues: every text kefu shows a person, in English and Simplified Chinese.

One JSON file per language under ``kefu/locales/`` (``en.json``, ``zh-CN.json``), flat
keys grouped by dotted prefix (``widget.*``, ``console.*``, ``dashboard.*``, ``index.*``
for the pages; ``desk.*``, ``bot.*``, ``alarm.*`` for what the server writes into
conversations). The pages load theirs from ``GET /i18n?lang=...`` (the bridge) or
``GET /ops/i18n?lang=...`` (the dashboard), the desk formats its system messages with
``text``. Placeholders are ``{name}``, the same in Python and in the pages' scripts.

Language tags are matched loosely (``zh``, ``zh-Hans``, ``zh_CN``, ``zh-SG`` and the
Traditional tags all read Simplified Chinese, the one Chinese catalogue there is;
``en-GB`` reads English); ``pick`` takes the first supported tag of a preference list,
as a browser's ``navigator.languages`` gives it.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources
from typing import Iterable

LANGUAGES = ("en", "zh-CN")
DEFAULT = "en"
NAMES = {"en": "English", "zh-CN": "简体中文"}
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def normalize(tag: object) -> str | None:
    """A language tag -> one of LANGUAGES, or None when no catalogue fits it."""
    if not isinstance(tag, str):
        return None
    t = tag.strip().replace("_", "-").lower()
    if not t:
        return None
    primary = t.split("-", 1)[0]
    if primary == "zh":
        return "zh-CN"
    if primary == "en":
        return "en"
    return None


def pick(tags: Iterable[object] | str | None, default: str | None = DEFAULT) -> str | None:
    """The first of ``tags`` (a list, or a comma-separated string like Accept-Language
    without weights) that a catalogue serves; ``default`` when none does."""
    if tags is None:
        return default
    if isinstance(tags, str):
        tags = [p.split(";", 1)[0] for p in tags.split(",")]
    for tag in tags:
        lang = normalize(tag)
        if lang is not None:
            return lang
    return default


@lru_cache(maxsize=None)
def catalogue(lang: str) -> dict[str, str]:
    """The whole catalogue of one language (as shipped; raises KeyError for an unknown one)."""
    if lang not in LANGUAGES:
        raise KeyError(f"no message catalogue for {lang!r}; there are: {', '.join(LANGUAGES)}")
    raw = resources.files("kefu").joinpath("locales", f"{lang}.json").read_text(encoding="utf-8")
    doc = json.loads(raw)
    return {k: v for k, v in doc.items() if not k.startswith("_")}


def document(wanted: str | None) -> dict:
    """What ``GET /i18n?lang=zh-TW,en`` answers: the catalogue of the first language served."""
    lang = pick(wanted or "")
    return {"language": lang, "languages": dict(NAMES), "messages": catalogue(lang)}


HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
LATIN = re.compile(r"[A-Za-z]")


def guess(text: str) -> str | None:
    """"zh-CN" for a text that is clearly Chinese (two Han characters or more, at least a third of its
    letters); None otherwise -- a code like "E4" or a short English line says too little to switch."""
    han = len(HAN.findall(text))
    return "zh-CN" if han >= 2 and han * 3 >= han + len(LATIN.findall(text)) else None


def fill(template: str, values: dict) -> str:
    """Replace ``{name}`` by ``values[name]``; unknown names stay as written."""
    return PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def text(lang: str | None, key: str, **values) -> str:
    """The catalogue text for ``key`` in ``lang`` (English when that language lacks it), filled in."""
    cat = catalogue(lang if lang in LANGUAGES else DEFAULT)
    template = cat.get(key)
    if template is None:
        template = catalogue(DEFAULT)[key]  # KeyError: a key no catalogue has is a bug
    return fill(template, values)


def wait_text(lang: str | None, eta: float | None) -> str:
    """The estimated queue wait in words."""
    if eta is None:
        return text(lang, "desk.wait_unknown")
    if eta < 60:
        return text(lang, "desk.wait_under_minute")
    minutes = round(eta / 60)
    return text(lang, "desk.wait_one_minute") if minutes == 1 else text(lang, "desk.wait_minutes", minutes=minutes)
