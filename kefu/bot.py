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
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .routing import Route

VAR_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)(?:\|([^{}]*))?\}")


class AnswersError(ValueError):
    pass


@dataclass(frozen=True)
class Answer:
    text: str
    retry: str = ""


@dataclass(frozen=True)
class Answers:
    variables: Mapping[str, str]
    answers: Mapping[str, Answer]

    def has(self, intent: str | None) -> bool:
        return intent is not None and intent in self.answers

    def render(self, template: str, contact: Mapping[str, Any]) -> str:
        def sub(m: re.Match) -> str:
            name, fallback = m.group(1), m.group(2)
            if name.startswith("contact."):
                v = contact.get(name[len("contact."):])
                if v in (None, ""):
                    return fallback if fallback is not None else ""
                return str(v)
            return str(self.variables[name])

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
    for k, v in variables.items():
        if not isinstance(v, (str, int, float)):
            raise AnswersError(f"{source}: variables.{k}: expected a string or number")
    out: dict[str, Answer] = {}
    for intent, entry in (doc.get("answers") or {}).items():
        where = f"{source}: answers.{intent}"
        if known_intents is not None and intent not in known_intents:
            raise AnswersError(f"{where}: not an intent the classifier knows")
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str) or not entry["text"].strip():
            raise AnswersError(f"{where}.text: required, a non-empty string")
        extra = set(entry) - {"text", "retry"}
        if extra:
            raise AnswersError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; known: text, retry")
        retry = entry.get("retry", "")
        if not isinstance(retry, str):
            raise AnswersError(f"{where}.retry: expected a string")
        check_template(f"{where}.text", entry["text"], variables)
        check_template(f"{where}.retry", retry, variables)
        out[intent] = Answer(entry["text"], retry)
    return Answers({k: str(v) for k, v in variables.items()}, out)


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
    handoff_message: str = "I'm passing you to a colleague who can help."
    retry_prefix: str = "Let me try again: "


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
) -> Reply:
    """One bot turn. ``pred`` is the classifier's output for ``text`` (None when the
    message asked for a human before classification was needed)."""
    intent = getattr(pred, "intent", None)
    conf = float(getattr(pred, "confidence", 0.0) or 0.0)
    senti = sentiment_label(getattr(pred, "sentiment", None))
    oos = bool(getattr(pred, "out_of_scope", False))
    base = dict(intent=intent, confidence=conf if pred is not None else None, sentiment=senti)

    def handoff(reason: str, failed: bool = False) -> Reply:
        return Reply("handoff", settings.handoff_message, reason, failed=failed, **base)

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
        return _failed(last_intent, answers, settings, failures, contact, handoff, base)
    if oos:
        return handoff("out_of_scope")
    if conf < settings.confidence:
        return handoff("low_confidence")
    if not answers.has(intent):
        return handoff("no_answer")
    if intent == last_intent:
        return _failed(intent, answers, settings, failures, contact, handoff, base)
    return Reply("answer", answers.render(answers.answers[intent].text, contact), None, **base)


def _failed(intent, answers: Answers, settings: BotSettings, failures: int, contact, handoff, base) -> Reply:
    """The previous answer did not help: try once more, or hand off at the limit."""
    if failures + 1 >= settings.max_failed_answers:
        return handoff("bot_failed", failed=True)
    ans = answers.answers[intent]
    body = ans.retry if ans.retry else settings.retry_prefix + ans.text
    return Reply("answer", answers.render(body, contact), None, failed=True, **{**base, "intent": intent})
