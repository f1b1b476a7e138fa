"""Fixtures for the intent engine: the shipped model, loaded once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kefu.nlp.classifier import IntentClassifier
from kefu.nlp.encoder import DEFAULT_MODEL_DIR, Encoder
from kefu.nlp.classifier import Sentiment


@pytest.fixture(scope="session")
def encoder() -> Encoder:
    return Encoder(threads=1)


@pytest.fixture(scope="session")
def classifier(encoder) -> IntentClassifier:
    return IntentClassifier(encoder, sentiment=Sentiment("vader"))


@pytest.fixture
def model_copy(tmp_path) -> Path:
    """A writable copy of the shipped model folder, to damage."""
    dst = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, dst)
    return dst
