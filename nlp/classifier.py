"""Text in, ``Prediction`` out: encoder + intent head + few-shot head + sentiment (synchronous).

This is what the trio service runs in its worker thread, and what ``kefu nlp classify``
and ``kefu nlp eval`` call directly. The rules that turn scores into a decision:

- The model head gives the best of its labels and a calibrated confidence.
- Few-shot intents from config (example phrases) are checked first: if the few-shot
  head's choice has an example within ``few_shot_min_similarity`` (cosine) of the
  message, that intent wins, because the operator named it explicitly. With
  ``use_model_intents = false`` the model's own labels are never reported.
- ``out_of_scope`` is set when the model's scope score (calibrated confidence or energy,
  see ``kefu.nlp.heads``) is below the threshold (the model's own, chosen on held-out
  data at training time, unless config overrides it),
  or when only few-shot intents are in use and none matched. ``intent`` still carries
  the best guess, so a human sees what the bot would have said.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from . import sentiment_zh
from .data import has_cjk
from .encoder import Encoder
from .heads import FewShotHead, IntentHead

NO_INTENT = "out_of_scope"

# ---- sentiment ------------------------------------------------------------------
# VADER (vaderSentiment, MIT): a lexicon and rule set tuned for short informal text, with
# negation, intensifiers ("very"), capitals and "!" handled. It runs in tens of
# microseconds in pure Python, needs no model file and no network, and its compound
# score in [-1, 1] is easy to threshold in routing rules. The usual VADER cut-offs are
# kept: compound <= -0.05 is negative, >= 0.05 positive, otherwise neutral. VADER knows
# English only, so a message with Chinese characters is scored instead by kefu's own
# Chinese lexicon (``sentiment_zh``), whose score has the same range and cut-offs; both
# are measured in docs/nlp.md. Calm complaints read as neutral in either language.

NEGATIVE = "negative"
NEUTRAL = "neutral"
POSITIVE = "positive"
CUTOFF = 0.05


@dataclass(frozen=True)
class SentimentResult:
    label: str  # negative | neutral | positive
    score: float  # VADER compound, -1 (most negative) .. 1


class SentimentError(Exception):
    pass


class Sentiment:
    """VADER sentiment for English, kefu's lexicon for Chinese; ``Sentiment("off")`` reports
    neutral 0.0 for everything."""

    def __init__(self, kind: str = "vader") -> None:
        if kind not in ("vader", "off"):
            raise SentimentError(f"unknown sentiment analyser {kind!r}; expected 'vader' or 'off'")
        self.kind = kind
        self._vader = None
        if kind == "vader":
            try:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
            except ImportError:
                raise SentimentError(
                    "sentiment = \"vader\" needs the vaderSentiment package (a kefu dependency: "
                    "pip install vaderSentiment), or set [nlp] sentiment = \"off\""
                ) from None
            self._vader = SentimentIntensityAnalyzer()

    def __call__(self, text: str) -> SentimentResult:
        if self._vader is None:
            return SentimentResult(NEUTRAL, 0.0)
        if has_cjk(text):
            score = sentiment_zh.compound(text)
        else:
            score = float(self._vader.polarity_scores(text)["compound"])
        if score <= -CUTOFF:
            return SentimentResult(NEGATIVE, score)
        if score >= CUTOFF:
            return SentimentResult(POSITIVE, score)
        return SentimentResult(NEUTRAL, score)



@dataclass(frozen=True)
class Prediction:
    intent: str
    confidence: float  # calibrated probability of ``intent`` (0..1)
    out_of_scope: bool  # true: hand the message to a human
    sentiment: str  # negative | neutral | positive
    sentiment_score: float  # -1..1
    latency_ms: float  # time to classify this message (queue wait included in the service)
    source: str = "model"  # "model" or "few_shot"
    early_exit: bool = False  # answered by the model's early exit (lower layers only)

    def to_dict(self) -> dict:
        return asdict(self)


class ConfigProblem(Exception):
    """An [nlp] setting that cannot be used; the message names the key."""


class IntentClassifier:
    def __init__(self, encoder: Encoder, *, sentiment: Sentiment | None = None,
                 few_shot: dict[str, list[str]] | None = None, few_shot_head: str = "logistic",
                 few_shot_min_similarity: float = 0.6, use_model_intents: bool = True,
                 oos_threshold: float | None = None, early_exit: bool = True,
                 early_exit_threshold: float | None = None, neighbours: bool = True) -> None:
        self.encoder = encoder
        info = encoder.info
        self.head = IntentHead(info.labels, info.temperature, info.oos_threshold, info.oos_score)
        self.threshold = info.oos_threshold if oos_threshold is None else float(oos_threshold)
        self.sentiment = sentiment or Sentiment("off")
        # The exit threshold was chosen against the model's own scope rule; a message leaving
        # early skips that rule, so an operator's own oos_threshold needs every layer.
        self.early_exit = bool(early_exit and encoder.has_exit and not few_shot and oos_threshold is None)
        self.early_exit_threshold = early_exit_threshold
        self.neighbours = encoder.neighbours if neighbours else None
        self.use_model_intents = use_model_intents
        self.few_shot: FewShotHead | None = None
        if few_shot:
            names = list(few_shot)
            phrases = [p for n in names for p in few_shot[n]]
            which = np.array([i for i, n in enumerate(names) for _ in few_shot[n]])
            _, emb = encoder.run(phrases)
            self.few_shot = FewShotHead(names, emb, which, kind=few_shot_head,
                                        min_similarity=few_shot_min_similarity)
        elif not use_model_intents:
            raise ConfigProblem("nlp.use_model_intents = false needs at least one [[nlp.intents]] entry")

    @property
    def intents(self) -> list[str]:
        out = list(self.few_shot.labels) if self.few_shot else []
        return out + (self.head.labels if self.use_model_intents else [])

    def classify_batch(self, texts: list[str]) -> list[Prediction]:
        if not texts:
            return []
        t0 = time.perf_counter()
        if self.early_exit:
            logits, exited, emb = self.encoder.run_cascade(texts, self.early_exit_threshold)
        else:
            logits, emb = self.encoder.run(texts)
            exited = np.zeros(len(texts), dtype=bool)
        res = self.head(logits)
        nb = self.neighbours
        if nb is not None and not exited.all():
            # Nearest training examples vote on what reached the final layer; the scope
            # score stays the model's own (a copy, since confidence may be that score).
            rows = np.flatnonzero(~exited)
            p = nb.mix(res.probs[rows], emb[rows])
            best = p.argmax(axis=1)
            res.index, res.confidence = res.index.copy(), res.confidence.copy()
            res.index[rows] = best
            res.confidence[rows] = p[np.arange(len(rows)), best]
        fs = self.few_shot(emb) if self.few_shot else None
        out = []
        for r, text in enumerate(texts):
            intent = self.head.labels[res.index[r]]
            conf = float(res.confidence[r])
            source = "model"
            # A message leaves at the early exit only when that head is confident enough
            # that held-out accuracy and out-of-scope recall stayed within budget: in scope.
            oos = False if exited[r] else bool(res.scope[r] < self.threshold)
            if fs is not None:
                fres, best_sim = fs
                matched = best_sim[r] >= self.few_shot.min_similarity
                if matched or not self.use_model_intents:
                    intent = self.few_shot.labels[fres.index[r]]
                    conf = float(fres.confidence[r])
                    source = "few_shot"
                    oos = not matched
            s = self.sentiment(text)
            out.append((intent, conf, oos, s, source, bool(exited[r])))
        ms = (time.perf_counter() - t0) * 1000.0
        return [Prediction(i, c, bool(o), s.label, s.score, ms, src, ex) for i, c, o, s, src, ex in out]

    def classify(self, text: str) -> Prediction:
        return self.classify_batch([text])[0]


def few_shot_from_config(entries: list) -> dict[str, list[str]]:
    """[[nlp.intents]] entries (objects with name/examples, or dicts) -> {name: phrases}."""
    out: dict[str, list[str]] = {}
    for i, e in enumerate(entries):
        name = e["name"] if isinstance(e, dict) else e.name
        examples = e["examples"] if isinstance(e, dict) else e.examples
        where = f"nlp.intents[{i}]"
        if not isinstance(name, str) or not name.strip():
            raise ConfigProblem(f"{where}.name: must be a non-empty string")
        if name in out:
            raise ConfigProblem(f"{where}.name: intent {name!r} is defined twice")
        if not isinstance(examples, list) or not examples:
            raise ConfigProblem(f"{where}.examples: needs at least one example phrase")
        for j, x in enumerate(examples):
            if not isinstance(x, str) or not x.strip():
                raise ConfigProblem(f"{where}.examples[{j}]: must be a non-empty string")
        out[name] = [x.strip() for x in examples]
    return out


def from_config(nlp) -> IntentClassifier:
    """An IntentClassifier from a ``kefu.config.model.Nlp`` section (raises ModelError/ConfigProblem)."""
    encoder = Encoder(nlp.model or None, threads=nlp.threads)
    return IntentClassifier(
        encoder,
        sentiment=Sentiment(nlp.sentiment),
        few_shot=few_shot_from_config(nlp.intents),
        few_shot_head=nlp.few_shot_head,
        few_shot_min_similarity=nlp.few_shot_min_similarity,
        use_model_intents=nlp.use_model_intents,
        oos_threshold=None if nlp.oos_threshold < 0 else nlp.oos_threshold,
        early_exit=nlp.early_exit,
        early_exit_threshold=None if nlp.early_exit_threshold < 0 else nlp.early_exit_threshold,
        neighbours=nlp.neighbours,
    )


def config_problems(nlp) -> list[str]:
    """"key.path: message" lines for an [nlp] section, without loading the model (for `kefu config check`).

    Checks the few-shot entries and that the model folder is complete with a readable
    labels.json; whether onnxruntime can load the model's graphs is only known at start-up.
    """
    from .encoder import ModelError, read_info

    if not nlp.enabled:
        return []
    problems = []
    try:
        few_shot_from_config(nlp.intents)
    except ConfigProblem as e:
        problems.append(str(e))
    if not nlp.use_model_intents and not nlp.intents:
        problems.append("nlp.use_model_intents: false needs at least one [[nlp.intents]] entry")
    try:
        info = read_info(nlp.model or None)
    except ModelError as e:
        problems.append(f"nlp.model: {e}")
    else:
        if info.oos_score == "confidence" and nlp.oos_threshold != -1 and not 0 <= nlp.oos_threshold <= 1:
            problems.append("nlp.oos_threshold: this model scores scope by confidence; expected -1 or 0-1")
    return problems
