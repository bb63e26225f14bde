"""The reorganised I4 sums of ode/kernels.py against the closed forms of gaussian.py, term by term."""
import math

import numpy as np
import pytest

from onlinemdl.gaussian import ERF, I4, J2, LINEAR
from onlinemdl.ode.kernels import asin_clipped, field_averages


def test_branch_free_asin_matches_math_asin():
    x = np.concatenate([np.linspace(-1, 1, 20001), [0.0, -0.0, 1e-300, 1e-9, 0.5, np.nextafter(0.5, 0), 0.975,
                                                    np.nextafter(1, 0), -1.0, 1.0]])
    ours = np.array([asin_clipped(t) for t in x])
    ref = np.array([math.asin(t) for t in x])
    assert np.all(np.abs(ours - ref) <= 2 * np.spacing(np.abs(ref)))  # within 2 ulp
    assert asin_clipped(1.5) == math.pi / 2 and asin_clipped(-3.0) == -math.pi / 2  # clipped like the old clip to [-1, 1]


@pytest.mark.parametrize("K,M,act", [(3, 2, ERF), (7, 5, ERF), (16, 16, ERF), (4, 3, LINEAR)])
def test_field_averages_D_is_the_sum_of_closed_forms(K, M, act):
    rng = np.random.default_rng(K + M)
    n = K + M
    X = rng.standard_normal((n, 3 * n))
    Sig = X @ X.T / X.shape[1]
    c = np.concatenate([rng.uniform(0.5, 1.5, K), -rng.uniform(0.5, 1.5, M)])
    sigma = 0.3
    _, _, D, _ = field_averages(Sig, K, c, sigma, act)
    ref = np.empty((K, K))
    for a in range(K):
        for b in range(K):
            acc = sigma**2 * J2(Sig[a, a], Sig[b, b], Sig[a, b], act)
            for k in range(n):
                for m in range(n):
                    acc += c[k] * c[m] * I4(Sig[a, a], Sig[b, b], Sig[k, k], Sig[m, m], Sig[a, b], Sig[a, k],
                                            Sig[a, m], Sig[b, k], Sig[b, m], Sig[k, m], act)
            ref[a, b] = c[a] * c[b] * acc
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-14 * np.abs(ref).max())
