"""Summaries of repeated measurements: median with min and max, percentiles."""

import math
import statistics


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile (``fraction`` 0.99 for p99) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarize(rounds: list[float], unit: str) -> dict:
    """Reduce per-round values to the median, min and max, keeping the rounds."""
    values = [value for value in rounds if not math.isnan(value)]
    if not values:
        return {"median": None, "min": None, "max": None, "unit": unit, "rounds": rounds}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "unit": unit,
        "rounds": rounds,
    }


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Divide round by round, so that drift between rounds cancels out."""
    return [n / d if d else math.nan for n, d in zip(numerators, denominators)]
