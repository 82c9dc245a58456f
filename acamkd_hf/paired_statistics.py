"""Paired statistics of a comparison: rows paired by seed, the difference of two rows and its t-interval.

A row is its value per seed (``{seed: value}``). Two rows are compared on the seeds both have (the same seed starts
both from the same student, with the same data order and augmentations): the differences per seed, their mean, the
95 % Student-t interval of that mean (``n - 1`` degrees of freedom) and the number of seeds on which the row is
ahead. Used by ``acamkd-compare`` (:mod:`acamkd_hf.comparison_report`) and ``benchmarks/quality.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from scipy.stats import t as student_t

#: One row of a comparison: the metric per seed (``None``: the run did not report it)
SeedValues = Mapping[int, "float | None"]


def present(value: float | None) -> bool:
    """A reported number (not ``None``, not NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def mean_std(values: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the reported values (``None`` and NaN left out); the standard deviation
    of one value is 0, of none NaN (and so is the mean)."""
    kept = [value for value in values if present(value)]
    if not kept:
        return float("nan"), float("nan")
    return statistics.fmean(kept), (statistics.stdev(kept) if len(kept) > 1 else 0.0)


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` and its ``confidence`` Student-t interval (``n - 1`` degrees of
    freedom); the interval is NaN for fewer than two values, all three for none."""
    if not values:
        return float("nan"), float("nan"), float("nan")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = student_t.ppf(0.5 + confidence / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass
class PairedDifference:
    """A row minus another, paired by seed: ``deltas[i]`` is the difference on ``seeds[i]`` (the row's seed order);
    ``mean`` with its 95 % t-interval ``[low, high]`` (NaN with fewer than two seeds)."""

    seeds: list[int] = field(default_factory=list)
    deltas: list[float] = field(default_factory=list)
    mean: float = float("nan")
    low: float = float("nan")
    high: float = float("nan")

    @property
    def ci95(self) -> list[float]:
        return [self.low, self.high]

    @property
    def seeds_better(self) -> int:
        """Seeds on which the row is ahead (a difference above 0)."""
        return sum(delta > 0 for delta in self.deltas)

    @property
    def above_zero(self) -> bool:
        """The interval lies above 0: the row is ahead beyond the noise of the seeds."""
        return self.low > 0  # False when NaN

    @property
    def below_zero(self) -> bool:
        """The interval lies below 0: the row is behind beyond the noise of the seeds."""
        return self.high < 0


def paired_difference(row: SeedValues, other: SeedValues) -> PairedDifference:
    """``row - other`` on the seeds both reported, in ``row``'s seed order, with the mean's 95 % t-interval."""
    seeds = [seed for seed, value in row.items() if present(value) and present(other.get(seed))]
    deltas = [row[seed] - other[seed] for seed in seeds]
    mean, low, high = t_interval(deltas)
    return PairedDifference(seeds, deltas, mean, low, high)


def seeds_ahead_of_all(rows: Mapping[str, SeedValues], name: str) -> tuple[int, int]:
    """``(ahead, n)``: on how many of the ``n`` seeds that every row reported ``name`` beats every other row."""
    common = [seed for seed in rows[name] if all(present(values.get(seed)) for values in rows.values())]
    others = [values for other, values in rows.items() if other != name]
    ahead = sum(all(rows[name][seed] > values[seed] for values in others) for seed in common)
    return ahead, len(common)


def ranked(rows: Mapping[str, SeedValues]) -> list[str]:
    """Row names by mean over seeds, best (highest) first; rows with no value last."""
    means = {name: mean_std(values.values())[0] for name, values in rows.items()}
    return sorted(rows, key=lambda name: -means[name] if present(means[name]) else math.inf)


__all__ = ["PairedDifference", "SeedValues", "mean_std", "paired_difference", "present", "ranked", "seeds_ahead_of_all",
           "t_interval"]
