"""Parsing and validating /chat frames against the JSON schemas in bridge/schemas/.

Pure: text in, a frame dict or a ``FrameError`` out. The schemas are the contract a
browser developer reads (docs/chat-protocol.md shows one example per type); the code
here only turns a schema failure into an error frame that names the problem in words a
developer can act on — "missing field text", "unknown field colour" — rather than a
validator dump.

Order of checks, each producing its own error code: size (too_large), JSON syntax or
nesting deeper than ``MAX_DEPTH`` (bad_json), lone UTF-16 surrogates in any string
(bad_text; see ``kefu/edge.py``), top-level object (not_an_object), ``type`` present and known (missing_field /
unknown_type), then the type's schema (missing_field, unknown_field, invalid_field).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

from kefu import edge

MAX_DEPTH = 16  # the deepest client frame (auth with a profile) is 3 levels

CLIENT_TYPES = ("auth", "message", "typing", "read", "history", "action", "status", "csat", "ping")
SERVER_TYPES = (
    "ready", "ack", "message", "typing", "read", "history", "conversation", "queue", "agent", "error", "pong",
)


@dataclass(frozen=True)
class FrameError(Exception):
    """A refused frame: ``code`` from server/error.json, ``field`` a JSON path or ''."""

    code: str
    message: str
    field: str = ""
    ref: str | None = None

    def frame(self) -> dict:
        out = {"type": "error", "code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.ref:
            out["ref"] = self.ref
        return out


def _schema_files():
    root = resources.files("kefu.bridge").joinpath("schemas")
    yield "defs", root.joinpath("defs.json")
    for side in ("client", "server"):
        for entry in root.joinpath(side).iterdir():
            if entry.name.endswith(".json"):
                yield f"{side}/{entry.name[:-5]}", entry


@lru_cache(maxsize=1)
def _validators() -> dict[str, Draft202012Validator]:
    docs = {name: json.loads(entry.read_text(encoding="utf-8")) for name, entry in _schema_files()}
    registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs.values())
    out = {}
    for name, doc in docs.items():
        if name == "defs":
            continue
        Draft202012Validator.check_schema(doc)
        out[name] = Draft202012Validator(doc, registry=registry)
    return out


def schema_names() -> list[str]:
    """Every frame schema as "client/<type>" or "server/<type>"."""
    return sorted(_validators())


def _path(parts) -> str:
    return ".".join(str(p) for p in parts)


def _join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _explain(err: ValidationError, ref: str | None) -> FrameError:
    if err.validator in ("oneOf", "anyOf") and err.context:
        # A discriminated union (auth: visitor or agent). Report the errors of the
        # branch whose discriminator matched, not "is not valid under any schema".
        branches: dict[int, list[ValidationError]] = defaultdict(list)
        for sub in err.context:
            branches[sub.schema_path[0]].append(sub)
        for errs in branches.values():
            if not any(e.validator == "const" and len(e.absolute_path) == len(err.absolute_path) + 1 for e in errs):
                return _explain(min(errs, key=_relevance), ref)
        consts = sorted({e.validator_value for e in err.context if e.validator == "const"} - {"auth"}, key=str)
        wrong = next((e for e in err.context if e.validator == "const"), None)
        field = _path(wrong.absolute_path) if wrong is not None else _path(err.absolute_path)
        if wrong is not None and wrong.absolute_path and wrong.absolute_path[-1] not in (err.instance or {}):
            return FrameError("missing_field", f"missing field {field}", field, ref)
        return FrameError("invalid_field", f"{field}: expected one of {', '.join(map(str, consts))}", field, ref)
    base = _path(err.absolute_path)
    if err.validator == "required":
        missing = [k for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance]
        field = _join(base, missing[0] if missing else "?")
        return FrameError("missing_field", f"missing field {field}", field, ref)
    if err.validator == "additionalProperties":
        known = set(err.schema.get("properties", {}))
        extra = sorted(k for k in err.instance if k not in known)
        field = _join(base, extra[0] if extra else "?")
        return FrameError(
            "unknown_field", f"unknown field {field}; allowed here: {', '.join(sorted(known))}", field, ref
        )
    msg = err.message
    if len(msg) > 200:
        msg = msg[:197] + "..."
    return FrameError("invalid_field", f"{base or 'frame'}: {msg}", base, ref)


def _ref_of(obj: dict) -> str | None:
    ref = obj.get("ref")
    return ref if isinstance(ref, str) and 0 < len(ref) <= 64 else None


def parse_client_frame(raw: str | bytes, max_bytes: int) -> dict:
    """Decode and validate one client frame; raises FrameError naming the problem."""
    size = len(raw.encode("utf-8", "surrogatepass")) if isinstance(raw, str) else len(raw)
    if size > max_bytes:
        raise FrameError("too_large", f"frame of {size} bytes is over the limit of {max_bytes} bytes")
    try:
        # Text is checked once, here: JSON nested deeper than MAX_DEPTH or carrying a lone
        # surrogate ("\udfff": valid JSON syntax, not text) never reaches the desk.
        obj = edge.loads(raw, max_bytes=max_bytes, max_depth=MAX_DEPTH)
    except edge.EdgeError as e:
        code = {"too_large": "too_large", "bad_text": "bad_text"}.get(e.code, "bad_json")
        raise FrameError(code, e.message) from None
    if not isinstance(obj, dict):
        raise FrameError("not_an_object", f"a frame is a JSON object, got {type(obj).__name__}")
    ref = _ref_of(obj)
    t = obj.get("type")
    if t is None:
        raise FrameError("missing_field", "missing field type", "type", ref)
    if not isinstance(t, str) or t not in CLIENT_TYPES:
        shown = t if isinstance(t, str) else json.dumps(t)
        raise FrameError(
            "unknown_type", f"unknown frame type {shown[:40]!s}; known: {', '.join(CLIENT_TYPES)}", "type", ref
        )
    v = _validators()[f"client/{t}"]
    errors = list(v.iter_errors(obj))
    if errors:
        raise _explain(min(errors, key=_relevance), ref)
    return obj


def _relevance(err: ValidationError):
    # Prefer errors at the top of the frame (a missing field) over deep ones, and
    # "required" over type mismatches of siblings. (jsonschema's best_match would
    # descend into oneOf branches itself; _explain picks the branch instead.)
    return (len(err.path), err.validator != "required", err.validator != "additionalProperties")


def validate_server_frame(frame: dict) -> None:
    """Raise ValidationError when a frame this server sends breaks its schema (tests use this)."""
    t = frame.get("type")
    if t not in SERVER_TYPES:
        raise ValidationError(f"unknown server frame type {t!r}")
    _validators()[f"server/{t}"].validate(frame)
