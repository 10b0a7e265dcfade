"""The anomaly detector (server/_anomaly.py) on generated series with known anomalies.

The series: 8 weeks of hourly counts with a daily shape (quiet nights, busy
afternoons) scaled per weekday (weekends at 40 %), Poisson noise, plus 10 %
multiplicative noise (real traffic is burstier than Poisson). The last 4 weeks are
evaluated hour by hour, each hour against the 4 weeks before it, as the server does.

Anomalies are injected at known hours of the evaluated weeks: spikes (x 2.5 to x 4)
and drops (x 0 to x 0.3). Thresholds: precision >= 0.9 (at most one false alert in
ten: an alert that is wrong more often gets ignored) and recall >= 0.8 (a few mild
injected changes may sit within the noise of a quiet hour). Both are printed (-s).
"""

from __future__ import annotations

import math
import random

import pytest

from innkt_analytics.server._anomaly import (
    HOURS_PER_WEEK,
    DetectorConfig,
    HourlySeries,
    baseline,
    detect,
)

WEEKS = 8
EVALUATED = 4  # the last weeks


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:  # normal approximation, fast and close enough for large means
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1


def _seasonal(hour: int, peak: float) -> float:
    """The expected count of epoch hour ``hour`` (hour 0: a Thursday 00:00 UTC)."""
    day = (hour // 24 + 3) % 7  # 0 = Monday
    of_day = hour % 24
    shape = (
        0.15 + 0.85 * max(0.0, math.sin(math.pi * (of_day - 6) / 16)) if 6 <= of_day <= 22 else 0.1
    )
    return peak * shape * (0.4 if day >= 5 else 1.0)


def _series(seed: int, peak: float, anomalies: int) -> tuple[list[float], dict[int, float]]:
    rng = random.Random(seed)
    start = 2_000 * HOURS_PER_WEEK  # an epoch hour on a week boundary
    hours = WEEKS * HOURS_PER_WEEK
    values = [
        float(_poisson(rng, _seasonal(start + h, peak) * rng.uniform(0.9, 1.1)))
        for h in range(hours)
    ]
    injected: dict[int, float] = {}
    first = (WEEKS - EVALUATED) * HOURS_PER_WEEK
    while len(injected) < anomalies:
        h = rng.randrange(first, hours)
        if any(abs(h - other) < 12 for other in injected):
            continue  # apart, so the cooldown of one is not the miss of another
        factor = rng.uniform(2.5, 4.0) if rng.random() < 0.5 else rng.uniform(0.0, 0.3)
        values[h] = float(round(values[h] * factor))
        injected[h] = factor
    return values, injected


def _evaluate(values: list[float], config: DetectorConfig) -> set[int]:
    """Hours the detector raises, evaluating each hour of the last weeks in turn."""
    raised: set[int] = set()
    last: dict[str, int] = {}
    history = config.weeks * HOURS_PER_WEEK
    for h in range((WEEKS - EVALUATED) * HOURS_PER_WEEK, len(values)):
        window = values[h - history : h + 1]
        found = detect([HourlySeries("s", h - history, window)], config, last)
        for anomaly in found.anomalies:
            raised.add(h)
            last[anomaly.key] = anomaly.hour
    return raised


def test_precision_and_recall_on_seasonal_series_with_injected_anomalies() -> None:
    config = DetectorConfig()
    tp = fp = fn = 0
    for seed in range(6):
        values, injected = _series(seed, peak=400.0, anomalies=12)
        # Only hours the detector watches count: an injected change in an hour expected
        # below min_volume is deliberately not raised.
        watched = {
            h
            for h in injected
            if (b := baseline(values[h - 4 * HOURS_PER_WEEK : h], config)) is not None
            and b.expected >= config.min_volume
        }
        raised = _evaluate(values, config)
        tp += len(raised & watched)
        fp += len(raised - set(injected))
        fn += len(watched - raised)
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    print(
        f"anomaly detector: precision {precision:.3f}, recall {recall:.3f}"
        f" ({tp} tp, {fp} fp, {fn} fn)"
    )
    assert precision >= 0.9
    assert recall >= 0.8


def test_no_alert_on_a_pure_seasonal_series_over_several_weeks() -> None:
    for seed in range(3):
        values, _ = _series(100 + seed, peak=400.0, anomalies=0)
        assert _evaluate(values, DetectorConfig()) == set()


def test_no_alert_on_a_quiet_project() -> None:
    # A few events an hour, with bursts a busy series would alert on (x 4).
    for seed in range(3):
        values, injected = _series(200 + seed, peak=8.0, anomalies=10)
        assert injected
        assert _evaluate(values, DetectorConfig()) == set()


def test_the_expected_range_and_the_fallback_to_hour_of_day() -> None:
    config = DetectorConfig()
    week = [100.0] * HOURS_PER_WEEK
    full = baseline(week * 4, config)
    assert full is not None
    assert (full.method, full.samples, full.expected) == ("hour_of_week", 4, 100.0)
    # MAD is 0 here: the noise is the Poisson floor, sqrt(100) = 10, widened for a
    # median of 4 values by sqrt(1 + pi / 8); the range is 4.5 of those either side
    spread = 10 * math.sqrt(1 + math.pi / 8)
    assert full.low == pytest.approx(100 - 4.5 * spread)
    assert full.high == pytest.approx(100 + 4.5 * spread)
    short = baseline([100.0] * (5 * 24), config)  # 5 days: too few weeks
    assert short is not None
    assert (short.method, short.samples) == ("hour_of_day", 5)
    assert baseline([100.0] * 30, config) is None  # one day and a bit: nothing to learn from


def test_cooldown_and_the_cap_per_evaluation() -> None:
    config = DetectorConfig(max_alerts=2, cooldown_hours=6)
    flat = [100.0] * (4 * HOURS_PER_WEEK)
    series = [HourlySeries(f"e{i}", 0, [*flat, 100.0 + 100 * (i + 1)]) for i in range(5)]
    found = detect(series, config)
    assert [a.key for a in found.anomalies] == ["e4", "e3"]  # the largest first
    assert (found.suppressed, found.cooling) == (3, 0)
    assert found.anomalies[0].direction == "spike"
    assert found.anomalies[0].baseline.expected == 100.0
    hour = series[0].hour
    cooled = detect(series, config, {"e4": hour - 5, "e3": hour - 6})
    assert [a.key for a in cooled.anomalies] == ["e3", "e2"]
    assert cooled.cooling == 1


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="k must be > 0"):
        DetectorConfig(k=0)
