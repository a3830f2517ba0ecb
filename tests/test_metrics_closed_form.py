"""KID (metrics.kid) against what it claims to be: the unbiased U-statistic of MMD² with the cubic polynomial
kernel k(x, y) = (xᵀy / d + 1)³ (Binkowski et al. 2018), checked pair by pair on a tiny sample, and its
expectation against the closed form for two Gaussians. A kernel without the / d, or an estimate that keeps
the diagonal terms k(x_i, x_i) (the biased V-statistic), fails these tests."""
import itertools

import numpy as np
import pytest

from metrics import kid


def _k(x, y, d):
    return (float(np.dot(x, y)) / d + 1) ** 3


def _mmd2_u(x, y):
    """The unbiased MMD² estimate, pair by pair: the mean of k over the m(m − 1) ordered pairs i ≠ j within each
    set, minus twice the mean of k over all m n pairs across the sets."""
    d = x.shape[1]
    kxx = np.mean([_k(x[i], x[j], d) for i, j in itertools.permutations(range(len(x)), 2)])
    kyy = np.mean([_k(y[i], y[j], d) for i, j in itertools.permutations(range(len(y)), 2)])
    kxy = np.mean([_k(a, b, d) for a in x for b in y])
    return kxx + kyy - 2 * kxy


def _expected_k(ma, mb, d):
    """E k(x, y) for independent x ~ N(ma, I), y ~ N(mb, I) in d dimensions. Given y, z = xᵀy / d + 1 is
    N(m, v) with m = maᵀy / d + 1, v = |y|² / d², and E z³ = m³ + 3 m v; taking E over y (maᵀy is
    N(maᵀmb, |ma|²), E[maᵀy |y|²] = maᵀmb (|mb|² + d + 2)) gives, with M = maᵀmb / d + 1,
    M³ + 3 (|ma|² + |mb|² + d) / d² + 3 (maᵀmb / d)(|ma|² + |mb|² + d + 2) / d²."""
    ab, aa, bb = ma @ mb, ma @ ma, mb @ mb
    return (ab / d + 1) ** 3 + 3 * (aa + bb + d) / d ** 2 + 3 * (ab / d) * (aa + bb + d + 2) / d ** 2


def _expected_mmd2(m1, m2):
    d = len(m1)
    return _expected_k(m1, m1, d) + _expected_k(m2, m2, d) - 2 * _expected_k(m1, m2, d)


def test_expected_k_closed_form_against_monte_carlo():
    """The closed form above, checked against a large sample (so a slip in its algebra cannot hide in the tests
    that use it)."""
    rng = np.random.default_rng(1)
    d, n = 4, 400_000
    for ma, mb in ((np.zeros(d), np.zeros(d)), (np.array([0.5, -1.0, 0.0, 0.3]), np.array([1.0, 0.2, -0.4, 0.0]))):
        x, y = rng.normal(size=(n, d)) + ma, rng.normal(size=(n, d)) + mb
        k = ((x * y).sum(1) / d + 1) ** 3
        assert abs(k.mean() - _expected_k(ma, mb, d)) < 4 * k.std() / np.sqrt(n), (k.mean(), _expected_k(ma, mb, d))
    assert _expected_k(np.zeros(d), np.zeros(d), d) == 1 + 3 / d  # E (xᵀy/d + 1)³ = 1 + 3 E(xᵀy)² / d³ = 1 + 3/d


@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_kid_of_a_small_sample_is_the_unbiased_u_statistic_pair_by_pair(shift):
    """20 and 25 points in d = 4, fewer than `subset`: kid's mean is the whole sets' MMD², with no randomness, and it
    must equal the pair-by-pair U-statistic. The V-statistic (diagonal kept) and the kernel without / d differ from it
    by far more than the tolerance on this very data."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 4)), rng.normal(size=(25, 4)) + shift
    got, spread = kid(x, y, subset=1000, n_subsets=10)
    want = _mmd2_u(x, y)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (got, want)
    assert spread > 0
    # the two wrong estimates this test must tell apart
    d = 4
    v_stat = (np.mean([_k(a, b, d) for a in x for b in x]) + np.mean([_k(a, b, d) for a in y for b in y])
              - 2 * np.mean([_k(a, b, d) for a in x for b in y]))
    no_d = _mmd2_u(x * np.sqrt(d), y * np.sqrt(d))  # (xᵀy + 1)³ = ((√d x)ᵀ(√d y) / d + 1)³
    assert abs(v_stat - want) > 0.05 and abs(no_d - want) > 0.05, (v_stat, no_d, want)


@pytest.mark.parametrize("mu", [0.0, 0.5, 1.0])
def test_kid_is_unbiased_for_the_closed_form_mmd2_of_two_gaussians(mu):
    """X ~ N(0, I), Y ~ N(mu e_1, I) in d = 4, 50 points each: the average of kid over 1,000 independent draws is
    the closed-form MMD² (0 when mu = 0) within 4 standard errors. The V-statistic would sit about
    (E k(x, x) − E k(x, x')) (1/m + 1/n) ≈ 0.4 above it, 10 or more standard errors; without / d the MMD² is tens
    of times larger."""
    rng = np.random.default_rng(2)
    d, m, reps = 4, 50, 1000
    m1, m2 = np.zeros(d), np.eye(d)[0] * mu
    vals = np.array([kid(rng.normal(size=(m, d)) + m1, rng.normal(size=(m, d)) + m2, subset=1000, n_subsets=2)[0]
                     for _ in range(reps)])
    want, se = _expected_mmd2(m1, m2), vals.std() / np.sqrt(reps)
    assert abs(vals.mean() - want) < 4 * se, (vals.mean(), want, se)
    assert se < 0.03  # small enough that a bias of 0.4 cannot pass


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_kid_over_subsets_covers_the_closed_form_and_zero_for_the_same_law(mu):
    """With more points than `subset` (the usual form): the mean over random subsets ± its spread covers the
    closed-form MMD²; for two samples of the same law that is 0, and the mean is within one spread of 0."""
    rng = np.random.default_rng(3)
    d = 4
    m1, m2 = np.zeros(d), np.eye(d)[0] * mu
    mean, spread = kid(rng.normal(size=(2000, d)) + m1, rng.normal(size=(2000, d)) + m2, subset=400, n_subsets=30)
    want = _expected_mmd2(m1, m2)
    assert 0 < spread < 0.1 and abs(mean - want) < spread, (mean, spread, want)
    # the same law, small sets: the whole sets' MMD² with its standard error, which covers 0
    for seed in range(5):
        r = np.random.default_rng(10 + seed)
        mean, spread = kid(r.normal(size=(60, d)), r.normal(size=(60, d)), subset=1000, n_subsets=50)
        assert abs(mean) < 3 * spread, (seed, mean, spread)
