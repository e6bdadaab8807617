"""Pure drift statistics on numpy arrays (no scipy needed). Every function is deterministic.

Conventions follow the tools operators may already know, so figures are comparable:
* PSI with proportions clipped at ``EPS`` = 1e-4, as Evidently does;
* Jensen-Shannon *distance* with natural logarithms, as ``scipy.spatial.distance.jensenshannon``
  (used by Evidently and NannyML) returns it: 0 = identical, sqrt(ln 2) ≈ 0.83 = disjoint;
* two-sample Kolmogorov-Smirnov against a baseline known only as a histogram: the statistic is
  taken at the histogram's bin edges (a slight under-estimate) and the p-value uses the
  asymptotic Kolmogorov distribution with the effective size n·m/(n+m);
* Wasserstein-1 between histograms on the same edges, divided by the edge span (so 0..1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

EPS = 1e-4


def proportions(counts: Mapping[str, float], labels: Sequence[str]) -> np.ndarray:
    v = np.array([float(counts.get(k, 0.0)) for k in labels], dtype=float)
    total = v.sum()
    return v / total if total > 0 else np.full(len(labels), 1.0 / max(len(labels), 1))


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = EPS) -> float:
    e = np.clip(expected, eps, None)
    a = np.clip(actual, eps, None)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(x: np.ndarray, y: np.ndarray) -> float:
        mask = x > 0
        return float(np.sum(x[mask] * np.log(x[mask] / y[mask])))

    return math.sqrt(max(0.0, 0.5 * kl(p, m) + 0.5 * kl(q, m)))


def histogram(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    e = np.asarray(edges, dtype=float)
    clipped = np.clip(values, e[0], e[-1])
    counts, _ = np.histogram(clipped, bins=e)
    return counts.astype(float)


def kolmogorov_sf(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution."""
    if lam < 0.2:
        return 1.0
    s = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        s += term
        if abs(term) < 1e-12:
            break
    return float(min(1.0, max(0.0, s)))


def ks_against_hist(
    values: np.ndarray, base_counts: np.ndarray, edges: Sequence[float]
) -> tuple[float, float]:
    """KS statistic and p-value of ``values`` against a baseline histogram."""
    n = len(values)
    m = float(base_counts.sum())
    if n == 0 or m == 0:
        return 0.0, 1.0
    cur = histogram(values, edges)
    cdf_a = np.cumsum(cur) / n
    cdf_b = np.cumsum(base_counts) / m
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    ne = n * m / (n + m)
    return d, kolmogorov_sf((math.sqrt(ne) + 0.12 + 0.11 / math.sqrt(ne)) * d)


def wasserstein_hist(a_counts: np.ndarray, b_counts: np.ndarray, edges: Sequence[float]) -> float:
    e = np.asarray(edges, dtype=float)
    if a_counts.sum() == 0 or b_counts.sum() == 0:
        return 0.0
    cdf_a = np.cumsum(a_counts) / a_counts.sum()
    cdf_b = np.cumsum(b_counts) / b_counts.sum()
    width = np.diff(e)
    return float(np.sum(np.abs(cdf_a - cdf_b) * width) / (e[-1] - e[0]))


def cbpe_accuracy(confidences: np.ndarray) -> float:
    """Expected accuracy without labels (NannyML's CBPE idea): for a calibrated classifier the
    chance that a prediction is right is its top-class probability, so the mean is the estimate.
    Only as good as the model's calibration (see the ECE in its evaluation report)."""
    return float(np.mean(confidences)) if len(confidences) else float("nan")


def robust_z(series: Sequence[float], value: float) -> float:
    """(value - median) / (1.4826 · MAD) of ``series``; 0 when the series is flat or short."""
    x = np.asarray([v for v in series if v is not None], dtype=float)
    if len(x) < 5:
        return 0.0
    med = float(np.median(x))
    mad = float(np.median(np.abs(x - med))) * 1.4826
    if mad < 1e-9:
        # A flat history: any departure larger than 1 % of the level (or 1 unit) counts as large.
        scale = max(abs(med) * 0.01, 1.0)
        return (value - med) / scale
    return (value - med) / mad
