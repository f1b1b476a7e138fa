"""Message sentiment for routing (angry customers get priority).

Uses VADER (``vaderSentiment``, MIT): a lexicon and rule set tuned for short informal
text, with negation, intensifiers ("very"), capitals and "!" handled. It runs in tens of
microseconds in pure Python, needs no model file and no network, and its compound score
in [-1, 1] is easy to threshold in routing rules. The usual VADER cut-offs are kept:
compound <= -0.05 is negative, >= 0.05 positive, otherwise neutral.

Limits, measured and reported in docs/nlp.md: it is English-only (CJK text has no
lexicon hits and comes out neutral, without error) and it reads polite complaints
("my card still hasn't arrived") as neutral; it catches explicit anger and frustration.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    """VADER sentiment; ``Sentiment("off")`` reports neutral 0.0 for everything."""

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
        score = float(self._vader.polarity_scores(text)["compound"])
        if score <= -CUTOFF:
            return SentimentResult(NEGATIVE, score)
        if score >= CUTOFF:
            return SentimentResult(POSITIVE, score)
        return SentimentResult(NEUTRAL, score)
