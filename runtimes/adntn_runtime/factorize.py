"""Site factorisation: split a dimension into ``K`` balanced factors, padding when needed.

A weight of shape ``(M, N)`` becomes a tensor with ``K`` sites, site ``k`` carrying
``(i_k, j_k)`` of sizes ``(m_k, n_k)`` with ``prod(m) = M' >= M`` and
``prod(n) = N' >= N``. When a size factors badly (a large prime factor), the
generator makes a slightly larger ``M'`` and the extra rows are cropped.
"""

from __future__ import annotations

import math
from functools import lru_cache

__all__ = ["balanced_factors", "choose_num_sites", "factorize"]


@lru_cache(maxsize=4096)
def _factor_into(n: int, k: int, cap: int) -> tuple[int, ...] | None:
    """Factors of ``n`` into exactly ``k`` factors, each ``<= cap``, as balanced as possible.

    Returns the tuple (non-increasing) minimising the largest factor, or ``None``.
    """
    if k == 1:
        return (n,) if n <= cap else None
    if n == 1:
        return (1,) * k
    best: tuple[int, ...] | None = None
    # The largest factor is at least ceil(n ** (1/k)); try candidates from small to large.
    lo = max(1, math.ceil(round(n ** (1.0 / k), 9)))
    for f in range(lo, min(cap, n) + 1):
        if n % f:
            continue
        rest = _factor_into(n // f, k - 1, f)
        if rest is not None:
            cand = (f, *rest)
            if best is None or max(cand) < max(best):
                best = cand
            break  # the first f that works is the smallest possible maximum
    return best


def balanced_factors(n: int, k: int) -> tuple[int, ...] | None:
    """Exact factorisation of ``n`` into ``k`` factors with the smallest maximum, or ``None``.

    >>> balanced_factors(4096, 4)
    (8, 8, 8, 8)
    """
    if n < 1 or k < 1:
        raise ValueError(f"balanced_factors needs n >= 1 and k >= 1, got n={n}, k={k}")
    return _factor_into(n, k, n)


def factorize(n: int, k: int, *, slack: float = 1.25) -> tuple[int, tuple[int, ...]]:
    """Pad ``n`` to ``n' >= n`` that splits into ``k`` balanced factors.

    An exact factorisation is used when its largest factor is at most
    ``2 * n ** (1/k)``; otherwise the largest factor allowed is
    ``ceil(slack * n ** (1/k))`` and the smallest ``n'`` that factors within that
    cap is taken. Factors are returned largest first, so the leading (row-tile)
    digits are the coarse ones.

    Returns:
        ``(n_padded, factors)`` with ``prod(factors) == n_padded``.

    >>> factorize(25088, 4)
    (25088, (16, 14, 14, 8))
    >>> factorize(10, 4)
    (12, (3, 2, 2, 1))
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"size must be a positive integer, got {n!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"num_sites must be a positive integer, got {k!r}")
    base = n ** (1.0 / k)
    # Only an exact factorisation whose largest factor is <= 2 * base is taken, so the search
    # is capped there (uncapped, a large prime would be tried against every f <= n).
    exact = _factor_into(n, k, max(1, math.floor(2.0 * base + 1e-9)))
    if exact is not None:
        return n, exact
    cap = max(2, math.ceil(slack * base))
    m = n
    while True:
        f = _factor_into(m, k, cap)
        if f is not None:
            return m, f
        m += 1


def choose_num_sites(rows: int, cols: int, *, site_size: int = 64) -> int:
    """Number of sites so that each site's size ``m_k * n_k`` is near ``site_size``."""
    total = rows * cols
    if total <= site_size:
        return 1
    return max(1, math.ceil(math.log(total) / math.log(site_size) - 1e-9))
