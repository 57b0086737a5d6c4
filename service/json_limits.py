"""A bound on JSON nesting, checked on the raw text before any parser recurses into it.

Python's ``json`` parser recurses once per ``[`` or ``{``: a body of a few thousand
brackets is a ``RecursionError``. The scan here counts brackets outside strings in C:
``bytes.replace`` drops the escapes that matter (``\\\\`` and ``\\"``),
``bytes.translate`` keeps quotes and brackets, and numpy sums them chunk by chunk: a 32 MB
body costs 0.1 to 0.5 s whatever its shape, less than ``json.loads`` of most of them.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MAX_JSON_DEPTH = 32

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')
_QUOTE = ord('"')
_CHUNK = 1 << 20


class JsonTooDeep(ValueError):
    """JSON nested deeper than the service accepts."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"JSON nesting depth is limited to {max_depth}")
        self.max_depth = max_depth


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
