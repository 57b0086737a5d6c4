"""Checks on JSON text before any parser reads it: UTF-8 only, no lone surrogate, a bound
on nesting.

- Encoding: RFC 8259 asks for UTF-8 between systems. Python's parser also takes UTF-16 and
  UTF-32 (it guesses from the first bytes), which every check here would read wrongly:
  refused (415).
- Lone surrogates: ``"\\ud800"`` is valid JSON but no Unicode text. Python parses it into
  a string that SQLite, pydantic's serialiser and every encoder then fail on (a 500
  where the client sent a bad value): refused (422) wherever it is, a key or a value.
- Nesting: Python's ``json`` parser recurses once per ``[`` or ``{``: a body of a few
  thousand brackets is a ``RecursionError``. The scan here counts brackets outside strings
  in C: ``bytes.replace`` drops the escapes that matter (``\\\\`` and ``\\"``),
  ``bytes.translate`` keeps quotes and brackets, and numpy sums them chunk by chunk: a
  32 MB body costs 0.1 to 0.5 s whatever its shape, less than ``json.loads`` of most.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_JSON_DEPTH = 32

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTE = ord('"')
_CHUNK = 1 << 20


# a \\uD800-\\uDBFF escape not followed by a \\uDC00-\\uDFFF one, or the latter not after
# the former (on text whose escaped backslashes are gone: every backslash left escapes)
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


class JsonRefused(ValueError):
    """JSON text the service does not parse; ``status`` and ``error`` for the client."""

    status = 422
    error = "invalid JSON"


class JsonTooDeep(JsonRefused):
    """JSON nested deeper than the service accepts."""

    error = "JSON too deeply nested"

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nesting depth is limited to {max_depth}")
        self.max_depth = max_depth


class JsonNotUtf8(JsonRefused):
    status = 415
    error = "unsupported JSON encoding"

    def __init__(self, encoding: str) -> None:
        super().__init__(f"JSON must be UTF-8 (RFC 8259), this is {encoding}")


class JsonLoneSurrogate(JsonRefused):
    def __init__(self) -> None:
        super().__init__(
            "a \\u escape names half of a UTF-16 surrogate pair: not a Unicode character"
        )


def _structure(raw: bytes) -> bytes:
    """Quotes that delimit strings, and brackets, in order; every other byte dropped.

    Backslash pairs go first, left to right as a parser reads them, so that each backslash
    left escapes the byte after it: ``\\"`` is a quote inside a string.
    """
    return raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)


def json_depth(data: bytes | str, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in ``data`` (``{}`` is 1, a scalar 0).

    Brackets inside strings do not count. Not a validator: nothing after an unterminated
    string counts, and unbalanced brackets are counted as they come. With ``stop_above``,
    the scan may stop as soon as the depth passes it.
    """
    raw = data.encode("utf-8", "replace") if isinstance(data, str) else data
    tokens = _structure(raw)
    depth = deepest = in_string = 0
    for start in range(0, len(tokens), _CHUNK):
        codes = np.frombuffer(tokens, np.uint8, min(_CHUNK, len(tokens) - start), start)
        quotes = codes == _QUOTE
        inside: npt.NDArray[np.int32] = (np.cumsum(quotes, dtype=np.int32) + in_string) & 1
        in_string = int(inside[-1])
        # '[' 0x5b and '{' 0x7b have bit 1 set, ']' 0x5d and '}' 0x7d do not
        steps = np.where(quotes | (inside == 1), 0, (codes & 2).astype(np.int32) - 1)
        levels = np.cumsum(steps, dtype=np.int32) + depth
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


def check_json_depth(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise :class:`JsonTooDeep` when ``data`` nests deeper than ``max_depth``."""
    if json_depth(data, stop_above=max_depth) > max_depth:
        raise JsonTooDeep(max_depth)


def check_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise a :class:`JsonRefused` for JSON text that is not UTF-8, holds a lone surrogate
    or nests deeper than ``max_depth``; the text is not parsed."""
    if isinstance(data, str):
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError:  # a surrogate character already in the text
            raise JsonLoneSurrogate() from None
    else:
        encoding = json.detect_encoding(data)  # as json.loads would read the bytes
        if encoding not in ("utf-8", "utf-8-sig"):
            raise JsonNotUtf8(encoding)
        raw = data
    if b"\\u" in raw and _LONE_SURROGATE.search(raw.replace(b"\\\\", b"")):
        raise JsonLoneSurrogate()
    check_json_depth(raw, max_depth)


def load_object(raw: object, max_depth: int) -> dict[str, Any]:
    """A multipart form field holding a JSON object (``options``), checked as a JSON body
    is; ``{}`` when the field is absent or empty. A :class:`ValueError` says what is wrong."""
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, str):
        raise ValueError("'options' must be a form field, not a file")
    check_json(raw, max_depth)
    fields = json.loads(raw)
    if not isinstance(fields, dict):
        raise ValueError("options must be a JSON object")
    return fields
