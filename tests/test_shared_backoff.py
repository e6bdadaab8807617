"""The one back-off rule (shared/backoff.py), checked purely: no sleeping, no clock."""

from __future__ import annotations

import pytest

from shared.backoff import Backoff, at_maximum, backoff_delay


def test_doubles_from_initial_and_stops_at_the_cap() -> None:
    assert [backoff_delay(n, 0.5, 10.0) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]


def test_no_failure_yet_waits_the_initial_delay() -> None:
    assert backoff_delay(0, 1.0, 60.0) == 1.0


def test_jitter_stays_within_its_band_and_uses_the_given_source() -> None:
    asked: list[tuple[float, float]] = []

    def uniform(lo: float, hi: float) -> float:
        asked.append((lo, hi))
        return hi

    assert backoff_delay(3, 1.0, 8.0, jitter=0.1, uniform=uniform) == pytest.approx(4.4)
    assert asked == [(-0.1, 0.1)]
    for n in range(1, 12):
        d = backoff_delay(n, 1.0, 8.0, jitter=0.1)
        base = min(8.0, 2.0 ** (n - 1))
        assert base * 0.9 <= d <= base * 1.1


def test_days_of_failures_do_not_overflow() -> None:
    # A camera off for a day at a 30 s cap counts ~3000 failures: 2**2999 is no float.
    assert backoff_delay(5000, 1.0, 30.0) == 30.0
    assert backoff_delay(5000, 1.0, 30.0, jitter=0.1) <= 33.0
    assert at_maximum(5000, 1.0, 30.0)


def test_at_maximum_says_when_the_slowest_pace_is_reached() -> None:
    assert [at_maximum(n, 1.0, 8.0) for n in range(0, 6)] == [False, False, False, False, True, True]
    assert at_maximum(1, 8.0, 8.0)


def test_running_state_doubles_and_restarts_after_a_success() -> None:
    b = Backoff(1.0, 60.0)
    assert b.current == 0.0 and b.failures == 0
    assert [b.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert b.current == 60 and b.at_maximum
    b.reset()
    assert (b.failures, b.current, b.at_maximum) == (0, 0.0, False)
    assert b.next() == 1.0


def test_other_factors() -> None:
    b = Backoff(1.0, 100.0, factor=3.0)
    assert [b.next() for _ in range(6)] == [1, 3, 9, 27, 81, 100]


@pytest.mark.parametrize(
    ("initial", "maximum", "jitter", "factor"),
    [(0.0, 1.0, 0.0, 2.0), (2.0, 1.0, 0.0, 2.0), (1.0, 2.0, 0.0, 0.5), (1.0, 2.0, 1.0, 2.0)],
)
def test_nonsense_parameters_are_refused_with_their_values(
    initial: float, maximum: float, jitter: float, factor: float
) -> None:
    with pytest.raises(ValueError, match=f"initial={initial}, maximum={maximum}"):
        Backoff(initial, maximum, jitter, factor)
