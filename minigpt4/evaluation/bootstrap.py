"""Bootstrap confidence intervals over images, vectorised and seeded.

* :func:`mean_ci` -- the mean of one per-image value and its 95% percentile-bootstrap CI (images
  resampled with replacement, ``resamples`` times);
* :func:`paired_ci` -- the mean difference ``b - a`` of two per-image values measured on the SAME
  images, each resample drawing the same images for both (so what the two share cancels out).

Images whose value is NaN (the metric does not exist for them) are left out first. The resample
indices are drawn in blocks (``int32``, at most about 4M at a time), so 1000 resamples of 10k images
cost well under a second and little memory. The same ``seed`` and number of images give the same
resamples, so two metrics of one run are resampled alike.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import norm

LEVEL = 0.95
_BLOCK = 1 << 22  # resample indices drawn per block
_TOLERANCE = 1e-9  # a CI within rounding of 0 (e.g. BLEU-4 of 1e-17 either way) does not exclude it


def resample_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``(resamples,)`` means of the 1-D ``values`` over bootstrap resamples."""
    n = len(values)
    rng = np.random.default_rng(seed)
    per_block = max(1, _BLOCK // max(n, 1))
    out = []
    for start in range(0, resamples, per_block):
        idx = rng.integers(0, n, size=(min(per_block, resamples - start), n), dtype=np.int32)
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out)


def _interval(samples: np.ndarray, level: float = LEVEL) -> list[float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return [float(low), float(high)]


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[~np.isnan(arr)]


def mean_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0) -> dict:
    """``{"mean", "ci95": [low, high], "num_images"}``; NaN values are left out (``None``s if none is left)."""
    arr = _finite(values)
    if not len(arr):
        return {"mean": None, "ci95": None, "num_images": 0}
    return {"mean": float(arr.mean()), "ci95": _interval(resample_means(arr, resamples, seed)),
            "num_images": int(len(arr))}


def paired_ci(a: Sequence[float], b: Sequence[float], resamples: int = 1000, seed: int = 0) -> dict:
    """The mean of ``b - a`` over the images where both are defined, its 95% CI from resampling those
    images (the same draw for ``a`` and ``b``), and whether the CI excludes 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same images: {a.shape} vs {b.shape}")
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    if not len(a):
        return {"a": None, "b": None, "difference": None, "ci95": None, "significant": False, "num_images": 0}
    # one draw of images for both: the resampled mean of b minus that of a is the resampled mean of b - a
    low, high = _interval(resample_means(b - a, resamples, seed))
    return {"a": float(a.mean()), "b": float(b.mean()), "difference": float(b.mean() - a.mean()),
            "ci95": [low, high], "significant": bool(low > _TOLERANCE or high < -_TOLERANCE), "num_images": int(len(a))}


def wilson_interval(successes: float, n: int, level: float = LEVEL) -> list[float] | None:
    """The Wilson score interval of a proportion ``successes / n`` (``successes`` may be fractional,
    e.g. ties counted half)."""
    if n <= 0:
        return None
    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]
