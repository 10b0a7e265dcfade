"""Anomaly detection on hourly series, sans I/O: series in, anomalies out.

The baseline of an hour is learned from the same hour of the week in the previous
``weeks`` weeks (seasonality by hour of week, UTC): its *median* is the expected
value, and the spread is the larger of 1.4826 * the median absolute deviation (MAD,
a robust standard deviation) and √median (the Poisson noise of a count). The
expected range is ``median ± k * spread`` (the low end at least 0). Medians and MADs
ignore the outliers of past weeks, so last week's incident does not widen this
week's range.

When the history is too short for ``min_samples`` values of the same hour of the
week, the same hour of the *day* over the last ``weeks`` * 7 days is pooled
instead (wider: the weekday pattern is lost); with less than that, no baseline
and no alert.

No alert storm:

* a series whose expected value is below ``min_volume`` events an hour is not
  watched (a quiet project, or a rare event type, raises nothing);
* after an alert, the same series is silent for ``cooldown_hours``;
* at most ``max_alerts`` anomalies per project and evaluation, the largest first
  (by how many spreads the value is from the expected); the rest are counted as
  ``suppressed``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Final, Literal

__all__ = [
    "Anomaly",
    "Baseline",
    "Detection",
    "DetectorConfig",
    "HourlySeries",
    "baseline",
    "detect",
]

HOURS_PER_WEEK: Final = 168
#: 1.4826 * the median of |x - median| over many groups of n normal values is this
#: fraction of their standard deviation (simulated: a value's own group median is
#: close to it, and for odd n one of them is it)
_SMALL_SAMPLE: Final = {2: 0.704, 3: 0.472, 4: 0.725, 5: 0.727, 6: 0.789, 7: 0.825, 8: 0.833}
#: MAD * this estimates the standard deviation of normally distributed values
MAD_SCALE: Final = 1.4826


@dataclasses.dataclass(frozen=True, slots=True)
class DetectorConfig:
    """The detector's knobs, with the defaults the server uses (docs/insights.md)."""

    #: weeks of history a baseline is learned from
    weeks: int = 4
    #: the range is median ± k spreads
    k: float = 4.5
    #: values needed for a baseline (same hour of week; else same hour of day)
    min_samples: int = 3
    #: series expected to see fewer events than this in the hour are not watched
    min_volume: float = 20.0
    #: hours a series stays silent after an alert
    cooldown_hours: int = 6
    #: anomalies reported per project and evaluation at most
    max_alerts: int = 5

    def __post_init__(self) -> None:
        if self.weeks < 1 or self.min_samples < 1 or self.max_alerts < 1:
            raise ValueError("weeks, min_samples and max_alerts must be >= 1")
        if self.k <= 0 or self.min_volume < 0 or self.cooldown_hours < 0:
            raise ValueError("k must be > 0; min_volume and cooldown_hours >= 0")


@dataclasses.dataclass(frozen=True, slots=True)
class HourlySeries:
    """One series: ``values[i]`` is the value of epoch hour ``start_hour + i`` (UTC).

    The last value is the hour evaluated; the ones before it are its history, which
    starts where the series does (a caller trims the hours before it existed).
    """

    key: str
    start_hour: int
    values: Sequence[float]

    @property
    def hour(self) -> int:
        """The epoch hour evaluated (the last one)."""
        return self.start_hour + len(self.values) - 1


@dataclasses.dataclass(frozen=True, slots=True)
class Baseline:
    expected: float
    low: float
    high: float
    method: Literal["hour_of_week", "hour_of_day"]
    samples: int


@dataclasses.dataclass(frozen=True, slots=True)
class Anomaly:
    """A value outside its expected range."""

    key: str
    hour: int  # epoch hour (UTC)
    value: float
    baseline: Baseline
    #: how many spreads the value is from the expected (positive: above)
    score: float

    @property
    def direction(self) -> Literal["spike", "drop"]:
        return "spike" if self.value > self.baseline.high else "drop"


@dataclasses.dataclass(frozen=True, slots=True)
class Detection:
    """What one evaluation found: the anomalies to raise and how many were held back."""

    anomalies: list[Anomaly]
    #: anomalies over ``max_alerts`` (not raised)
    suppressed: int
    #: anomalies in a series still cooling down (not raised)
    cooling: int


def _mad(values: Sequence[float], center: float) -> float:
    return statistics.median(abs(v - center) for v in values)


def relative_spread(history: Sequence[float], config: DetectorConfig = DetectorConfig()) -> float:
    """The series' usual noise relative to its level: 1.4826 * the median of
    ``|value - slot median| / slot median`` over every hour-of-week slot of the history
    whose median is at least ``min_volume`` (0 when none is).

    Four values per slot give a poor spread on their own; pooled over all the slots
    of the history they give a stable one, which keeps bursty (over-Poisson) series
    from raising alerts on their ordinary noise.
    """
    n = len(history)
    if n < 2 * HOURS_PER_WEEK:
        return 0.0
    ratios: list[float] = []
    for slot in range(n - HOURS_PER_WEEK, n):
        values = [history[i] for i in range(slot, -1, -HOURS_PER_WEEK)]
        center = statistics.median(values)
        if center >= config.min_volume and center > 0:
            unbias = _SMALL_SAMPLE.get(len(values), 1.0)
            ratios.extend(abs(v - center) / center / unbias for v in values)
    return MAD_SCALE * statistics.median(ratios) if ratios else 0.0


def baseline(
    history: Sequence[float], config: DetectorConfig = DetectorConfig()
) -> Baseline | None:
    """The expected range of the hour right after ``history`` (hourly values, oldest
    first, the last one the hour just before). None when the history is too short."""
    n = len(history)
    weeks = range(1, config.weeks + 1)
    samples = [history[n - w * HOURS_PER_WEEK] for w in weeks if w * HOURS_PER_WEEK <= n]
    method: Literal["hour_of_week", "hour_of_day"] = "hour_of_week"
    if len(samples) < config.min_samples:
        days = config.weeks * 7
        samples = [history[n - d * 24] for d in range(1, days + 1) if d * 24 <= n]
        method = "hour_of_day"
        if len(samples) < config.min_samples:
            return None
    center = statistics.median(samples)
    noise = max(
        MAD_SCALE * _mad(samples, center),
        math.sqrt(max(center, 1.0)),
        relative_spread(history, config) * center,
    )
    # The median of n values is itself uncertain (variance ~ pi/2 * sigma^2 / n): the
    # spread of a new value around it is wider than the noise alone.
    spread = noise * math.sqrt(1 + math.pi / (2 * len(samples)))
    return Baseline(
        expected=center,
        low=max(0.0, center - config.k * spread),
        high=center + config.k * spread,
        method=method,
        samples=len(samples),
    )


def _check(series: HourlySeries, config: DetectorConfig) -> Anomaly | None:
    if not series.values:
        return None
    history, value = series.values[:-1], float(series.values[-1])
    found = baseline(history, config)
    if found is None or found.expected < config.min_volume:
        return None
    if found.low <= value <= found.high:
        return None
    spread = (found.high - found.expected) / config.k
    return Anomaly(
        key=series.key,
        hour=series.hour,
        value=value,
        baseline=found,
        score=(value - found.expected) / spread,
    )


def detect(
    series: Sequence[HourlySeries],
    config: DetectorConfig = DetectorConfig(),
    last_alert: Mapping[str, int] | None = None,
) -> Detection:
    """The anomalies of one project's series at their last hour.

    ``last_alert``: per series key, the epoch hour of its last alert (for the cooldown);
    the caller records the hours of the anomalies returned.
    """
    last = last_alert or {}
    found, cooling = [], 0
    for s in series:
        anomaly = _check(s, config)
        if anomaly is None:
            continue
        previous = last.get(s.key)
        if previous is not None and anomaly.hour - previous < config.cooldown_hours:
            cooling += 1
            continue
        found.append(anomaly)
    found.sort(key=lambda a: (-abs(a.score), a.key))
    return Detection(
        anomalies=found[: config.max_alerts],
        suppressed=max(0, len(found) - config.max_alerts),
        cooling=cooling,
    )
