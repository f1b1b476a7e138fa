"""The pages take every word from the message catalogue (kefu/locales/): a static check.

- HTML (the console, the dashboard, the index page, and the markup the widget builds): an
  element's own text and its placeholder/title/aria-label/alt attributes are empty in the file
  and filled from a catalogue key (data-i18n, data-i18n-attr); only the brand and symbols stay.
- Scripts: no string literal that reads as words for a person (a capitalised word, two words,
  Chinese), except the few below, each with its reason.
- Every key the pages name (literally, or a family like "console.state." + status) exists.

bridge/web/demo.html is left out on purpose: it stands for a shop's own page, which embeds the
widget; only the widget on it is kefu's. The browser tests (test_browser_zh.py) check the
rendered pages in Chinese as a person sees them.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from pathlib import Path

from kefu import i18n

ROOT = Path(__file__).resolve().parents[2]

PAGES = {
    "bridge/web/console.html": "bridge/web/console.js",
    "kefu/web/dashboard.html": "kefu/web/dashboard.js",
    "bridge/web/index.html": None,
}
SCRIPTS = ["bridge/web/widget.js", "bridge/web/console.js", "kefu/web/dashboard.js"]
TEXT_ATTRS = ("placeholder", "title", "aria-label", "alt")
BRAND = {"kefu", "客服", "kefu 客服", "/healthz", "/readyz"}
# Literals that look like words but are not read by a person.
NOT_WORDS = {
    "use strict",
    "Content-Type", "Authorization", "Bearer ", "Cache-Control",  # HTTP header names and scheme
    "Enter", "Escape",  # KeyboardEvent.key values
    "kefu widget:", "dashboard words:",  # developer console logs
}
STYLES = {"bridge/web/widget.js": "bridge/web/widget.js", "bridge/web/console.js": "bridge/web/console.css",
          "kefu/web/dashboard.js": "kefu/web/dashboard.css"}
CJK = re.compile(r"[\u4e00-\u9fff]")
WORD = r'"[^"\n]*[A-Za-z\u4e00-\u9fff][^"\n]*"'
SHOWN = re.compile(r'\.(?:textContent|innerText|title|placeholder)\s*=\s*' + WORD
                   + r'|\bel\("[a-z0-9]+",\s*[^,()]+,\s*' + WORD
                   + r'|\b(?:alert|confirm|sysNote|showSignin)\(\s*' + WORD)
LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"|\'((?:[^\'\\\n]|\\.)*)\'')
KEY_CALL = re.compile(r'\bT\(\s*"([A-Za-z0-9_.\-]+)"')
FAMILY = re.compile(r'\bT\(\s*"([A-Za-z0-9_.\-]+\.)"\s*\+')


def read(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


class Words(HTMLParser):
    """Collects the problems of one HTML text: words not from the catalogue, and the keys named."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict]] = []
        self.problems: list[str] = []
        self.keys: set[str] = set()
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("style", "script"):
            self.skip += 1
        if "data-i18n" in a:
            self.keys.add(a["data-i18n"])
        given = set()
        for part in (a.get("data-i18n-attr") or "").split(";"):
            if part:
                name, key = part.split(":")
                given.add(name)
                self.keys.add(key)
        for name in TEXT_ATTRS:
            if a.get(name) and name not in given:
                self.problems.append(f"<{tag} {name}={a[name]!r}> is not from the catalogue")
        if tag not in ("meta", "link", "input", "br", "img"):
            self.stack.append((tag, a))

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self.skip -= 1
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        text = data.strip()
        if self.skip or not text or text in BRAND:
            return
        if not (re.search(r"[A-Za-z]{2,}", text) or CJK.search(text)):
            return  # symbols: ×, ·, —, numbers
        tag, a = self.stack[-1] if self.stack else ("?", {})
        if tag == "title":
            return  # the document title is set from the catalogue by the script (T("....doc_title"))
        self.problems.append(f"<{tag}> text {text!r} is not from the catalogue (data-i18n)")


def html_words(text: str) -> Words:
    w = Words()
    w.feed(text)
    w.close()
    return w


def literals(js: str) -> list[str]:
    js = re.sub(r"^\s*(//|\*|/\*).*$", "", js, flags=re.M)  # comment lines
    return [m.group(1) if m.group(1) is not None else m.group(2) for m in LITERAL.finditer(js)]


def reads_as_words(s: str, classes: set[str] = frozenset()) -> bool:
    s = i18n.PLACEHOLDER.sub("", s)
    if s.split() and all(c in classes for c in s.split()):
        return False  # a list of CSS classes ("msg me pending")
    if CJK.search(s):
        return True
    if re.search(r"[A-Za-z]{2,}[ ,]+[A-Za-z]{2,}", s) and not re.search(r"[{};=<>#/\[]|^\.|\bfunction\b", s):
        return True
    return bool(re.fullmatch(r"[A-Z][a-z]+[.!?…]?", s.strip()))


@pytest.mark.parametrize("page", sorted(PAGES))
def test_html_pages_hold_no_words_of_their_own(page):
    w = html_words(read(page))
    assert w.problems == []
    assert w.keys, "the page names no catalogue key"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_hold_no_words_of_their_own(script):
    problems = []
    classes = set(re.findall(r"\.([a-z][a-z0-9-]*)", read(STYLES[script])))
    for lit in literals(read(script)):
        if "<" in lit and ">" in lit:  # markup the script builds (the widget's panel)
            problems += html_words(lit.replace("\\'", "'")).problems
        elif lit not in NOT_WORDS and reads_as_words(lit, classes):
            problems.append(lit)
    # any letters at all where a person reads them: a text set, an element made with its text, a dialog
    for m in SHOWN.finditer(read(script)):
        problems.append(m.group(0))
    assert problems == []


def test_the_check_catches_words():
    """The check itself: it flags what it should (so a passing run means something)."""
    assert html_words('<button>Send</button>').problems
    assert html_words('<input placeholder="Type here">').problems
    assert html_words('<p title="Hi" data-i18n-attr="title:x"></p>').problems == []
    assert reads_as_words("Send") and reads_as_words("is typing…") and reads_as_words("发送")
    assert not reads_as_words("kefu.console.token") and not reads_as_words("#kefu-widget .queue")
    assert not reads_as_words("api_access_token") and not reads_as_words("application/json")
    assert reads_as_words("nothing here", {"nothing"}) and not reads_as_words("msg me", {"msg", "me"})
    for shown in ('x.textContent = "live";', 'el("li", "none", "none")', 'alert("failed")', 'sysNote("oops")'):
        assert SHOWN.search(shown), shown
    for fine in ('x.textContent = "";', 'el("dt", null, "—")', 'x.textContent = T("k")', 'el("span", "pill " + c, T("a"))'):
        assert not SHOWN.search(fine), fine


def used_keys() -> tuple[set[str], set[str]]:
    keys, families = set(), set()
    for page in PAGES:
        keys |= html_words(read(page)).keys
    for script in SCRIPTS:
        js = read(script)
        keys |= {k for k in KEY_CALL.findall(js) if not k.endswith(".")}
        families |= set(FAMILY.findall(js))
        for lit in literals(js):
            if "data-i18n" in lit:
                keys |= html_words(lit.replace("\\'", "'")).keys
        keys |= set(re.findall(r'prefix: "([a-z_.]+)"', js))
    return keys, families


def test_every_key_the_pages_name_is_in_the_catalogue():
    en = i18n.catalogue("en")
    keys, families = used_keys()
    assert keys - set(en) == set()
    for fam in families:
        assert any(k.startswith(fam) for k in en), f"no key in the family {fam}*"


def test_key_families_cover_every_value_they_are_built_from():
    en = i18n.catalogue("en")
    states = ("bot", "queued", "assigned", "resolved", "closed")
    assert {f"console.state.{s}" for s in states} <= set(en)
    assert {f"console.priority.{p}" for p in ("urgent", "high", "normal", "low")} <= set(en)
    assert {f"console.sentiment.{v}" for v in ("negative", "neutral", "positive")} <= set(en)  # kefu/bot.py labels
    assert {f"console.{f}.{s}" for f in ("status", "presence") for s in ("online", "away", "offline")} <= set(en)
    codes = json.loads(read("bridge/schemas/server/error.json"))["properties"]["code"]["enum"]
    # the codes a visitor can meet get their own words; the rest read widget.error.generic
    assert {c for c in codes if f"widget.error.{c}" in en} >= {"too_large", "rate_limited", "auth_failed", "forbidden"}
    ranges = set(re.findall(r'data-range="([^"]+)"', read("kefu/web/dashboard.html")))
    assert {f"dashboard.range.{r}" for r in ranges} <= set(en)
    actions = set(re.findall(r'act\((?:[^)]*\? )?"([a-z]+)"(?: : "([a-z]+)")?', read("bridge/web/console.js")))
    assert {f"console.action.{a}" for pair in actions for a in pair if a} <= set(en)
    reasons = set(re.findall(r'handoff\("([a-z_]+)"', read("kefu/bot.py")))
    reasons |= set(re.findall(r'Reply\("handoff", [^,]+, "([a-z_]+)"', read("kefu/desk.py")))
    # a message that goes on without an intent is handed over with the classifier's reason
    reasons |= set(re.findall(r'Reply\("handoff", [^,]+, skipped or "([a-z_]+)"', read("kefu/desk.py")))
    reasons |= set(re.findall(r'why = "([a-z_]+)"', read("kefu/desk.py")))
    reasons |= set(re.findall(r'skip_reason = "([a-z_]+)"', read("nlp/service.py")))
    assert len(reasons) >= 8 and {f"console.handoff.{r}" for r in reasons} <= set(en)
    fields = set(re.findall(r'\["([a-z]+)", (?!")', read("bridge/web/console.js")))
    assert {f"console.field.{f}" for f in fields} <= set(en)
