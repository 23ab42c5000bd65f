"""The verified-token cache: a token's signature is checked once, and nothing expired or invalid is served."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from engine.auth.authorizer import SmartAuthorizer
from engine.auth.interface import AuthFailure
from engine.auth.token_cache import VerifiedTokens
from engine.auth.tokens import AccessToken, TokenSigner


class _Counting:
    """A verifier that counts its calls and accepts tokens named ``ok...``, expiring at ``exp``."""

    def __init__(self, exp: float = 1000.0, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.calls, self.exp, self.clock = 0, exp, clock

    def __call__(self, token: str) -> AccessToken:
        self.calls += 1
        if self.clock() >= self.exp:
            raise AuthFailure(401, "invalid_token", "the access token has expired")
        if not token.startswith("ok"):
            raise AuthFailure(401, "invalid_token", "not valid")
        return AccessToken("c1", frozenset({"system/*.rs"}), token, int(self.exp))


def test_a_token_is_verified_once_until_it_expires() -> None:
    verifier, now = _Counting(exp=1000), [100.0]
    cache = VerifiedTokens(verifier, clock=lambda: now[0])

    first = cache.verify("ok-1")
    again = cache.verify("ok-1")

    assert first == again and verifier.calls == 1


def test_an_expired_token_is_verified_again_and_refused() -> None:
    now = [100.0]
    verifier = _Counting(exp=1000, clock=lambda: now[0])
    cache = VerifiedTokens(verifier, clock=lambda: now[0])
    cache.verify("ok-1")
    now[0] = 1000.0

    with pytest.raises(AuthFailure, match="expired"):
        cache.verify("ok-1")

    assert verifier.calls == 2


def test_a_refused_token_is_never_remembered() -> None:
    verifier = _Counting()
    cache = VerifiedTokens(verifier, clock=lambda: 100.0)

    for _ in range(2):
        with pytest.raises(AuthFailure):
            cache.verify("bad")

    assert verifier.calls == 2 and len(cache) == 0


def test_the_cache_is_bounded_and_drops_the_oldest() -> None:
    verifier = _Counting()
    cache = VerifiedTokens(verifier, capacity=3, clock=lambda: 100.0)

    for n in range(5):
        cache.verify(f"ok-{n}")
    cache.verify("ok-4")
    cache.verify("ok-0")

    assert len(cache) == 3 and verifier.calls == 6  # ok-4 was remembered, ok-0 had been dropped


def test_the_authorizer_checks_a_reused_token_signature_once(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = TokenSigner(b"k" * 32)
    token, _ = signer.issue("c1", ["system/ImagingStudy.rs"], int(time.time()), 300)
    decoded: list[str] = []
    real = signer.verify
    monkeypatch.setattr(signer, "verify", lambda t: decoded.append(t) or real(t))
    auth = SmartAuthorizer(signer)

    for _ in range(3):
        assert auth.authenticate(f"Bearer {token}").client_id == "c1"

    assert decoded == [token]
    with pytest.raises(AuthFailure):  # one changed character is another string: verified, and refused
        auth.authenticate(f"Bearer {token[:-2]}{'A' if token[-2] != 'A' else 'B'}{token[-1]}")
