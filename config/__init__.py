"""Typed configuration: ``load(path)`` gives a ``Config`` or raises ``ConfigError``."""

from .load import ConfigError, from_dict, load
from .model import Config

__all__ = ["Config", "ConfigError", "from_dict", "load"]
