"""Page tokens: the next page of the same query, on the same index version.

A token is opaque to clients (URL-safe base64 of a small JSON object): the index version
it was issued for, the offset of the next page, the (score, id) of the last result shown,
and a digest of the query it continues (the route and the request, less the token
itself). Results are ordered by score, then id; a page holds only results after the last
one shown (a keyset cursor), so pages never overlap, also on compressed indexes, whose
re-ranked candidates grow with the depth asked for. With ``group_by`` or ``collapse`` the
groups are recomputed from the candidates and cut the same way, by their best hit: a
group shown before keeps that hit or a better one, so it never comes back (a re-ranked
score does not depend on how many candidates came with it). A token from another index
version is refused with 410 (the order may have changed: search again), a token used with
another query with 422. Pages stop at ``MAX_DEPTH`` results: no token goes further.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import ServiceError

MAX_DEPTH = 1000  # results reachable by paging, all pages together


class _Token(BaseModel):
    """Read back from a client, so every field is bounded: a token is not signed, and a
    forged one must fail as a malformed one does (a 410 names ``v`` back to the client)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    v: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")  # index version
    o: int  # offset of the next page
    q: str = Field(pattern=r"^[0-9a-f]{24}$")  # query digest
    s: float | None = Field(default=None, allow_inf_nan=False)  # last result's score
    i: int | None = Field(default=None, ge=0, lt=1 << 63)  # its id


def query_digest(route: str, *parts: bytes | str) -> str:
    """What identifies a query: its route and request, less the page token."""
    digest = hashlib.sha256(route.encode())
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class Page:
    offset: int
    query: str  # digest
    version: str
    after: tuple[float, int] | None = None  # (score, id) of the last result shown

    def next_token(self, k: int, more: bool, last: tuple[float, int] | None) -> str | None:
        """The token of the page after this one (whose last result is ``last``), when
        there are more results."""
        offset = self.offset + k
        if not more or offset >= MAX_DEPTH:
            return None
        score, item = last if last is not None else (None, None)
        raw = _Token(v=self.version, o=offset, q=self.query, s=score, i=item).model_dump_json()
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def read_page(token: str | None, *, query: str, version: str) -> Page:
    """The page a request asks for: the first, or the one its token names."""
    if token is None:
        return Page(0, query, version)
    try:
        padded = token + "=" * (-len(token) % 4)
        decoded = _Token.model_validate(json.loads(base64.urlsafe_b64decode(padded)))
    except (binascii.Error, ValueError, ValidationError, UnicodeDecodeError):
        raise ServiceError(422, "invalid page token", "not a token this service issued") from None
    if decoded.v != version:
        raise ServiceError(
            410, "stale page token",
            f"issued for index version {decoded.v}; the index is now {version}: search again",
        )  # fmt: skip
    if decoded.q != query:
        raise ServiceError(422, "invalid page token", "the token belongs to another query")
    if not 0 < decoded.o < MAX_DEPTH:
        raise ServiceError(422, "invalid page token", f"pages stop at {MAX_DEPTH} results")
    after = (decoded.s, decoded.i) if decoded.s is not None and decoded.i is not None else None
    return Page(decoded.o, query, version, after)
