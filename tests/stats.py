"""Tolerances for statistical tests: many fixed-seed comparisons at one family-wise error rate.

A test file that makes m comparisons of the form |empirical - exact| <= z SE would, at a fixed
z, fail a correct engine somewhere with a chance that grows with m (3 SE over 54 comparisons:
about 14%). With the Bonferroni bound, z is chosen for a two-sided alpha of FAMILY_ALPHA / m per
comparison, so the chance that any of the m fails by chance stays below FAMILY_ALPHA, whatever
m is and however the comparisons depend on each other. tests/ORACLE.md, section 5, has the rule.

Usage, in a file with M comparisons (count them; the file's tests assert their count):

    from tests.stats import bonferroni_z
    Z = bonferroni_z(M)
"""

from __future__ import annotations

from statistics import NormalDist

FAMILY_ALPHA = 0.001  # chance that a correct engine fails at least one comparison of a file


def bonferroni_z(comparisons: int, family_alpha: float = FAMILY_ALPHA) -> float:
    """Two-sided z bound for `comparisons` tests at family-wise error rate family_alpha."""
    if comparisons < 1:
        raise ValueError(f"comparisons must be >= 1, got {comparisons}")
    if not 0.0 < family_alpha < 1.0:
        raise ValueError(f"family_alpha must be in (0, 1), got {family_alpha}")
    return NormalDist().inv_cdf(1.0 - family_alpha / (2.0 * comparisons))


def family_false_failure(z: float, comparisons: int) -> float:
    """Chance that at least one of `comparisons` independent two-sided z-checks exceeds z by chance."""
    per_check = 2.0 * (1.0 - NormalDist().cdf(z))
    return 1.0 - (1.0 - per_check) ** comparisons
