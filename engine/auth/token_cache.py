"""Verified access tokens, remembered until they expire, so a client's next request skips the signature check.

A token is an exact string the engine's key signed; the same string verifies the same
way until its ``exp``, so keeping the verified claims (keyed by the whole string, never a
prefix or hash of it) changes no answer: a token is served from here only while
``now < exp`` (no leeway is added), and a token that failed verification is never kept.
The cache is bounded: when full, expired entries go first, then the oldest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from engine.auth.tokens import AccessToken

__all__ = ["VerifiedTokens"]


class VerifiedTokens:
    """Claims of tokens verified earlier, by token string, until their expiry (thread-safe)."""

    def __init__(self, verify: Callable[[str], AccessToken], capacity: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        """``verify`` checks a token fully (AuthFailure if it is not valid); ``capacity`` bounds the entries."""
        self._verify, self._capacity, self._clock = verify, capacity, clock
        self._known: dict[str, AccessToken] = {}
        self._lock = threading.Lock()

    def verify(self, token: str) -> AccessToken:
        """The claims of ``token``: remembered ones while unexpired, else ``verify``'s answer (then remembered)."""
        now = self._clock()
        known = self._known.get(token)
        if known is not None and now < known.expires_at:
            return known
        claims = self._verify(token)
        if now < claims.expires_at:
            self._remember(token, claims, now)
        return claims

    def _remember(self, token: str, claims: AccessToken, now: float) -> None:
        with self._lock:
            if len(self._known) >= self._capacity:
                self._known = {t: c for t, c in self._known.items() if now < c.expires_at}
            while len(self._known) >= self._capacity:
                del self._known[next(iter(self._known))]
            self._known[token] = claims

    def __len__(self) -> int:
        return len(self._known)
