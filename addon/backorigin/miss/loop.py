"""The loop marker: how the proxy knows one of its own origin fetches came back into it (a
MirrorURL whose name now leads to the proxy, or to another proxy in front of the same store).

Every origin request carries LOOP_HEADER with this process's token, a secret drawn at start: a
client cannot forge it, and one that sends the header gets ordinary service. A fetch made for a
request that itself carried the header passes the tokens it carried on, with its own last (at
most CARRIED of them), so a loop through several proxies of a fleet is caught when it comes
back to any of them.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable

from backorigin.rules.model import LOOP_HEADER

CARRIED = 16  # tokens passed on: a fleet's loop is caught within this many proxies


class LoopMarker:
    def __init__(self, token: str | None = None) -> None:
        self.token = token or secrets.token_urlsafe(18)

    def came_back(self, values: Iterable[str]) -> bool:
        """Whether any of the LOOP_HEADER values carries this process's token."""
        return any(hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.token.encode()) for token in tokens(values))

    def value(self, carried: str = "") -> str:
        """The LOOP_HEADER value of an origin request: the tokens `carried` (the client request's
        header), then ours."""
        return ", ".join([*tokens([carried])[-(CARRIED - 1):], self.token])


def tokens(values: Iterable[str]) -> list[str]:
    return [token.strip() for value in values for token in value.split(",") if token.strip()]


__all__ = ["LOOP_HEADER", "LoopMarker"]
