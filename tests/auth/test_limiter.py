"""Failed token requests: a key is blocked at the limit until its window ends; memory stays bounded."""

from __future__ import annotations

from engine.auth.limiter import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_blocked_at_the_limit_until_the_window_ends() -> None:
    clock = Clock()
    limiter = FailureLimiter(limit=3, window=60, max_keys=100, clock=clock)

    assert [limiter.fail("ip") for _ in range(3)] == [False, False, True]
    assert limiter.retry_after("ip") == 60
    clock.now += 59.5
    assert limiter.retry_after("ip") == 0.5
    clock.now += 0.5
    assert limiter.retry_after("ip") == 0


def test_failures_below_the_limit_do_not_block_and_expire_with_the_window() -> None:
    clock = Clock()
    limiter = FailureLimiter(limit=3, window=60, max_keys=100, clock=clock)

    limiter.fail("ip")
    limiter.fail("ip")
    assert limiter.retry_after("ip") == 0
    clock.now += 61
    assert limiter.fail("ip") is False  # a new window: one failure
    assert limiter.retry_after("ip") == 0


def test_keys_are_counted_apart() -> None:
    limiter = FailureLimiter(limit=1, window=60, max_keys=100, clock=Clock())

    limiter.fail("a")

    assert limiter.retry_after("a") > 0 and limiter.retry_after("b") == 0


def test_memory_is_bounded_by_forgetting_the_least_recently_failed() -> None:
    limiter = FailureLimiter(limit=1, window=60, max_keys=10, clock=Clock())

    limiter.fail("first")
    for n in range(50):
        limiter.fail(f"spray-{n}")

    assert len(limiter) == 10
    assert limiter.retry_after("first") == 0
    assert limiter.retry_after("spray-49") > 0
