"""Closed-form Gaussian averages against Monte Carlo (10^6 samples, 5 standard errors)."""
import numpy as np
import pytest
from scipy.special import erf

from onlinemdl.gaussian import ERF, I2, I3, I4, J2, LINEAR, eps_g

N_MC = 1_000_000


def g(z, act):
    return erf(z / np.sqrt(2)) if act == ERF else z


def dg(z, act):
    return np.sqrt(2 / np.pi) * np.exp(-z**2 / 2) if act == ERF else np.ones_like(z)


def random_cov(rng, n, rank=None):
    X = rng.standard_normal((n, rank or n + 1)) * rng.uniform(0.3, 1.5, size=(n, 1))
    return X @ X.T / X.shape[1]


def samples(rng, C):
    L = np.linalg.cholesky(C + 1e-300 * np.eye(len(C))) if np.all(np.linalg.eigvalsh(C) > 1e-12) else None
    if L is None:
        w, V = np.linalg.eigh(C)
        L = V * np.sqrt(np.clip(w, 0, None))
    return rng.standard_normal((N_MC, len(C))) @ L.T


def assert_mc(value, per_sample, k=5.0):
    mean = per_sample.mean()
    se = per_sample.std() / np.sqrt(per_sample.size)
    assert abs(value - mean) < k * se + 1e-12, (value, mean, se)


@pytest.mark.parametrize("act", [ERF, LINEAR])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_averages_against_monte_carlo(act, seed):
    rng = np.random.default_rng(seed)
    C = random_cov(rng, 4)
    x = samples(rng, C)
    a, b, c, d = x.T
    assert_mc(I2(C[0, 0], C[1, 1], C[0, 1], act), g(a, act) * g(b, act))
    assert_mc(J2(C[0, 0], C[1, 1], C[0, 1], act), dg(a, act) * dg(b, act))
    assert_mc(I3(C[0, 0], C[2, 2], C[0, 2], C[0, 1], C[1, 2], act), dg(a, act) * b * g(c, act))
    args = (C[0, 0], C[1, 1], C[2, 2], C[3, 3], C[0, 1], C[0, 2], C[0, 3], C[1, 2], C[1, 3], C[2, 3], act)
    assert_mc(I4(*args), dg(a, act) * dg(b, act) * g(c, act) * g(d, act))


def test_self_terms_and_repeated_fields():
    # I3(a, b, a) and I4(a, a, c, c): fields appearing twice
    rng = np.random.default_rng(5)
    C = random_cov(rng, 3)
    a, b, c = samples(rng, C).T
    assert_mc(I3(C[0, 0], C[0, 0], C[0, 0], C[0, 1], C[0, 1], ERF), dg(a, ERF) * b * g(a, ERF))
    args = (C[0, 0], C[0, 0], C[2, 2], C[2, 2], C[0, 0], C[0, 2], C[0, 2], C[0, 2], C[0, 2], C[2, 2], ERF)
    assert_mc(I4(*args), dg(a, ERF) ** 2 * g(c, ERF) ** 2)


def test_degenerate_covariances_are_finite_and_right():
    # perfect alignment (rank one) and vanishing fields
    rng = np.random.default_rng(7)
    C = random_cov(rng, 4, rank=1)
    a, b, c, d = samples(rng, C).T
    args = (C[0, 0], C[1, 1], C[2, 2], C[3, 3], C[0, 1], C[0, 2], C[0, 3], C[1, 2], C[1, 3], C[2, 3], ERF)
    val = I4(*args)
    assert np.isfinite(val)
    assert_mc(val, dg(a, ERF) * dg(b, ERF) * g(c, ERF) * g(d, ERF))
    assert_mc(I2(C[0, 0], C[1, 1], C[0, 1], ERF), g(a, ERF) * g(b, ERF))
    z = np.zeros(10)
    assert I4(*z, ERF) == 0.0 and I2(0.0, 0.0, 0.0, ERF) == 0.0
    assert I3(0.0, 0.0, 0.0, 0.0, 0.0, ERF) == 0.0
    assert J2(0.0, 0.0, 0.0, ERF) == pytest.approx(2 / np.pi)
    # a field of zero variance next to a unit one
    assert np.isfinite(I4(0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, ERF))
    # rounding pushes the arcsin argument past 1 for identical fields
    q = 0.1 + 0.2
    assert I2(q, q, q * (1 + 1e-16), ERF) == pytest.approx(2 / np.pi * np.arcsin(q / (1 + q)))


def test_eps_g_against_monte_carlo():
    rng = np.random.default_rng(3)
    K, M = 3, 2
    C = random_cov(rng, K + M)
    v, vt = rng.uniform(0.2, 1, K), rng.uniform(0.2, 1, M)
    x = samples(rng, C)
    err = g(x[:, :K], ERF) @ v - g(x[:, K:], ERF) @ vt
    Q, R, T = C[:K, :K].copy(), C[:K, K:].copy(), C[K:, K:].copy()
    assert_mc(eps_g(Q, R, T, v, vt, ERF), 0.5 * err**2)
