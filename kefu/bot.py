"""The bot: answer what it confidently can, hand off everything else. Pure.

For each customer message while a conversation is with the bot, in this order:

1. a "talk to a human" phrase (``[bot] human_phrases``) hands off at once;
2. the routing rule for the message's intent says ``handler = "human"`` -> hand off
   (e.g. a lost card goes straight to the VIP team);
3. negative sentiment, an out-of-scope verdict or confidence below
   ``[bot] confidence`` -> hand off;
4. an intent without a configured answer -> hand off;
5. the customer says the answer did not help (``[bot] failed_phrases``) or asks the
   same intent again -> a failed answer; the ``max_failed_answers``-th hands off,
   before that the bot tries once more with the answer's ``retry`` text (a "did not
   help" is checked before the confidence test: such a reply rarely classifies well);
6. otherwise the configured answer, with its variables filled in.

The classifier is injected (a callable returning an object with ``intent``,
``confidence``, ``out_of_scope`` and ``sentiment``), so this module never needs the
model. Answers live in a TOML file (``[bot] answers_file``)::

    [variables]
    bank = "Kefu Bank"
    [answers.card_arrival]
    text = "Hi {contact.name|there}! {bank} cards arrive within 3-5 working days."
    retry = "If it has been longer than a week, I can put you through to a colleague."

``{name}`` is a file variable (unknown names are an error when the file loads);
``{contact.field}`` is the customer's contact field or custom attribute, with an
optional fallback after ``|`` used when the contact has no such value.

Answers in other languages sit in a sub-table named by the language (``en``,
``zh-CN``: the catalogues of kefu/i18n.py), with variables of their own that override
the plain ones for that language::

    [variables.zh-CN]
    bank = "客服银行"
    [answers.card_arrival.zh-CN]
    text = "您好，{contact.name|}！{bank}的银行卡一般在下单后 3 到 5 个工作日内送达。"

A customer whose language has no answer of its own gets the plain one.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from . import i18n
from .routing import Route

VAR_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:\|([^{}]*))?\}")


class AnswersError(ValueError):
    pass


@dataclass(frozen=True)
class Answer:
    text: str
    retry: str = ""
    langs: Mapping[str, "Answer"] = field(default_factory=dict)  # language -> its own text and retry

    def in_language(self, lang: str | None) -> "Answer":
        return self.langs.get(lang or "", self)


@dataclass(frozen=True)
class Answers:
    variables: Mapping[str, str]
    answers: Mapping[str, Answer]
    lang_variables: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def has(self, intent: str | None) -> bool:
        return intent is not None and intent in self.answers

    def render(self, template: str, contact: Mapping[str, Any], lang: str | None = None) -> str:
        own = self.lang_variables.get(lang or "", {})

        def sub(m: re.Match) -> str:
            name, fallback = m.group(1), m.group(2)
            if name.startswith("contact."):
                v = contact.get(name[len("contact."):])
                if v in (None, ""):
                    return fallback if fallback is not None else ""
                return str(v)
            return str(own[name] if name in own else self.variables[name])

        return VAR_RE.sub(sub, template)


def check_template(where: str, text: str, variables: Mapping[str, str]) -> None:
    for m in VAR_RE.finditer(text):
        name = m.group(1)
        if not name.startswith("contact.") and name not in variables:
            raise AnswersError(f"{where}: unknown variable {{{name}}}; define it under [variables]")


def parse_answers(doc: dict, source: str = "answers", known_intents: frozenset[str] | None = None) -> Answers:
    """Validate an answers document; errors name the key path."""
    unknown = set(doc) - {"variables", "answers"}
    if unknown:
        raise AnswersError(f"{source}: unknown table(s) {', '.join(sorted(unknown))}; expected [variables], [answers.<intent>]")
    variables = doc.get("variables", {})
    if not isinstance(variables, dict):
        raise AnswersError(f"{source}: variables: expected a table")
    lang_vars: dict[str, dict[str, str]] = {}
    for k, v in list(variables.items()):
        if isinstance(v, dict):
            _language(f"{source}: variables.{k}", k)
            for k2, v2 in v.items():
                if not isinstance(v2, (str, int, float)):
                    raise AnswersError(f"{source}: variables.{k}.{k2}: expected a string or number")
            lang_vars[k] = {k2: str(v2) for k2, v2 in v.items()}
            del variables[k]
        elif not isinstance(v, (str, int, float)):
            raise AnswersError(f"{source}: variables.{k}: expected a string or number")
    out: dict[str, Answer] = {}
    for intent, entry in (doc.get("answers") or {}).items():
        where = f"{source}: answers.{intent}"
        if known_intents is not None and intent not in known_intents:
            raise AnswersError(f"{where}: not an intent the classifier knows")
        if not isinstance(entry, dict):
            raise AnswersError(f"{where}.text: required, a non-empty string")
        langs = {}
        for k in [k for k, v in entry.items() if isinstance(v, dict)]:
            _language(f"{where}.{k}", k)
            langs[k] = _answer(f"{where}.{k}", entry.pop(k), {**variables, **lang_vars.get(k, {})})
        out[intent] = replace(_answer(where, entry, variables), langs=langs)
    return Answers({k: str(v) for k, v in variables.items()}, out, lang_vars)


def _language(where: str, key: str) -> None:
    if key not in i18n.LANGUAGES:
        raise AnswersError(f"{where}: not a language kefu has a catalogue for ({', '.join(i18n.LANGUAGES)})")


def _answer(where: str, entry: dict, variables: Mapping[str, Any]) -> Answer:
    if not isinstance(entry.get("text"), str) or not entry["text"].strip():
        raise AnswersError(f"{where}.text: required, a non-empty string")
    extra = set(entry) - {"text", "retry"}
    if extra:
        raise AnswersError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; known: text, retry, and "
                           f"language tables ({', '.join(i18n.LANGUAGES)})")
    retry = entry.get("retry", "")
    if not isinstance(retry, str):
        raise AnswersError(f"{where}.retry: expected a string")
    check_template(f"{where}.text", entry["text"], variables)
    check_template(f"{where}.retry", retry, variables)
    return Answer(entry["text"], retry)


def load_answers(path: str | Path, known_intents: frozenset[str] | None = None) -> Answers:
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnswersError(f"{p}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise AnswersError(f"{p}: not valid TOML: {e}") from None
    return parse_answers(doc, str(p), known_intents)


@dataclass(frozen=True)
class BotSettings:
    enabled: bool = True
    confidence: float = 0.6
    negative_handoff: bool = True
    max_failed_answers: int = 2
    human_phrases: tuple[str, ...] = (
        "human", "agent", "real person", "representative", "operator", "someone real", "人工", "客服",
    )
    failed_phrases: tuple[str, ...] = (
        "didn't help", "did not help", "doesn't help", "not helpful", "that's wrong", "not what i asked", "没用",
    )
    human_intents: tuple[str, ...] = ()
    handoff_message: str = ""  # "": the catalogue's (kefu/locales/), in the customer's language
    retry_prefix: str = ""

    def handoff_text(self, lang: str | None) -> str:
        return self.handoff_message or i18n.text(lang, "bot.handoff")


@dataclass(frozen=True)
class Reply:
    """What the bot decided for one customer message."""

    action: str  # "answer" | "handoff"
    text: str | None  # sent to the customer (the answer, or the handoff notice)
    reason: str | None = None  # why it handed off: human_requested, rule:<name>, negative_sentiment, ...
    intent: str | None = None
    confidence: float | None = None
    sentiment: str | None = None
    failed: bool = False  # this turn counts as a failed answer


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def _has_phrase(text: str, phrases: tuple[str, ...]) -> bool:
    t = _norm(text)
    for p in phrases:
        p = _norm(p)
        if not p:
            continue
        if p.isascii():
            if re.search(r"(?<![a-z0-9])" + re.escape(p) + r"(?![a-z0-9])", t):
                return True
        elif p in t:
            return True
    return False


def wants_human(text: str, s: BotSettings) -> bool:
    return _has_phrase(text, s.human_phrases)


def sentiment_label(value: Any) -> str | None:
    """The classifier may give a label or a score in [-1, 1]; the desk speaks labels."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.lower()
        return v if v in ("negative", "neutral", "positive") else None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return "negative" if x <= -0.5 else "positive" if x >= 0.5 else "neutral"


def decide(
    text: str,
    pred: Any,
    *,
    route: Route,
    answers: Answers,
    settings: BotSettings,
    last_intent: str | None,
    failures: int,
    contact: Mapping[str, Any],
    lang: str | None = None,
) -> Reply:
    """One bot turn. ``pred`` is the classifier's output for ``text`` (None when the
    message asked for a human before classification was needed); ``lang`` is the
    customer's language (kefu/i18n.py), which picks the answer and the handoff text."""
    intent = getattr(pred, "intent", None)
    conf = float(getattr(pred, "confidence", 0.0) or 0.0)
    senti = sentiment_label(getattr(pred, "sentiment", None))
    oos = bool(getattr(pred, "out_of_scope", False))
    base = dict(intent=intent, confidence=conf if pred is not None else None, sentiment=senti)

    def handoff(reason: str, failed: bool = False) -> Reply:
        return Reply("handoff", settings.handoff_text(lang), reason, failed=failed, **base)

    if wants_human(text, settings) or pred is None:
        return handoff("human_requested")

    if intent in settings.human_intents:
        return handoff("human_requested")
    if route.handler == "human":
        return handoff(f"rule:{route.rule}")
    if settings.negative_handoff and senti == "negative":
        return handoff("negative_sentiment")
    if last_intent is not None and answers.has(last_intent) and _has_phrase(text, settings.failed_phrases):
        # "that didn't help": a failed answer to the previous question, whatever this text classifies as
        return _failed(last_intent, answers, settings, failures, contact, handoff, base, lang)
    if oos:
        return handoff("out_of_scope")
    if conf < settings.confidence:
        return handoff("low_confidence")
    if not answers.has(intent):
        return handoff("no_answer")
    if intent == last_intent:
        return _failed(intent, answers, settings, failures, contact, handoff, base, lang)
    ans = answers.answers[intent].in_language(lang)
    return Reply("answer", answers.render(ans.text, contact, lang), None, **base)


def _failed(intent, answers: Answers, settings: BotSettings, failures: int, contact, handoff, base, lang) -> Reply:
    """The previous answer did not help: try once more, or hand off at the limit."""
    if failures + 1 >= settings.max_failed_answers:
        return handoff("bot_failed", failed=True)
    ans = answers.answers[intent].in_language(lang)
    body = ans.retry if ans.retry else (settings.retry_prefix or i18n.text(lang, "bot.retry_prefix")) + ans.text
    return Reply("answer", answers.render(body, contact, lang), None, failed=True, **{**base, "intent": intent})
